"""Debian's Prometheus, started with deploy/prometheus/prometheus.yml (addresses and paths changed),
scrapes a real `jobgate serve` run with deploy/gateway.yaml and its default flags (addresses and
ports changed); its HTTP API then answers for real traffic, the alert rules evaluate, and every
panel query of deploy/grafana/jobgate.json returns series."""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.devredis import RedisProcess, free_port

from ..exported import exported_metrics
from ..peers import ServerProcess, require
from .serving import JobgateProcess, static_files

DEPLOY = Path(__file__).parent.parent.parent / "deploy"
PACKAGE = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
GIT_REFS = "/demo/app.git/info/refs?service=git-upload-pack"
UNKNOWN = "glcbt-100_" + "0" * 40
LIMITED_CLIENT = "127.0.0.2"  # the brute-force client: the limiter blocks an address, not a request
#: Grafana's variables as the test resolves them (every panel is asked over the last minute).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1m", "$instance": ".*"}


class Prometheus(ServerProcess):
    """Debian's prometheus with the shipped config: scrape target and rule file path changed."""

    name = "prometheus"
    probe = "/-/ready"

    def __init__(self, root: Path, target: str) -> None:
        super().__init__(root)
        self.target = target

    def command(self) -> list[str]:
        binary = require("prometheus", "prometheus")
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        assert config["rule_files"] == ["rules.yml"]
        config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
        (job,) = config["scrape_configs"]
        (static,) = job["static_configs"]
        assert static["targets"] == ["127.0.0.1:9090"]
        static["targets"] = [self.target]
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        return [binary, f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]  # fmt: skip

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.probe, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scraped_after(self, moment: float, timeout: float = 45.0) -> float:
        """The time of the first successful scrape of jobgate after `moment`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # timestamp() of a plain selector is the sample's (of an expression: the query's)
            for sample in self.api("query", query='timestamp(up{job="jobgate"})')["result"]:
                scraped = float(sample["value"][1])
                if scraped > moment and self.query('up{job="jobgate"}', scraped)[0]["value"][1] == "1":
                    return scraped
            time.sleep(0.5)
        targets = self.api("targets")
        raise AssertionError(f"no scrape after {moment}: {targets}\n{self.log_tail()}")


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1]) for s in result}


def request(port: int, path: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> int:
    """One GET on a fresh connection from `source`; the status code."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def files_upstream(tmp_path: Path) -> Iterator[str]:
    with static_files(tmp_path, {PACKAGE: "hello from the package registry\n"}) as url:
        yield url


