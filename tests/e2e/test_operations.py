"""Operating a real `jobgate serve`: metrics, logs, health, signals, workers, TLS."""

from __future__ import annotations

import base64
import json
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.devredis import RedisProcess
from gateway.observe import Metrics
from gateway.store import Store

from .serving import BulkUpstream, JobgateProcess

PKG = "/api/v4/projects/1/packages/generic/tool/1/tool.bin"


def register(gw: JobgateProcess) -> str:
    gw.admin("project", "set", "1", "--path", "ops/app", "--visibility", "private")
    gw.admin("project", "set", "2", "--path", "ops/other", "--visibility", "private")
    gw.admin("member", "set", "1", "7", "30")
    return gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET", **kw: Any) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, **kw) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(gw: JobgateProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = get(f"http://127.0.0.1:{gw.metrics_port}/metrics")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_requests_decisions_and_bytes(
    tmp_path: Path, redis_server: RedisProcess, store: Store, workers: int
) -> None:
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}, workers=workers) as gw,
    ):
        token = register(gw)
        before = scrape(gw)
        for _ in range(3):
            assert get(gw.url + PKG + "?size=1000", {"JOB-TOKEN": token})[0] == 200
        assert get(gw.url + PKG, {"JOB-TOKEN": "glcbt-unknown"})[0] == 404
        assert get(gw.url + "/api/v4/projects/2/packages/x", {"JOB-TOKEN": token})[0] == 404
        labels = {"route": "packages_read", "method": "GET"}
        # workers fold their tallies into the shared stores within Metrics.FOLD_SECONDS
        deadline = time.monotonic() + 5
        while True:
            after = scrape(gw)
            decisions = "jobgate_auth_decisions_total"
            counted = value(after, decisions, result="deny", reason="unknown_token") + value(
                after, decisions, result="allow", reason="same_project")  # fmt: skip
            answered = value(after, "jobgate_request_duration_seconds_count", route="packages_read")
            if (counted >= 4 and answered >= 5) or time.monotonic() > deadline:  # all five folded
                break
            time.sleep(Metrics.FOLD_SECONDS)
        assert (
            value(after, "jobgate_requests_total", code="200", **labels)
            - value(before, "jobgate_requests_total", code="200", **labels)
            == 3
        )
        assert value(after, "jobgate_auth_decisions_total", result="deny", reason="unknown_token") == 1
        assert value(after, "jobgate_auth_decisions_total", result="allow", reason="same_project") == 3
        assert value(after, "jobgate_proxied_bytes_total", upstream="packages", direction="down") == 3000
        reads = value(after, "jobgate_redis_duration_seconds_count")
        hits = value(after, "jobgate_cache_lookups_total", result="hit")
        assert reads >= 1 and reads + hits >= 5
        assert value(after, "jobgate_request_duration_seconds_count", route="packages_read") >= 5
        text = get(f"http://127.0.0.1:{gw.metrics_port}/metrics")[1].decode()
        assert token not in text and "/api/v4" not in text


def test_workers_share_the_port_and_all_deny_after_finish(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with BulkUpstream(tmp_path) as bulk:
        gw = JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}, workers=2).start()
        try:
            token = register(gw)
            for _ in range(40):
                assert get(gw.url + PKG + "?size=10", {"JOB-TOKEN": token, "Connection": "close"})[0] == 200
            gw.admin("job", "finish", "100")
            for _ in range(40):
                assert get(gw.url + PKG + "?size=10", {"JOB-TOKEN": token, "Connection": "close"})[0] == 404
            pids = {json.loads(line)["pid"] for line in gw.log().splitlines() if '"route"' in line}
            assert len(pids) == 2, f"requests were served by {pids}"
        finally:
            assert gw.stop() == 0, gw.log()[-2000:]


def test_sigterm_drains_an_in_flight_request(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with BulkUpstream(tmp_path) as bulk:
        gw = JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}).start()
        token = register(gw)
        result: dict[str, Any] = {}

        def slow() -> None:
            result["answer"] = get(gw.url + PKG + "?size=5000&delay=1.5", {"JOB-TOKEN": token})

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        assert gw.process is not None
        gw.process.send_signal(signal.SIGTERM)
        thread.join(timeout=20)
        assert result["answer"] == (200, b"\0" * 5000)
        assert gw.process.wait(timeout=20) == 0
        drained = [json.loads(line) for line in gw.log().splitlines() if "delay=1.5" in line]
        assert [line["status"] for line in drained] == [200]  # its access line is out by the exit


