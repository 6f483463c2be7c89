"""deploy/prometheus/rules.yml, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .exported import exported_metrics
from .peers import require

PROMETHEUS = Path(__file__).parent.parent / "deploy" / "prometheus"
RULES, RULE_TESTS = PROMETHEUS / "rules.yml", PROMETHEUS / "rules.test.yml"
#: What the alerts must cover (docs/operations.md, Alerts).
ALERTS = {"JobgateRedisUnreachable", "JobgateUpstreamErrors", "JobgateHigh5xxRatio", "JobgateDenialSpike",
          "JobgateBruteForceLimited", "JobgateRevocationAcksFailing"}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool", "prometheus"), *args], cwd=PROMETHEUS, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert alerts == ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    assert sorted(test["name"] for test in tests) == sorted(alerts)
    for test in tests:
        evaluations = [e for e in test["alert_rule_test"] if e["alertname"] == test["name"]]
        assert any(e["exp_alerts"] for e in evaluations), f"{test['name']}: never expected to fire"
        assert any(not e["exp_alerts"] for e in evaluations), f"{test['name']}: never expected to stay quiet"


def test_alerts_use_only_metrics_the_gateway_exports() -> None:
    exported = exported_metrics()
    for rule in alerting_rules():
        used = set(re.findall(r"\bjobgate_[a-z_]+", rule["expr"]))
        assert used and used <= set(exported), f"{rule['alert']}: {used - set(exported)} not exported"
    tests = RULE_TESTS.read_text()
    for name in re.findall(r"series: '(jobgate_[a-z_]+)\{", tests):
        assert name in exported, f"rules.test.yml feeds {name}, which the gateway does not export"