def shipped_gateway(tmp_path: Path, redis: RedisProcess, packages: str, monkeypatch: Any) -> JobgateProcess:
    """`jobgate serve` with deploy/gateway.yaml and no flags: listen addresses, upstream URLs
    and the environment's values changed. git and the registry point at closed ports."""
    gw = JobgateProcess(tmp_path, redis.url, {}, workers=None)
    config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    for key in ("listen", "admin_listen", "metrics_listen"):
        config[key] = gw.config[key]
    urls = {"packages": packages, "git": f"http://127.0.0.1:{free_port()}",
            "container_registry": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    assert set(config["upstreams"]) == set(urls)
    for name, url in urls.items():
        config["upstreams"][name]["url"] = url
    gw.config = config
    env = {"JOBGATE_REDIS_URL": redis.url, "JOBGATE_ADMIN_TOKEN": "e2e-admin-token",
           "JOBGATE_REGISTRY_SECRET": "e2e-registry-secret",
           "JOBGATE_PUBLIC_HOST": f"127.0.0.1:{gw.port}"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return gw


def reloads_applied(gw: JobgateProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^jobgate_config_reloads_total\{result="applied"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def reload(gw: JobgateProcess) -> None:
    """SIGHUP the parent (it forwards to the workers) and wait until the reload is counted (once)."""
    before = reloads_applied(gw)
    assert gw.process is not None
    gw.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while reloads_applied(gw) < before + 1:
        assert time.monotonic() < deadline, "the workers did not reload"
        time.sleep(0.1)


def test_prometheus_scrapes_jobgate_alerts_evaluate_and_dashboard_panels_return_series(
    tmp_path: Path, files_upstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: Counter[tuple[str, str]] = Counter()  # (route, code) the client saw

    def get(route: str, path: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> int:
        status = request(gw.port, path, headers, source)
        seen[route, str(status)] += 1
        return status

    def traffic(token: str, finished: str, limiter_attempts: int) -> None:
        for _ in range(5):
            assert get("packages_read", PACKAGE, {"JOB-TOKEN": token}) == 200
        for _ in range(3):
            assert get("packages_read", PACKAGE, {"JOB-TOKEN": UNKNOWN}) == 404
        for _ in range(2):
            assert get("packages_read", PACKAGE) == 404
            assert get("packages_read", PACKAGE, {"JOB-TOKEN": finished}) == 404
            basic = base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()
            assert get("git_refs", GIT_REFS, {"Authorization": f"Basic {basic}"}) == 502
        for _ in range(limiter_attempts):
            assert get("packages_read", PACKAGE, {"JOB-TOKEN": UNKNOWN}, source=LIMITED_CLIENT) in (404, 429)

    with RedisProcess() as redis:
        gw = shipped_gateway(tmp_path, redis, files_upstream, monkeypatch)
        with gw, Prometheus(tmp_path, f"127.0.0.1:{gw.metrics_port}") as prometheus:
            gw.admin("project", "set", "1", "--path", "demo/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "30")
            # one running and one finished job per round, and one for Redis down: each round's
            # decisions read Redis (no warm cache entry from the round before)
            tokens = {job: gw.admin("job", "start", "--id", str(job), "--project", "1", "--user", "7")
                      for job in (100, 101, 102, 103, 104)}  # fmt: skip
            for job in (101, 103):
                gw.admin("job", "finish", str(job), "--status", "success")

            # Round 1 makes every series exist before a scrape; round 2 moves them between two.
            traffic(tokens[100], tokens[101], limiter_attempts=320)
            assert seen["packages_read", "429"] > 0, "the limiter never fired"
            reload(gw)
            before = prometheus.scraped_after(time.time() + 0.5)
            traffic(tokens[102], tokens[103], limiter_attempts=5)
            reload(gw)
            redis.stop()
            for _ in range(3):
                assert get("packages_read", PACKAGE, {"JOB-TOKEN": tokens[104]}) == 503
            at = prometheus.scraped_after(time.time() + 0.5)
            assert at - before < 50, "the two scrapes must fall in one rate window"

            def series(expr: str, *labels: str) -> dict[tuple[str, ...], float]:
                return values(prometheus.query(expr, at), *labels)

            requests = series("sum by (route, code) (jobgate_requests_total)", "route", "code")
            # a client the limiter already blocks is answered before its route is matched
            limited_total = requests.pop(("unmatched", "429"), 0) + requests.pop(("packages_read", "429"), 0)
            assert limited_total == seen.pop(("packages_read", "429"))
            assert requests == {key: float(count) for key, count in seen.items()}
            assert requests["packages_read", "200"] == 10 and requests["git_refs", "502"] == 4
            assert requests["packages_read", "503"] == 3
            rates = series("sum by (route, code) (rate(jobgate_requests_total[1m]))", "route", "code")
            assert rates["packages_read", "200"] > 0

            decisions = series("sum by (result, reason) (jobgate_auth_decisions_total)", "result", "reason")
            assert decisions["allow", "same_project"] == 10 + 4  # the git requests were allowed, then 502
            assert decisions["deny", "job_not_running"] == 4
            assert decisions["deny", "no_credential"] == 4
            assert decisions["deny", "unknown_token"] >= 6 + 300

            count = series("sum by (route) (jobgate_request_duration_seconds_count)", "route")
            assert sum(count.values()) == sum(seen.values()) + limited_total
            bucket = 'jobgate_request_duration_seconds_bucket{route="packages_read"}'
            (p99,) = series(f"histogram_quantile(0.99, sum by (le) (rate({bucket}[1m])))").values()
            assert 0 < p99 < 10
            upstreams = series("sum by (upstream) (jobgate_upstream_duration_seconds_count)", "upstream")
            assert upstreams == {("packages",): 10.0, ("git",): 4.0}
            assert series("sum(jobgate_redis_duration_seconds_count)")[()] > 0

            errors = series("sum by (upstream, kind) (jobgate_upstream_errors_total)", "upstream", "kind")
            assert errors == {("git", "unreachable"): 4.0}
            assert series("sum(jobgate_redis_errors_total)")[()] == 3
            assert series("sum(jobgate_rate_limited_total)")[()] == limited_total
            # two SIGHUPs, two workers each
            assert series("sum by (result) (jobgate_config_reloads_total)", "result") == {("applied",): 2.0}

            check_dashboard(prometheus, at)
            check_alerts(prometheus)


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "jobgate.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def substitute(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unresolved Grafana variable in {expr!r}"
    return expr


def check_dashboard(prometheus: Prometheus, at: float) -> None:
    queries = panel_queries()
    assert len(queries) >= 13
    for title, expr in queries:
        result = prometheus.query(substitute(expr), at)
        assert result, f"panel {title!r}: {substitute(expr)!r} returned no series"
        assert any(not math.isnan(float(s["value"][1])) for s in result), f"panel {title!r}: only NaN"
    instances = prometheus.api("label/instance/values", **{"match[]": "jobgate_requests_total"})
    assert instances == [f"127.0.0.1:{prometheus.target.rsplit(':', 1)[1]}"]


def check_alerts(prometheus: Prometheus) -> None:
    """The shipped rules evaluate against the real series: the limiter alert fires at once
    (no `for`), the Redis one is pending (`for: 2m`)."""
    wanted = {"JobgateBruteForceLimited": {"firing"}, "JobgateRedisUnreachable": {"pending", "firing"}}
    deadline = time.monotonic() + 45
    while True:
        groups = prometheus.api("rules", type="alert")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        states = {rule["name"]: rule["state"] for rule in rules.values()}
        if all(states.get(name) in allowed for name, allowed in wanted.items()):
            break
        assert time.monotonic() < deadline, f"alert states: {states}"
        time.sleep(1)
    assert {rule["health"] for rule in rules.values()} == {"ok"}, rules
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"][0]["rules"]
    assert len(rules) == len(alerts) == 6  # every shipped alert was loaded and evaluated


def test_the_dashboard_queries_every_exported_metric_with_known_variables() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "jobgate.json").read_text())
    defined = {"$" + variable["name"] for variable in dashboard["templating"]["list"]}
    assert defined == {"$datasource", "$instance"}
    queries = [expr for _, expr in panel_queries()]
    used = {variable for expr in queries for variable in re.findall(r"\$\w+", expr)}
    assert used <= set(GRAFANA_VARIABLES) and used - {"$__rate_interval", "$__range"} <= defined
    queried = {name for expr in queries for name in re.findall(r"\bjobgate_[a-z_]+", expr)}
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in queried}
    assert base == set(exported_metrics()), "one panel per metric at least, no unknown metric"
