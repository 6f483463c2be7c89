"""`jobgate serve` as a real process, driven with curl, the way the README shows it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from .serving import BulkUpstream, JobgateProcess, static_files

GiB = 1 << 30


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("curl")
    assert binary, "curl not found: apt-get install -y curl (make test installs it)"
    return subprocess.run([binary, "-sS", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def files_upstream(tmp_path: Path):  # type: ignore[no-untyped-def]
    """python -m http.server serving one generic package file, as in the README."""
    with static_files(tmp_path, {"/api/v4/projects/1/packages/generic/tool/1.0/tool.bin":
                                 "hello from the package registry\n"}) as url:  # fmt: skip
        yield url


def test_readme_worked_example(
    tmp_path: Path, redis_server: RedisProcess, store: Store, files_upstream: str
) -> None:
    with JobgateProcess.shipped(tmp_path, redis_server.url, {"packages": files_upstream}) as gw:
        gw.admin("project", "set", "1", "--path", "demo/app", "--visibility", "private")
        gw.admin("member", "set", "1", "7", "30")
        token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
        url = f"{gw.url}/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"

        got = curl("--fail", "--header", f"JOB-TOKEN: {token}", url)
        assert got.returncode == 0, got.stderr
        assert got.stdout == "hello from the package registry\n"
        assert curl("--fail", "-u", f"gitlab-ci-token:{token}", url).returncode == 0
        assert curl("--fail", f"{url}?job_token={token}").returncode == 0
        job = json.loads(curl("--header", f"JOB-TOKEN: {token}", f"{gw.url}/api/v4/job").stdout)
        assert job["id"] == 100 and job["status"] == "running"

        gw.admin("job", "finish", "100", "--status", "success")
        denied = curl("-w", "\n%{http_code}", "--header", f"JOB-TOKEN: {token}", url)
        assert denied.stdout == '{"message": "404 Not Found"}\n404'
        assert token not in gw.log()
    assert gw.log().count('"route":"packages_read"') == 4
    assert '?job_token=[MASKED]"' in gw.log()


def test_admin_http_api_from_curl(
    tmp_path: Path, redis_server: RedisProcess, store: Store, files_upstream: str
) -> None:
    with JobgateProcess(tmp_path, redis_server.url, {"packages": files_upstream}) as gw:
        api = f"http://127.0.0.1:{gw.admin_port}/admin/v1"
        auth = ["-H", "Authorization: Bearer e2e-admin-token", "-H", "Content-Type: application/json"]
        put = curl(
            "-X", "PUT", *auth, "-d", '{"path": "demo/app2", "visibility": "private"}', f"{api}/projects/2"
        )
        assert json.loads(put.stdout)["path"] == "demo/app2"
        curl("-X", "PUT", *auth, "-d", '{"access_level": 30}', f"{api}/projects/2/members/7")
        started = curl("-X", "POST", *auth, "-d", '{"id": 200, "project": 2, "user": 7}', f"{api}/jobs")
        token = json.loads(started.stdout)["token"]
        job = curl("-H", f"JOB-TOKEN: {token}", f"{gw.url}/api/v4/job")
        assert json.loads(job.stdout)["project_id"] == 2
        unauthorized = curl("-w", "%{http_code}", "-o", "/dev/null", "-X", "POST", f"{api}/jobs")
        assert unauthorized.stdout == "401"


def test_private_redis_when_none_is_configured(tmp_path: Path, files_upstream: str) -> None:
    gw = JobgateProcess(tmp_path, "unused", {"packages": files_upstream})
    del gw.config["redis"]
    with gw:
        gw.admin("project", "set", "1", "--path", "demo/app", "--visibility", "public")
        token = gw.admin("job", "start", "--id", "1", "--project", "1", "--user", "7")
        got = curl("--fail", "-H", f"JOB-TOKEN: {token}", f"{gw.url}/api/v4/job")
        assert got.returncode == 0, got.stderr
        assert "started a private redis-server at redis://127.0.0.1:6479/0" in gw.log()
    assert gw.stop() == 0


def test_one_gib_each_way_streams_in_bounded_memory(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url, "artifacts": bulk.url}) as gw,
    ):
        gw.admin("project", "set", "1", "--path", "demo/app", "--visibility", "private")
        gw.admin("member", "set", "1", "7", "30")
        token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
        url = f"{gw.url}/api/v4/projects/1/packages/generic/big/1/blob.bin"
        curl("--fail", "-H", f"JOB-TOKEN: {token}", url + "?size=1")  # warm up imports and pools
        baseline = gw.rss_kib()

        down = curl("--fail", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"JOB-TOKEN: {token}",
                    f"{url}?size={GiB}")  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert int(down.stdout) == GiB

        source = subprocess.Popen(["head", "-c", str(GiB), "/dev/zero"], stdout=subprocess.PIPE)
        up = subprocess.run(
            ["curl", "-sS", "--fail", "-T", "-", "-H", f"JOB-TOKEN: {token}", url],
            stdin=source.stdout, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        source.wait()
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout) == {"received": GiB}

        growth_mib = (gw.rss_peak_kib() - baseline) / 1024
        assert growth_mib < 64, f"jobgate's peak RSS grew {growth_mib:.1f} MiB streaming 1 GiB each way"
