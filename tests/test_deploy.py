"""The deploy files parse and say what operators rely on (no container engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import parse_config

DEPLOY = Path(__file__).parent.parent / "deploy"
ENV = {"JOBGATE_REDIS_URL": "redis://r:6379/0", "JOBGATE_ADMIN_TOKEN": "a"}


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 6
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_kubernetes_manifests() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "jobgate.yaml").read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
            "Secret", "ConfigMap"} <= set(docs)  # fmt: skip
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/health"
    assert docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["JOBGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    config = yaml.safe_load(docs["ConfigMap"]["data"]["gateway.yaml"])
    parse_config(config, "configmap", env=ENV)


def test_compose_and_image() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert {"redis", "jobgate", "registry", "git"} <= set(compose["services"])
    config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    parse_config(config, "deploy/gateway.yaml", env=ENV)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile
