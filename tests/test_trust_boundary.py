"""The trust boundary (issue 15 rules 2-8, issue 16's hostile bodies), tried as an attacker would.

Requests go over raw sockets where a client library would normalize them; every test
asserts on what the recording upstream RECEIVED (or that it received nothing).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from .conftest import RecordingUpstream, World, basic

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
TRIGGER = "/api/v4/projects/1/trigger/pipeline"
RELEASES = "/api/v4/projects/1/releases"
REFS = "/group/app.git/info/refs"


async def send(client: Any, head: str, headers: list[tuple[str, str]], body: bytes = b"",
               host: str | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """Bytes exactly as given; the status, the response headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [head, f"Host: {host or f'{client.server.host}:{client.server.port}'}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    got = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), got, rest


def jt(world: World) -> tuple[str, str]:
    """The JOB-TOKEN header of job 100."""
    return "JOB-TOKEN", world.tokens["100"]


def message(body: bytes) -> str:
    return str(json.loads(body)["message"])


# --- rule 2: method override ------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"])
async def test_method_override_headers_are_refused(
    gateway: Any, upstream: RecordingUpstream, world: World, header: str
) -> None:
    """A developer's POST with an override naming DELETE (delete needs maintainer)."""
    token = world.tokens["100"]
    status, _, body = await send(gateway, f"POST {PKG} HTTP/1.1", [("JOB-TOKEN", token), (header, "DELETE")],
                                 b"x")  # fmt: skip
    assert status == 400 and "method_override" in message(body) and token not in body.decode()
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("target", "body", "ctype"),
    [
        (PKG + "?_method=DELETE", b"x", "application/octet-stream"),
        (PKG + "?a=1;_method=delete", b"x", "application/octet-stream"),  # Rack splits on `;`, upcases
        (RELEASES, b"name=v1&_method=DELETE", "application/x-www-form-urlencoded"),
        (RELEASES, b'{"name": "v1", "_method": "GET"}', "application/json"),
    ],
)
async def test_a_method_parameter_is_refused(
    gateway: Any, upstream: RecordingUpstream, world: World, target: str, body: bytes, ctype: str
) -> None:
    status, _, answer = await send(gateway, f"POST {target} HTTP/1.1",
                                   [jt(world), ("Content-Type", ctype)], body)  # fmt: skip
    assert status == 400 and "method_override" in message(answer)
    assert upstream.requests == []


