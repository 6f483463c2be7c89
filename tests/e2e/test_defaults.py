"""`jobgate serve` with its defaults, as a real deployment runs it: several workers, one key."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from cryptography import x509

from gateway.devredis import RedisProcess, port_taken
from gateway.signing import libtrust_kid, load_key
from gateway.store import Store

from .serving import JobgateProcess

PRIVATE_PORT = 6479  # where `serve` starts its private redis-server (config.PRIVATE_REDIS_URL)


def test_serve_creates_the_signing_key_once_before_it_forks(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    key_file = tmp_path / "state" / "registry-signing-key.pem"
    gw = JobgateProcess.shipped(tmp_path, redis_server.url, {}, registry={"signing_key_file": str(key_file)})
    with gw:
        log = gw.log()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert log.count("created the registry signing key") == 1  # by the parent, not per worker
        assert "BEGIN" not in log  # the key is never logged
        printed = subprocess.run(
            [sys.executable, "-m", "gateway", "admin", "registry", "certificate",
             "--config", str(gw.config_path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    certificate = x509.load_pem_x509_certificate(printed.stdout.encode())
    assert libtrust_kid(certificate.public_key()) == load_key(key_file).kid  # type: ignore[arg-type]


def test_serve_refuses_an_unreadable_key_file_before_forking(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    key_file = tmp_path / "junk.pem"
    key_file.write_text("not a key")
    gw = JobgateProcess.shipped(tmp_path, redis_server.url, {}, registry={"signing_key_file": str(key_file)})
    gw.config_path.write_text(yaml.safe_dump(gw.config))
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"{key_file}: not an unencrypted PEM private key" in done.stderr
    assert "Traceback" not in done.stderr


def test_request_ids_never_repeat_across_workers(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with JobgateProcess(tmp_path, redis_server.url, {"api": "http://127.0.0.1:1"}, workers=2) as gw:
        for _ in range(200):  # a connection each: SO_REUSEPORT spreads them over both workers
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(f"{gw.url}/api/v4/projects/1/jobs", timeout=5).close()
        lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith('{"time"')]
    access = [line for line in lines if line.get("path") == "/api/v4/projects/1/jobs"]
    assert len(access) == 200
    assert len({line["pid"] for line in access}) == 2  # both workers answered
    ids = [line["request_id"] for line in access]
    assert len(set(ids)) == len(ids)


def _serve_without_redis_url(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    gw = JobgateProcess.shipped(tmp_path, "unused", {})
    del gw.config["redis"]  # as shipped: the private redis-server
    gw.config_path.write_text(yaml.safe_dump(gw.config))
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})  # fmt: skip


def test_a_second_serve_does_not_share_the_first_ones_private_redis(tmp_path: Path) -> None:
    # it logged "started a private redis-server" although its own could not bind, then used
    # the first instance's state
    with contextlib.ExitStack() as stack:
        if not port_taken(PRIVATE_PORT):
            stack.enter_context(RedisProcess(PRIVATE_PORT, tmp_path / "first"))
        done = _serve_without_redis_url(tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"port 127.0.0.1:{PRIVATE_PORT} is taken" in done.stderr and "set redis.url" in done.stderr
    assert "started a private redis-server" not in done.stderr and "Traceback" not in done.stderr


def test_serve_without_redis_server_names_the_install_line(tmp_path: Path) -> None:
    done = _serve_without_redis_url(tmp_path, PATH=str(tmp_path / "no-bin"))
    assert done.returncode == 2
    assert "redis-server not found: apt-get install -y redis-server" in done.stderr
    assert "Traceback" not in done.stderr


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Connection": "close", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def test_sighup_applies_every_key_in_every_process(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    # it logged "config reloaded" once per worker and kept the parent's admin_token and the
    # workers' signing secret
    gw = JobgateProcess.shipped(tmp_path, redis_server.url, {"packages": "http://127.0.0.1:1"},
                                admin_token="first-admin-token")  # fmt: skip
    gw.workers = 2  # the default on this 2-core machine, said explicitly: the test is about workers
    with gw:
        gw.admin("project", "set", "1", "--path", "ops/app", "--visibility", "private")
        gw.admin("project", "set", "2", "--path", "ops/other", "--visibility", "private")
        gw.admin("member", "set", "1", "7", "30")
        token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
        admin = f"http://127.0.0.1:{gw.admin_port}/admin/v1/jobs/100"
        other = gw.url + "/api/v4/projects/2/packages/generic/x/1/x.bin"
        old_token = str(gw.config["admin_token"])
        assert _get(admin, {"Authorization": f"Bearer {old_token}"})[0] == 200
        basic = {"Authorization": "Basic " + base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()}
        token_url = gw.url + "/jwt/auth?service=container_registry"  # GitLab: no service is a 404
        kids_before = {_kid(json.loads(_get(token_url, basic)[1])["token"]) for _ in range(10)}
        assert len(kids_before) == 1  # one key for every worker

        new_key = tmp_path / "rotated" / "key.pem"
        gw.config_path.write_text(yaml.safe_dump({
            **gw.config, "admin_token": "rotated-admin-token", "explain": True,
            "listen": "127.0.0.1:1", "registry": {"signing_key_file": str(new_key)},
        }))  # fmt: skip
        assert gw.process is not None
        gw.process.send_signal(signal.SIGHUP)
        time.sleep(1.5)

        assert _get(admin, {"Authorization": f"Bearer {old_token}"})[0] == 401  # the parent's listener
        assert _get(admin, {"Authorization": "Bearer rotated-admin-token"})[0] == 200
        answers = [_get(other, {"JOB-TOKEN": token}) for _ in range(20)]
        assert {status for status, _ in answers} == {403}  # explain on in both workers
        kids_after = {_kid(json.loads(_get(token_url, basic)[1])["token"]) for _ in range(10)}
        assert kids_after == {load_key(new_key).kid}  # the key file is read again, by every worker
        metrics = _get(f"http://127.0.0.1:{gw.metrics_port}/metrics")[1].decode()
        log = gw.log()
    reloads = [line for line in log.splitlines() if "config reloaded" in line]
    assert len(reloads) == 1, reloads
    assert "not applied, needs a restart: listen" in reloads[0]
    assert 'jobgate_config_reloads_total{result="applied"} 1.0' in metrics
    pids = {json.loads(line)["pid"] for line in log.splitlines() if '"route":"packages_read"' in line}
    assert len(pids) == 2


def test_ready_means_the_next_gateway_request_is_served(tmp_path: Path) -> None:
    # after Redis came back, /-/readiness said ready while the next gateway requests got 503
    redis = RedisProcess(directory=tmp_path / "redis").start()
    try:
        with JobgateProcess.shipped(tmp_path, redis.url, {}) as gw:
            ready = f"http://127.0.0.1:{gw.metrics_port}/-/readiness"
            gw.admin("project", "set", "1", "--path", "g/app", "--visibility", "private")
            token = gw.admin("job", "start", "--id", "1", "--project", "1", "--user", "7")
            job = gw.url + "/api/v4/job"
            with ThreadPoolExecutor(8) as pool:  # several pooled Redis connections in each worker
                warm = list(pool.map(lambda _: _get(job, {"JOB-TOKEN": token})[0], range(32)))
            assert set(warm) == {200}
            redis.stop()
            assert _get(ready)[0] == 503
            redis = RedisProcess(redis.port, tmp_path / "redis2").start()
            deadline = time.monotonic() + 20
            while _get(ready)[0] != 200:
                assert time.monotonic() < deadline, "never ready again"
                time.sleep(0.05)
            after = [_get(job, {"JOB-TOKEN": token})[0] for _ in range(10)]
            assert 503 not in after, after
    finally:
        redis.stop()
