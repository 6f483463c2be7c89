"""`jobgate serve` with its defaults, as a real deployment runs it: several workers, one key."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from cryptography import x509

from gateway.devredis import RedisProcess, port_taken
from gateway.signing import libtrust_kid, load_key

from .serving import JobgateProcess

PRIVATE_PORT = 6479  # where `serve` starts its private redis-server (config.PRIVATE_REDIS_URL)


def test_serve_creates_the_signing_key_once_before_it_forks(
    tmp_path: Path, redis_server: RedisProcess
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
    tmp_path: Path, redis_server: RedisProcess
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


def test_request_ids_never_repeat_across_workers(tmp_path: Path, redis_server: RedisProcess) -> None:
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