async def test_an_override_naming_the_same_method_passes(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    status, _, _ = await send(gateway, f"POST {PKG} HTTP/1.1",
                              [jt(world), ("X-HTTP-Method-Override", "post")], b"x")  # fmt: skip
    assert status == 200 and upstream.last.method == "POST"


# --- rule 3: every place GitLab reads a token ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers", "body"),
    [
        (TRIGGER, [("Content-Type", "application/json")], b'{"ref": "main", "job_token": "B"}'),
        (TRIGGER, [("Content-Type", "application/x-www-form-urlencoded")], b"ref=main&token=B"),
        (PKG + "?a=1;job_token=B", [], b""),
        (PKG + "?%6Aob_token=B", [], b""),
        (PKG + "?job_token[]=B", [], b""),  # Rack files it under job_token
        # an upload route still reads a url-encoded body (found by the Rack property)
        (PKG, [("Content-Type", "application/x-www-form-urlencoded")], b"job_token=B"),
        (PKG, [("JOB_TOKEN", "B")], b""),
        (PKG, [("Authorization", "Basic\t" + basic("gitlab-ci-token", "B")[6:])], b""),
        (
            RELEASES,
            [("Content-Type", "multipart/form-data; boundary=zz")],
            b'--zz\r\nContent-Disposition: form-data; name="job_token"\r\n\r\nB\r\n--zz--\r\n',
        ),
    ],
)
async def test_a_second_different_token_anywhere_is_refused(
    gateway: Any, upstream: RecordingUpstream, world: World, target: str, headers: list[tuple[str, str]],
    body: bytes,
) -> None:  # fmt: skip
    other = "glcbt-999_" + "b" * 40
    body = body.replace(b"B", other.encode())
    headers = [(k, v.replace("B", other) if k != "Authorization" else basic("gitlab-ci-token", other)
                .replace("Basic ", "Basic\t")) for k, v in headers]  # fmt: skip
    status, _, answer = await send(gateway, f"POST {target.replace('B', other)} HTTP/1.1",
                                   [jt(world), *headers], body)  # fmt: skip
    assert status == 400 and "ambiguous_token" in message(answer)
    assert world.tokens["100"] not in answer.decode() and other not in answer.decode()
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("target", "headers", "body"),
    [
        (PKG + "?a=1;job_token=T", [], b""),
        (PKG + "?%6Aob_token=T&b=2", [], b""),
        (PKG, [("JOB_TOKEN", "T")], b""),
        (PKG, [("Authorization", "Basic\t" + basic("gitlab-ci-token", "T")[6:])], b""),
        (PKG, [("Authorization", "bearer   T")], b""),
        (RELEASES, [("Content-Type", "application/x-www-form-urlencoded")], b"job_token=T&name=v1"),
        (RELEASES, [("Content-Type", "application/json")], b'{"token": "T", "name": "v1"}'),
    ],
)
async def test_each_place_is_read_and_stripped(
    gateway: Any, upstream: RecordingUpstream, world: World, target: str, headers: list[tuple[str, str]],
    body: bytes,
) -> None:  # fmt: skip
    token = world.tokens["100"]
    headers = [(k, v.replace("T", token) if k != "Authorization" or "Basic" not in v
                else "Basic\t" + basic("gitlab-ci-token", token)[6:]) for k, v in headers]  # fmt: skip
    method = "POST" if body else "GET"
    status, _, answer = await send(gateway, f"{method} {target.replace('=T', '=' + token)} HTTP/1.1",
                                   headers, body.replace(b'"T"', f'"{token}"'.encode())
                                   .replace(b"=T", b"=" + token.encode()))  # fmt: skip
    assert status == 200, answer
    seen = upstream.last
    assert token not in seen.path_qs and token not in seen.body.decode()
    assert all(token not in v for values in seen.headers.values() for v in values)
    assert "authorization" not in seen.headers and "job_token" not in seen.headers
    if body:
        assert b"v1" in seen.body


