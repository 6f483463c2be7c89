"""The deploy files, checked with the real tools that read them (no cluster or container engine runs here)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import parse_config

from .peers import require

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENV = {"JOBGATE_REDIS_URL": "redis://r:6379/0", "JOBGATE_ADMIN_TOKEN": "a"}
SIGNING_KEY = "/var/lib/jobgate/registry-signing-key.pem"


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, name: str = "jobgate") -> dict[str, Any]:
    (found,) = (doc for doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name)
    return found


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate (PyPI; it ships its schemas, so it works offline) in strict mode."""
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 9
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_every_k8s_file_is_a_valid_kubernetes_object() -> None:
    files = sorted(K8S.iterdir())
    assert files and all(path.suffix == ".yaml" for path in files), files
    result = kubernetes_validate(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    # a kind without a schema (a CRD such as ServiceMonitor) only warns: none may be here
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(k8s_objects())


def test_kubernetes_validate_is_strict(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (K8S / "jobgate.yaml").read_text().replace("  replicas: 2\n", "  replicas: 2\n  replica: 2\n")
    )
    result = kubernetes_validate(broken)
    assert result.returncode != 0 and "'replica' was unexpected" in result.stdout + result.stderr


def test_kubernetes_manifests() -> None:
    kinds = {doc["kind"] for doc in k8s_objects()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/readiness"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["JOBGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    config = yaml.safe_load(k8s_object("ConfigMap")["data"]["gateway.yaml"])
    parse_config(config, "configmap", env=ENV)
    monitor = yaml.safe_load((DEPLOY / "k8s-monitoring" / "servicemonitor.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in k8s_object("Service")["spec"]["ports"]
    }


def test_no_secret_value_is_shipped() -> None:
    assert "Secret" not in {doc["kind"] for doc in k8s_objects()}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert "change-me" not in path.read_text().lower(), path


def secret_line(text: str) -> list[str]:
    (line,) = (line for line in text.splitlines() if "kubectl create secret generic jobgate" in line)
    return shlex.split(line[line.index("kubectl") :])


def test_the_documented_secret_holds_every_key_the_deployment_reads() -> None:
    documented = secret_line((K8S / "jobgate.yaml").read_text())
    assert documented == secret_line((ROOT / "docs" / "operations.md").read_text())
    keys = set()
    for arg in documented:
        if arg.startswith(("--from-literal=", "--from-file=")):
            keys.add(arg.partition("=")[2].partition("=")[0])
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    wanted = {e["valueFrom"]["secretKeyRef"]["key"] for e in pod["containers"][0]["env"]
              if e["valueFrom"]["secretKeyRef"]["name"] == "jobgate"}  # fmt: skip
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "jobgate"
            wanted |= {item["key"] for item in volume["secret"]["items"]}
    assert wanted == keys == {"redis-url", "admin-token", "registry-signing-key.pem"}


def test_the_deployment_carries_the_checksum_of_its_configmap() -> None:
    config = k8s_object("ConfigMap")["data"]["gateway.yaml"]
    expected = hashlib.sha256(config.encode()).hexdigest()
    annotations = k8s_object("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == expected, (
        f"deploy/k8s/jobgate.yaml: the ConfigMap changed: set checksum/config: {expected}"
    )


def test_replicas_are_spread_across_nodes_and_zones() -> None:
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["maxSkew"] == 1


def test_the_registry_signing_key_comes_from_a_secret() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = (m for m in pod["containers"][0]["volumeMounts"] if "secret" in volumes[m["name"]])
    (item,) = volumes[mount["name"]]["secret"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == SIGNING_KEY
    assert mount["readOnly"] is True
    # the pod runs as uid 10001: the file must be readable through its group (fsGroup)
    assert (
        pod["securityContext"]["fsGroup"] == 10001
        and volumes[mount["name"]]["secret"]["defaultMode"] == 0o440
    )


def docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = require("docker-compose", "docker-compose")
    return subprocess.run(
        [binary, "-f", str(DEPLOY / "compose.yaml"), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_compose_file_checks_with_docker_compose() -> None:
    checked = docker_compose("config", "-q", env={"JOBGATE_ADMIN_TOKEN": "a"})
    assert checked.returncode == 0, checked.stderr
    unset = docker_compose("config", "-q", env={})
    assert unset.returncode != 0 and "set JOBGATE_ADMIN_TOKEN" in unset.stderr


def test_compose_has_a_service_behind_every_upstream() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    config = parse_config(
        yaml.safe_load((DEPLOY / "gateway.yaml").read_text()), "deploy/gateway.yaml", env=ENV
    )
    urls = [u.url for u in config.upstreams.values()]
    urls.append(services["jobgate"]["environment"]["JOBGATE_REDIS_URL"])
    assert len(urls) >= 4
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname in services, f"{url}: no compose service named {parts.hostname}"
        assert str(parts.port) in services[parts.hostname]["expose"], (
            f"{url}: {parts.hostname} exposes no such port"
        )
    jobgate = services["jobgate"]
    # the config, and a volume for the state directory the registry signing key is created in
    state = "jobgate-state:/var/lib/jobgate"
    assert jobgate["volumes"] == ["./gateway.yaml:/etc/jobgate/deploy.yaml:ro", state]
    assert "jobgate-state" in compose["volumes"]
    assert set(jobgate["depends_on"]) == set(services) - {"jobgate"}


def test_image() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile


def test_git_lighttpd_conf_uses_debian_paths_and_binds_an_address() -> None:
    conf = (DEPLOY / "git-lighttpd.conf").read_text()
    (backend,) = re.findall(r'"/" => "([^"]+)/"', conf)
    assert backend == "/usr/lib/git-core/git-http-backend"
    assert Path(backend).is_file(), f"{backend}: apt-get install -y git"
    assert re.search(r'^server\.bind = "[^"]+"$', conf, re.M)


def promtool_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool", "prometheus"), "check", "config", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_static_prometheus_config_checks_with_promtool() -> None:
    result = promtool_check_config(DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_kubernetes_scrape_job_checks_with_promtool(tmp_path: Path) -> None:
    """Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest of
    the job (its relabelling) with the discovery swapped for a static target."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "k8s-scrape.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:9090"]}]
    del job["kubernetes_sd_configs"]
    (tmp_path / "scrape.yml").write_text(yaml.safe_dump(config))
    result = promtool_check_config(tmp_path / "scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    job["relabel_configs"][0]["action"] = "keepp"
    (tmp_path / "scrape.yml").write_text(yaml.safe_dump(config))
    assert promtool_check_config(tmp_path / "scrape.yml").returncode != 0


def test_forward_auth_settings_name_the_proxy_and_trust_it() -> None:
    config = parse_config(yaml.safe_load((DEPLOY / "forward-auth" / "jobgate.yaml").read_text()),
                          "deploy/forward-auth/jobgate.yaml", env=ENV)  # fmt: skip
    assert config.forward_auth_proxy == "nginx" and config.trusted_proxies
