"""A real `jobgate serve` writes no token in any record, whatever carried it (issue 16).

Hypothesis writes random requests carrying a live job token, an unknown jobgate-shaped
token and an opaque token in random places and encodings, over a raw socket; afterwards
every record jobgate wrote (stdout, stderr, the access lines) is grepped for each of them
in every encoding sent.
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.devredis import RedisProcess
from gateway.store import Store

from .serving import JobgateProcess

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
TRIGGER = "/api/v4/projects/1/trigger/pipeline"
SECOND = "glcbt-77_" + "z" * 40  # the other token of an ambiguous request


class _Ok(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def pct_all(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


ENCODINGS = {"raw": lambda t: t, "pct": pct_all, "pct_some": lambda t: t[:3] + pct_all(t[3:6]) + t[6:]}
CREDENTIAL_PLACES = ["job-token", "job_token_header", "basic", "bearer", "query", "query_encoded_name",
                     "token_query", "form", "json"]  # fmt: skip
#: Elsewhere: jobgate knows an opaque value there is a token only when the request also
#: presents it (a jobgate-shaped one is masked by its shape anyway).
OTHER_PLACES = ["path", "unmatched_path", "request_id", "user_agent", "cookie", "other_query"]
PLACES = CREDENTIAL_PLACES + OTHER_PLACES


def build(place: str, token: str, encoding: str, path: str, ambiguous: bool, presented: bool) -> bytes:
    enc = ENCODINGS[encoding](token)
    headers = [("Host", "gw"), ("Connection", "close")]
    if presented and place in OTHER_PLACES:
        headers.append(("JOB-TOKEN", token))
    body = b""
    target = path
    method = "GET"
    if place == "job-token":
        headers.append(("JOB-TOKEN", token))
    elif place == "job_token_header":
        headers.append(("JOB_TOKEN", token))
    elif place == "basic":
        userinfo = base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()
        headers.append(("Authorization", f"Basic {userinfo}"))
    elif place == "bearer":
        headers.append(("Authorization", f"Bearer {token}"))
    elif place == "query":
        target += f"?job_token={enc}"
    elif place == "query_encoded_name":
        target += f"?%6Aob_token={enc}"
    elif place == "token_query":
        target += f"?a=1;token={enc}"
    elif place == "other_query":
        target += f"?note={enc}"
    elif place == "path":
        target = f"/api/v4/projects/1/packages/generic/{enc}/1.0/x"
    elif place == "unmatched_path":
        target = f"/nowhere/{enc}"
    elif place == "request_id":
        headers.append(("X-Request-Id", f"id-{token}"))
    elif place == "user_agent":
        headers.append(("User-Agent", f"ci {token}"))
    elif place == "cookie":
        headers.append(("Cookie", f"s={enc}"))
    elif place in ("form", "json"):
        method, target = "POST", TRIGGER + "?ref=main"
        if place == "form":
            body = f"token={enc}".encode()
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        else:
            body = json.dumps({"job_token": token}).encode()
            headers.append(("Content-Type", "application/json"))
    if ambiguous:
        headers.append(("JOB-TOKEN", SECOND))
    if body:
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def exchange(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def test_no_record_of_a_real_serve_holds_the_token(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    sent: set[str] = set()
    statuses: list[int] = []
    try:
        with JobgateProcess(tmp_path, redis_server.url, {"packages": url, "triggers": url}) as gw:
            gw.admin("project", "set", "1", "--path", "g/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "30")
            live = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            tokens = {"live": live, "unknown": "glcbt-4242_" + "u" * 40, "opaque": "opaque-" + "o" * 40}

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(place=st.sampled_from(PLACES), which=st.sampled_from(sorted(tokens)),
                   encoding=st.sampled_from(sorted(ENCODINGS)), path=st.sampled_from([PKG, "/api/v4/job"]),
                   ambiguous=st.booleans(), presented=st.booleans())  # fmt: skip
            def one(place: str, which: str, encoding: str, path: str, ambiguous: bool,
                    presented: bool) -> None:  # fmt: skip
                token = tokens[which]
                sent.add(ENCODINGS[encoding](token))
                presented = presented or which == "opaque"
                statuses.append(exchange(gw.port, build(place, token, encoding, path, ambiguous, presented)))

            one()
            records = gw.log()
    finally:
        upstream.shutdown()
    assert statuses and all(s and s != 500 for s in statuses), sorted(set(statuses))
    forms = sent | {SECOND, *tokens.values()} | {quote(t, safe="") for t in tokens.values()}
    leaked = [form for form in forms if form in records]
    assert not leaked, [records[records.index(f) - 200 : records.index(f) + 50] for f in leaked[:3]]
    assert records.count('"request_id"') >= len(statuses) - 5  # the access lines were written