async def test_a_form_or_json_body_over_the_limit_is_413(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    gateway = await make_gateway(limits={"max_form_body": 1000})
    big = json.dumps({"ref": "main", "pad": "x" * 2000}).encode()
    status, _, answer = await send(gateway, f"POST {TRIGGER} HTTP/1.1",
                                   [jt(world), ("Content-Type", "application/json")],
                                   big)  # fmt: skip
    assert status == 413 and "body_too_large" in message(answer)
    # an upload route streams its body unparsed, whatever its size
    status, _, _ = await send(gateway, f"PUT {PKG} HTTP/1.1",
                              [jt(world), ("Content-Type", "application/json")], big)  # fmt: skip
    assert status == 200 and upstream.last.body == big


# --- rule 4: the token never travels elsewhere --------------------------------------------


@pytest.mark.parametrize(
    ("target", "extra", "body"),
    [
        (PKG, [("Cookie", "session=T")], b""),
        (PKG, [("User-Agent", "ci T")], b""),
        (PKG, [("X-Request-Id", "T")], b""),
        (PKG, [("Authorization", "Token T")], b""),
        (PKG, [("Authorization", "BASIC-OF-ALICE")], b""),
        (PKG, [("X-Note", "PCT")], b""),  # percent-encoded
        (PKG + "?note=T", [], b""),
        (PKG + "?x=PCT", [], b""),
        (RELEASES, [("Content-Type", "application/x-www-form-urlencoded")], b"description=T"),
        (RELEASES, [("Content-Type", "application/json")], b'{"assets": {"links": [{"url": "T"}]}}'),
    ],
)
async def test_the_token_outside_its_places_is_refused(
    gateway: Any, upstream: RecordingUpstream, world: World, target: str, extra: list[tuple[str, str]],
    body: bytes,
) -> None:  # fmt: skip
    token = world.tokens["100"]
    pct = "".join(f"%{b:02X}" for b in token.encode())

    def fill(text: str) -> str:
        return (text.replace("BASIC-OF-ALICE", basic("alice", token)).replace("PCT", pct)
                .replace("=T", "=" + token).replace(" T", " " + token).replace('"T"', f'"{token}"')
                .replace("session=T", "session=" + token))  # fmt: skip

    headers = [("JOB-TOKEN", token)] + [(k, token if v == "T" else fill(v)) for k, v in extra]
    method = "POST" if body else "GET"
    status, _, answer = await send(gateway, f"{method} {fill(target)} HTTP/1.1", headers,
                                   fill(body.decode()).encode())  # fmt: skip
    assert status == 400 and "token_outside_credential_places" in message(answer), answer
    assert token not in answer.decode()
    assert upstream.requests == []


async def test_pass_token_keeps_the_copies_in_credential_places(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    from gateway.config import UPSTREAM_NAMES

    ups = {n: {"url": upstream.url, "pass_token": True} for n in UPSTREAM_NAMES}
    gateway = await make_gateway(upstreams=ups)
    token = world.tokens["100"]
    status, _, _ = await send(gateway, f"GET {PKG}?job_token={token} HTTP/1.1", [("JOB-TOKEN", token)])
    assert status == 200
    assert upstream.last.headers["job-token"] == [token] and f"job_token={token}" in upstream.last.path_qs


# --- rule 5: a decision-relevant parameter given twice --------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "ctype", "body"),
    [
        ("GET", REFS + "?service=git-upload-pack&service=git-receive-pack", "", b""),
        ("GET", REFS + "?service=git-upload-pack;service=git-receive-pack", "", b""),
        ("GET", REFS + "?service=git-upload-pack&%73ervice=git-receive-pack", "", b""),
        ("GET", REFS + "?service=git-upload-pack&service[]=git-receive-pack", "", b""),
        ("POST", TRIGGER + "?ref=main", "application/x-www-form-urlencoded", b"ref=production"),
        ("POST", TRIGGER, "application/json", b'{"ref": "main", "ref[]": "x"}'),
        ("POST", "/v2/group/app/blobs/uploads/?mount=sha256:1&from=a/b&from=c/d", "", b""),
    ],
)
async def test_a_decision_parameter_given_twice_is_refused(
    gateway: Any, upstream: RecordingUpstream, world: World, method: str, target: str, ctype: str,
    body: bytes,
) -> None:  # fmt: skip
    headers = [("Authorization", basic("gitlab-ci-token", world.tokens["100"]))]
    if ctype:
        headers.append(("Content-Type", ctype))
    status, _, answer = await send(gateway, f"{method} {target} HTTP/1.1", headers, body)
    assert status == 400 and "duplicate_parameter" in message(answer)
    assert upstream.requests == []


def test_every_route_names_the_parameters_it_matches_or_acts_on() -> None:
    from gateway.routes import ROUTES

    params = {route.name: route.decision_params for route in ROUTES}
    assert params["git_refs"] == {"service"} and params["git_refs_push"] == {"service"}
    assert params["trigger_pipeline"] == {"ref"} and params["registry_upload"] == {"mount", "from"}


# --- rule 6: forwarding headers are jobgate's ------------------------------------------------


SPOOFED = [("X-Forwarded-Host", "evil.example"), ("X-Forwarded-For", "198.51.100.7"),
           ("X-Forwarded-Proto", "https"), ("Forwarded", "for=198.51.100.7;host=evil.example"),
           ("X-Real-IP", "198.51.100.7"), ("X-Forwarded-Prefix", "/evil")]  # fmt: skip


async def test_a_clients_forwarding_headers_are_replaced(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    status, _, _ = await send(gateway, f"GET {PKG} HTTP/1.1", [jt(world), *SPOOFED],
                              host="gitlab.example:8080")  # fmt: skip
    assert status == 200
    seen = upstream.last.headers
    assert seen["x-forwarded-host"] == ["gitlab.example:8080"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-forwarded-proto"] == ["http"]
    assert seen["forwarded"] == ['for=127.0.0.1;proto=http;host="gitlab.example:8080"']
    assert "x-real-ip" not in seen and "x-forwarded-prefix" not in seen


async def test_a_trusted_proxys_forwarding_headers_are_extended(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    gateway = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    status, _, _ = await send(gateway, f"GET {PKG} HTTP/1.1", [jt(world), *SPOOFED])
    assert status == 200
    seen = upstream.last.headers
    assert seen["x-forwarded-host"] == ["evil.example"] and seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"] and seen["x-real-ip"] == ["198.51.100.7"]
    assert seen["forwarded"][0].startswith("for=198.51.100.7;host=evil.example, for=127.0.0.1")


async def test_static_upstream_headers_override_the_computed_ones(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    from gateway.config import UPSTREAM_NAMES

    ups = {n: {"url": upstream.url, "headers": {"X-Forwarded-Host": "pypi.example"}} for n in UPSTREAM_NAMES}
    gateway = await make_gateway(upstreams=ups)
    status, _, _ = await send(gateway, f"GET {PKG} HTTP/1.1", [jt(world)])
    assert status == 200 and upstream.last.headers["x-forwarded-host"] == ["pypi.example"]


async def test_behind_trusted_proxies_the_limiter_counts_the_client(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    gateway = await make_gateway(trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"],
                                 limits={"failed_auth_per_minute": 2})  # fmt: skip
    bad = [("JOB-TOKEN", "glcbt-1_" + "x" * 40)]
    chain = [("X-Forwarded-For", "203.0.113.5, 198.51.100.1, 10.0.0.2")]  # spoofed left, real, proxy
    statuses = [(await send(gateway, f"GET {PKG} HTTP/1.1", bad + chain))[0] for _ in range(4)]
    assert statuses[-1] == 429
    other = [("X-Forwarded-For", "203.0.113.5, 198.51.100.2, 10.0.0.2")]  # same spoofed part, other client
    assert (await send(gateway, f"GET {PKG} HTTP/1.1", [jt(world), *other]))[0] == 200


def test_client_address_is_the_rightmost_untrusted_entry() -> None:
    import ipaddress

    from multidict import CIMultiDict

    from gateway.proxy import client_address

    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    headers = CIMultiDict([("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("X-Forwarded-For", "10.0.0.3")])
    assert client_address("10.0.0.1", headers, trusted) == "2.2.2.2"
    assert client_address("192.0.2.1", headers, trusted) == "192.0.2.1"  # an untrusted peer's own
    assert client_address("10.0.0.1", CIMultiDict([("X-Forwarded-For", 'x"y')]), trusted) == "10.0.0.1"


# --- rule 7: the registry ------------------------------------------------------------------


async def test_a_registry_token_never_goes_upstream_beside_a_job_token(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    headers = [jt(world), ("Authorization", "Bearer some.registry.jwt")]
    status, _, _ = await send(gateway, "GET /v2/group/app/manifests/latest HTTP/1.1", headers)
    assert status == 200
    assert "authorization" not in upstream.last.headers and "job-token" not in upstream.last.headers


@pytest.mark.parametrize("host", ['evil"x', "a b", "gitlab.example:8080\\"])
async def test_the_realm_never_echoes_an_unchecked_host(gateway: Any, world: World, host: str) -> None:
    status, headers, _ = await send(gateway, "GET /v2/ HTTP/1.1", [], host=host)
    assert status in (400, 401)
    if status == 401:
        challenge = headers["www-authenticate"]
        assert challenge.count('"') == 4 and host not in challenge


async def test_the_realm_comes_from_public_url(make_gateway: Any, world: World) -> None:
    gateway = await make_gateway(public_url="https://gitlab.example")
    _, headers, _ = await send(gateway, "GET /v2/ HTTP/1.1", [], host="evil.example")
    assert 'realm="https://gitlab.example/jwt/auth"' in headers["www-authenticate"]


# --- rule 8: case ------------------------------------------------------------------------


async def test_git_paths_go_upstream_in_the_projects_case(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await world.project(1, "Group/App")
    creds = [("Authorization", basic("gitlab-ci-token", world.tokens["100"]))]
    status, _, _ = await send(gateway, "GET /group/APP.git/info/refs?service=git-upload-pack HTTP/1.1", creds)
    assert status == 200 and upstream.last.path_qs == "/Group/App.git/info/refs?service=git-upload-pack"
    status, _, _ = await send(gateway, "POST /GROUP/app/git-upload-pack HTTP/1.1", creds, b"0000")
    assert status == 200 and upstream.last.path_qs == "/Group/App/git-upload-pack"


async def test_a_git_path_longer_than_the_project_is_not_served(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    creds = [("Authorization", basic("gitlab-ci-token", world.tokens["100"]))]
    status, _, _ = await send(gateway, "GET /group/app/other.git/info/refs?service=git-upload-pack HTTP/1.1",
                              creds)  # fmt: skip
    assert status == 404 and upstream.requests == []


async def test_an_oci_name_not_lower_case_is_refused(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    status, _, answer = await send(gateway, "GET /v2/Group/App/manifests/latest HTTP/1.1",
                                   [jt(world)])  # fmt: skip
    assert status == 400 and "repository_name_invalid" in message(answer)
    assert upstream.requests == []


# --- issue 16: malformed input from anyone is a 4xx ----------------------------------------


MULTIPART = "multipart/form-data; boundary=x"


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", b"[" * 200_000),
        ("application/json", b"\xff\xfe{}"),
        ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"),
        (MULTIPART, b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1"),
        (MULTIPART, b"--x\r\nContent-Disposition: form-data\r\n\r\n1\r\n--x--\r\n"),
        (
            MULTIPART,
            b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\nContent-Disposition: form-data; "
            b"name=a\r\n\r\n--y\r\n\r\nq\r\n--y--\r\n--x--\r\n",
        ),
        (
            MULTIPART,
            b"--x\r\nContent-Disposition: form-data; name=a\r\nContent-Type: text/plain; "
            b"charset=nonexist\r\n\r\n1\r\n--x--\r\n",
        ),
        (
            MULTIPART,
            b"--x\r\nContent-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: bogus"
            b"\r\n\r\n1\r\n--x--\r\n",
        ),
        ("application/x-www-form-urlencoded; charset=bogus", b"a=1"),
        ("application/x-www-form-urlencoded", b"a=\xff"),
    ],
)
async def test_a_malformed_body_from_anyone_is_a_4xx(
    gateway: Any, upstream: RecordingUpstream, world: World, ctype: str, body: bytes
) -> None:
    headers = [("Content-Type", ctype)]
    status, _, answer = await send(gateway, f"POST {TRIGGER}?ref=main HTTP/1.1", headers, body)
    assert 400 <= status < 500, answer
    assert b"Traceback" not in answer and upstream.requests == []


async def test_a_multipart_body_without_a_token_field_is_forwarded_as_sent(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    body = b'--x\r\nContent-Disposition: form-data; name="ref"\r\n\r\nmain\r\n--x--\r\n'
    status, _, _ = await send(gateway, f"POST {TRIGGER} HTTP/1.1",
                              [jt(world), ("Content-Type", MULTIPART)], body)  # fmt: skip
    assert status == 200 and upstream.last.body == body


async def test_a_stalled_form_body_is_a_408(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    """A parsed body is read under `limits.body_idle_timeout` too, as a streamed one is."""
    gateway = await make_gateway(limits={"body_idle_timeout": 0.3})
    reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
    writer.write(f"POST {TRIGGER} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {world.tokens['100']}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())  # fmt: skip
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"body_stalled" in answer
    assert upstream.requests == []
