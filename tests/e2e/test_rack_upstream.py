"""A real Rack application behind a real `jobgate serve`: what Rack parsed is what jobgate judged.

The upstream is Debian's ruby-rack on WEBrick with `Rack::MethodOverride` on
(tests/e2e/rack_app.rb); it answers with what it parsed. Hypothesis writes requests
with method overrides, duplicate and `;`-separated parameters, encoded names and tokens
in many places; for every request jobgate forwards, Rack's method (after overrides),
path and params (last value wins) must resolve to the same route, action and project
jobgate resolved, the presented token may appear nowhere in what Rack parsed, and no token in the
parameters GitLab reads tokens from.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from gateway.config import UPSTREAM_NAMES
from gateway.credentials import parse_query
from gateway.devredis import RedisProcess, free_port
from gateway.routes import resolve
from gateway.store import Store

from .serving import JobgateProcess, wait_http

HERE = Path(__file__).parent
PATHS = ["/api/v4/projects/1/packages/generic/t/1.0/f", "/api/v4/projects/2/packages/generic/t/1.0/f",
         "/api/v4/projects/1/releases", "/g/app.git/info/refs", "/g/app/git-upload-pack",
         "/api/v4/projects/1/trigger/pipeline"]  # fmt: skip
NAMES = ["job_token", "token", "service", "ref", "_method", "a", "job_token[]", "%6Aob_token", "%73ervice"]
VALUES = ["TOKEN", "OTHER", "git-upload-pack", "git-receive-pack", "DELETE", "GET", "main", "x"]
OTHER = "glcbt-555_" + "q" * 40


def exchange(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.skipif(shutil.which("ruby") is None, reason="needs ruby-rack and ruby-webrick (apt-get)")
def test_what_rack_parsed_names_what_jobgate_authorized(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    port = free_port()
    rack = subprocess.Popen(["ruby", str(HERE / "rack_app.rb"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    forwarded: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/", rack, tmp_path / "none.log")
        url = f"http://127.0.0.1:{port}"
        with JobgateProcess(tmp_path, redis_server.url, dict.fromkeys(UPSTREAM_NAMES, url)) as gw:
            gw.admin("project", "set", "1", "--path", "g/app", "--visibility", "private")
            gw.admin("project", "set", "2", "--path", "g/other", "--visibility", "public")
            gw.admin("member", "set", "1", "7", "30")  # developer: push yes, delete no
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            userinfo = base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()

            @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
            @given(
                method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
                path=st.sampled_from(PATHS),
                query=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=4),
                separators=st.lists(st.sampled_from(["&", ";"]), min_size=4, max_size=4),
                form=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=3),
                override=st.one_of(st.none(), st.sampled_from(["DELETE", "GET", "PUT", "POST"])),
                where=st.sampled_from(["header", "basic", "none"]),
            )
            def one(method: str, path: str, query: list[tuple[str, str]], separators: list[str],
                    form: list[tuple[str, str]], override: str | None, where: str) -> None:  # fmt: skip
                def fill(value: str) -> str:
                    return value.replace("TOKEN", token).replace("OTHER", OTHER)

                raw_query = "".join((separators[i] if i else "") + f"{k}={quote(fill(v), safe='')}"
                                    for i, (k, v) in enumerate(query))  # fmt: skip
                target = path + (f"?{raw_query}" if raw_query else "")
                headers = ["Host: gw", "Connection: close"]
                if where == "header":
                    headers.append(f"JOB-TOKEN: {token}")
                elif where == "basic":
                    headers.append(f"Authorization: Basic {userinfo}")
                if override:
                    headers.append(f"X-HTTP-Method-Override: {override}")
                body = "&".join(f"{k}={quote(fill(v), safe='')}" for k, v in form).encode()
                if body:
                    headers += ["Content-Type: application/x-www-form-urlencoded",
                                f"Content-Length: {len(body)}"]  # fmt: skip
                request = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
                status, answer = exchange(gw.port, request.encode() + body)
                if status != 200 or not answer.startswith(b'{"method"'):
                    return  # answered by jobgate itself: nothing reached Rack
                seen = json.loads(answer)
                forwarded.append(target)
                judged, _ = resolve(method, target.partition("?")[0], MultiDict(parse_query(raw_query)))
                params = {k: v for k, v in seen["params"].items() if isinstance(v, str)}
                acted, _ = resolve(seen["method"], seen["path"], MultiDict(params))
                assert judged is not None and acted is not None, (target, seen)
                assert seen["method"] == method, (target, seen)
                assert acted.route.action is judged.route.action, (target, seen)
                assert acted.target == judged.target, (target, seen)
                # the presented token nowhere; no token at all where Rack (GitLab) would read one
                assert token not in json.dumps(seen), (target, seen)
                held = [seen["params"].get(n) for n in ("job_token", "token")]
                flat = {str(v) for item in held for v in (item if isinstance(item, list) else [item])}
                assert not flat & {token, OTHER}, (target, seen)

            one()
            assert token not in gw.log()
    finally:
        rack.terminate()
        rack.wait(timeout=10)
    assert forwarded, "no example reached Rack"
