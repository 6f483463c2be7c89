"""A real nginx `auth_request` in front of an upstream, asking jobgate's forward-auth endpoint."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import NginxServer
from .serving import JobgateProcess, wait_http

SNIPPET = Path(__file__).parent.parent.parent / "deploy" / "forward-auth" / "nginx.conf"
PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
#: What an operator configures beside the shipped snippet.
FORWARD_AUTH = {"forward_auth": {"proxy": "nginx"}, "trusted_proxies": ["127.0.0.1/32"]}


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
        with JobgateProcess(tmp_path, redis_server.url, {"packages": "http://x:1"}, **FORWARD_AUTH) as gw:
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


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An upstream that records the request line and headers it received and answers 'ok'."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_nginx_forwards_only_what_jobgate_judged(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    """Through the shipped snippet: every credential place cleared, every identity header
    overwritten, the canonical URI without its token, another kind's description refused."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen.clear()
    try:
        with JobgateProcess(tmp_path, redis_server.url, {"packages": "http://x:1"}, **FORWARD_AUTH) as gw:
            snippet = SNIPPET.read_text().replace("JOBGATE", f"127.0.0.1:{gw.port}")
            snippet = snippet.replace("UPSTREAM", f"127.0.0.1:{server.server_address[1]}")
            with NginxServer(tmp_path, snippet) as nginx:
                gw.admin("project", "set", "1", "--path", "g/app", "--visibility", "private")
                gw.admin("project", "set", "2", "--path", "g/other", "--visibility", "private")
                gw.admin("member", "set", "1", "7", "30")
                token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
                url = nginx.url + PKG
                spoof = ["-H", "X-Jobgate-Pipeline-Source: trigger", "-H", "X-Jobgate-Job-Id: 1",
                         "-H", "X-Jobgate-User-Id: 1"]  # fmt: skip
                assert curl(*spoof, f"{nginx.url}/api/v4/projects/%31/packages/generic/tool/1.0/tool.bin"
                            f"?a=1;job_token={token}&b=2") == "ok 200"  # fmt: skip
                _, path, headers = _Recorder.seen[-1]
                assert path == PKG + "?a=1&b=2"
                assert headers["x-jobgate-job-id"] == "100" and headers["x-jobgate-user-id"] == "7"
                assert "x-jobgate-pipeline-source" not in headers and "job-token" not in headers
                assert curl("-u", f"gitlab-ci-token:{token}", url) == "ok 200"
                assert "authorization" not in _Recorder.seen[-1][2]
                assert curl("-H", f"JOB-TOKEN: {token}", url) == "ok 200"
                assert "job-token" not in _Recorder.seen[-1][2]
                count = len(_Recorder.seen)
                other = "/api/v4/projects/2/packages/generic/tool/1.0/tool.bin"
                # a client's own Traefik-style description next to nginx's: refused, uniform 404
                described = curl("-H", f"JOB-TOKEN: {token}", "-H", f"X-Forwarded-Uri: {other}", url)
                assert described.endswith(" 404")
                assert curl("-X", "POST", "-H", f"JOB-TOKEN: {token}", "-H", "X-HTTP-Method-Override: DELETE",
                            url).endswith(" 404")  # fmt: skip
                assert curl("-H", f"JOB-TOKEN: {token}", "-H", f"Cookie: s={token}", url).endswith(" 404")
                assert len(_Recorder.seen) == count
            log = gw.log()
            assert token not in log and '"reason":"forward_auth_ambiguous"' in log
    finally:
        server.shutdown()