def test_sighup_reloads_and_keeps_the_old_config_on_error(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with JobgateProcess(tmp_path, redis_server.url, {"packages": "http://127.0.0.1:1"}) as gw:
        token = register(gw)
        other = gw.url + "/api/v4/projects/2/packages/x"
        assert get(other, {"JOB-TOKEN": token})[0] == 404
        good = dict(gw.config)
        gw.config_path.write_text("listen: [broken\n")
        assert gw.process is not None
        gw.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert "reload rejected, keeping the old config" in gw.log()
        assert get(other, {"JOB-TOKEN": token})[0] == 404  # still serving, old config
        gw.config_path.write_text(yaml.safe_dump({**good, "explain": True}))
        gw.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        status, body = get(other, {"JOB-TOKEN": token})
        assert status == 403  # explain mode now on
        assert b"not allowed from ops/app to ops/other" in body
        samples = scrape(gw)
        assert value(samples, "jobgate_config_reloads_total", result="rejected") == 1
        assert value(samples, "jobgate_config_reloads_total", result="applied") == 1


def test_health_and_readiness_follow_redis(tmp_path: Path, store: Store) -> None:
    redis = RedisProcess().start()
    try:
        with JobgateProcess(tmp_path, redis.url, {"packages": "http://127.0.0.1:1"}) as gw:
            base = f"http://127.0.0.1:{gw.metrics_port}"
            assert get(base + "/-/readiness")[0] == 200
            redis.stop()
            assert get(base + "/-/health")[0] == 200
            assert get(base + "/-/readiness")[0] == 503
            assert get(gw.url + PKG, {"JOB-TOKEN": "glcbt-x"})[0] == 503
    finally:
        redis.stop()


def test_no_token_in_any_output(tmp_path: Path, redis_server: RedisProcess, store: Store) -> None:
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url, "triggers": bulk.url}) as gw,
    ):
        token = register(gw)
        basic = base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()
        trigger = gw.admin("trigger", "create", "1", "--owner", "7")
        sources = [
            (PKG, {"JOB-TOKEN": token}),
            (PKG + f"?job_token={token}", {}),
            (PKG, {"Authorization": f"Basic {basic}"}),
            (PKG, {"Authorization": f"Bearer {token}"}),
            (f"/api/v4/projects/1/trigger/pipeline?token={token}&ref=main", {}),
            (f"/api/v4/projects/1/trigger/pipeline?token={trigger}&ref=main", {}),
            (PKG + f"?job_token={token}&job_token={token}x", {}),  # ambiguous: 400
            (PKG, {"JOB-TOKEN": token + "\u00e9"}),  # malformed: 400
            ("/api/v4/projects/2/packages/x", {"JOB-TOKEN": token}),  # out of scope
            ("/nowhere?job_token=" + token, {}),  # unrouted
        ]
        for path, headers in sources:
            method = "POST" if "trigger" in path else "GET"
            get(gw.url + path, headers, method=method)
        gw.admin("job", "finish", "100")
        get(gw.url + PKG, {"JOB-TOKEN": token})
        output = gw.log() + get(f"http://127.0.0.1:{gw.metrics_port}/metrics")[1].decode()
        assert token not in output and trigger not in output
        assert "job_token=[MASKED]" in output and "token=[MASKED]" in output


def test_tls_listener(tmp_path: Path, redis_server: RedisProcess, store: Store) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {"cert_file": str(tmp_path / "server.pem"), "key_file": str(tmp_path / "server.pem")}
    with JobgateProcess(tmp_path, redis_server.url, {"packages": "http://127.0.0.1:1"}, tls=tls) as gw:
        token = register(gw)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        status, body = get(f"https://127.0.0.1:{gw.port}/api/v4/job", {"JOB-TOKEN": token}, context=context)
        assert status == 200 and json.loads(body)["id"] == 100
        with pytest.raises(urllib.error.URLError):
            get(f"https://127.0.0.1:{gw.port}/api/v4/job", context=ssl.create_default_context())
