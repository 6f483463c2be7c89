"""A real nginx `auth_request` in front of an upstream, asking jobgate's forward-auth endpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import NginxServer
from .serving import JobgateProcess, wait_http

SNIPPET = Path(__file__).parent.parent.parent / "deploy" / "forward-auth" / "nginx.conf"
PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", "-w", " %{http_code}", *args], capture_output=True, text=True,
                          timeout=30).stdout  # fmt: skip


def test_nginx_auth_request_with_the_shipped_snippet(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    files = tmp_path / "files"
    (files / PKG.lstrip("/")).parent.mkdir(parents=True)
    (files / PKG.lstrip("/")).write_text("payload")
    from gateway.devredis import free_port

    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/", upstream, tmp_path / "none.log")
        with JobgateProcess(tmp_path, redis_server.url, {"packages": "http://127.0.0.1:1"}) as gw:
            snippet = SNIPPET.read_text().replace("JOBGATE", f"127.0.0.1:{gw.port}")
            snippet = snippet.replace("UPSTREAM", f"127.0.0.1:{port}")
            with NginxServer(tmp_path, snippet) as nginx:
                admin = [sys.executable, "-m", "gateway", "admin", "--config", str(gw.config_path)]
                for step in (["project", "set", "1", "--path", "g/app", "--visibility", "private"],
                             ["member", "set", "1", "7", "20"]):  # fmt: skip
                    subprocess.run([*admin, *step], check=True, capture_output=True)
                token = subprocess.run(
                    [*admin, "job", "start", "--id", "100", "--project", "1", "--user", "7"],
                    check=True, capture_output=True, text=True,
                ).stdout.strip()  # fmt: skip
                url = nginx.url + PKG
                assert curl("-H", f"JOB-TOKEN: {token}", url) == "payload 200"
                assert curl(url) == '{"message":"404 Not Found"} 404'
                assert curl("-H", "JOB-TOKEN: glcbt-unknown", url) == '{"message":"404 Not Found"} 404'
                assert curl("-X", "PUT", "-H", f"JOB-TOKEN: {token}", url).endswith(" 404")  # reporter
                subprocess.run([*admin, "job", "finish", "100"], check=True, capture_output=True)
                assert curl("-H", f"JOB-TOKEN: {token}", url) == '{"message":"404 Not Found"} 404'
            assert '"route":"packages_read","status":200' in gw.log()
            assert token not in gw.log()
    finally:
        upstream.terminate()
        upstream.wait()
