"""The gateway end to end over a real Redis and a recording upstream."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway.store import token_digest

from .conftest import RecordingUpstream, World, basic, raw_request

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
NOT_FOUND = {"message": "404 Not Found"}


async def assert_denied(resp: Any, upstream: RecordingUpstream, seen_before: int = 0) -> None:
    assert resp.status == 404
    assert await resp.json() == NOT_FOUND
    assert len(upstream.requests) == seen_before, "a denied request reached the upstream"


# -- credentials: every source works and is removed before forwarding ---------------------


@pytest.mark.parametrize(
    "how",
    ["header", "job_token_query", "basic", "bearer"],
)
async def test_every_credential_source_is_accepted_and_stripped(
    gateway: Any, upstream: RecordingUpstream, world: World, how: str
) -> None:
    token = world.tokens["100"]
    headers: dict[str, str] = {"X-Other": "kept"}
    url = PKG + "?keep=1"
    if how == "header":
        headers["JOB-TOKEN"] = token
    elif how == "job_token_query":
        url += f"&job_token={token}"
    elif how == "basic":
        headers["Authorization"] = basic("gitlab-ci-token", token)
    else:
        headers["Authorization"] = f"Bearer {token}"
    resp = await gateway.get(url, headers=headers)
    assert resp.status == 200, await resp.text()
    seen = upstream.last
    assert seen.path_qs == PKG + "?keep=1"
    assert "job-token" not in seen.headers and "authorization" not in seen.headers
    assert token not in json.dumps(seen.headers) and token not in seen.path_qs
    assert seen.headers["x-other"] == ["kept"]
    assert seen.headers["x-jobgate-job-id"] == ["100"]
    assert seen.headers["x-jobgate-project-id"] == ["1"]
    assert seen.headers["x-jobgate-user-id"] == ["7"]


async def test_two_different_tokens_are_rejected_as_ambiguous(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    other = await world.job(101, 1, 7)
    resp = await gateway.get(PKG + f"?job_token={other}", headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 400
    assert "more than one" in (await resp.json())["message"]
    assert upstream.requests == []


async def test_the_same_token_twice_is_fine(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    token = world.tokens["100"]
    resp = await gateway.get(PKG + f"?job_token={token}", headers={"JOB-TOKEN": token})
    assert resp.status == 200


async def test_basic_auth_with_another_user_is_no_credential(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    resp = await gateway.get(PKG, headers={"Authorization": basic("alice", world.tokens["100"])})
    await assert_denied(resp, upstream)


async def test_no_credential_is_denied(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    await assert_denied(await gateway.get(PKG), upstream)


async def test_unknown_token_is_denied(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    await assert_denied(await gateway.get(PKG, headers={"JOB-TOKEN": "glcbt-nope"}), upstream)


# -- validity: finishing, erasing, expiry, pending delete -------------------------------


async def test_finish_denies_the_very_next_request(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert (await gateway.get(PKG, headers=headers)).status == 200
    await world.store.finish_job(100, "success")
    await assert_denied(await gateway.get(PKG, headers=headers), upstream, seen_before=1)


async def test_canceling_job_loses_its_token(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    # GitLab's AuthJobFinder accepts `canceling` only for runner endpoints (allow_canceling)
    assert (await gateway.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 200
    assert await world.store.finish_job(100, "canceling") == "canceling"
    denied = await gateway.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    await assert_denied(denied, upstream, seen_before=1)


async def test_erase_revokes(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    await world.store.erase_job(100)
    await assert_denied(await gateway.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]}), upstream)


async def test_expired_token_is_denied(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    token = await world.job(102, 1, 7, timeout=1, now=0)
    await assert_denied(await gateway.get(PKG, headers={"JOB-TOKEN": token}), upstream)


async def test_pending_delete_project_denies(gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    await world.store.set_project(1, pending_delete=True)
    await assert_denied(await gateway.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]}), upstream)


# -- routes and targets ---------------------------------------------------------------


async def test_url_encoded_project_path_resolves(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    resp = await gateway.get(
        "/api/v4/projects/group%2Fapp/packages/generic/x/1/y", headers={"JOB-TOKEN": world.tokens["100"]}
    )
    assert resp.status == 200
    assert upstream.last.path_qs == "/api/v4/projects/group%2Fapp/packages/generic/x/1/y"
    assert upstream.last.headers["x-jobgate-target-project-id"] == ["1"]


async def test_unlisted_route_is_404_and_never_forwarded(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    for path in ("/api/v4/projects/1/variables", "/api/v4/users", "/", "/admin"):
        resp = await gateway.get(path, headers={"JOB-TOKEN": world.tokens["100"]})
        await assert_denied(resp, upstream)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v4/projects/2/../1/packages/x",
        "/api/v4/projects/2/%2e%2e/1/packages/x",
        "/api/v4/projects/group%252Fapp/packages/x",
        "/api/v4/projects/1//packages/x",
        "/api/v4/projects/1/packages/x%00y",
    ],
)
async def test_path_tricks_are_rejected(
    gateway: Any, upstream: RecordingUpstream, world: World, path: str
) -> None:
    status, body = await raw_request(gateway, f"GET {path} HTTP/1.1", {"JOB-TOKEN": world.tokens["100"]})
    assert status == 400
    assert b'"message": "400 Bad request' in body
    assert upstream.requests == []


async def test_job_endpoint_is_answered_by_jobgate(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    resp = await gateway.get("/api/v4/job", headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200
    job = await resp.json()
    assert job["id"] == 100 and job["status"] == "running" and job["ref"] == "main"
    assert job["name"] == "build" and job["pipeline"]["id"] == 55
    assert job["project_id"] == 1 and job["user"]["id"] == 7
    assert upstream.requests == []
    await world.store.finish_job(100)
    resp = await gateway.get("/api/v4/job", headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 401 and upstream.requests == []  # GitLab's answer there (test_job_entity.py)


# -- triggers ---------------------------------------------------------------------------

TRIGGER = "/api/v4/projects/1/trigger/pipeline"


async def test_trigger_with_job_token_in_multipart_form(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("token", world.tokens["100"])
    form.add_field("ref", "main")
    form.add_field("variables[DEPLOY]", "yes")
    resp = await gateway.post(TRIGGER, data=form)
    assert resp.status == 200, await resp.text()
    seen = upstream.last
    assert seen.headers["x-jobgate-pipeline-source"] == ["pipeline"]
    assert world.tokens["100"].encode() not in seen.body
    assert b'name="ref"' in seen.body and b"main" in seen.body and b"variables[DEPLOY]" in seen.body


async def test_trigger_with_trigger_token_in_urlencoded_form(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    trigger = await world.store.create_trigger(1, 7)
    resp = await gateway.post(TRIGGER, data={"token": trigger, "ref": "main"})
    assert resp.status == 200
    assert upstream.last.headers["x-jobgate-pipeline-source"] == ["trigger"]
    assert upstream.last.body == b"ref=main"
    assert "x-jobgate-job-id" not in upstream.last.headers


async def test_trigger_token_in_query_and_json(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    trigger = await world.store.create_trigger(1, 7)
    resp = await gateway.post(TRIGGER + f"?token={trigger}&ref=main")
    assert resp.status == 200
    assert upstream.last.path_qs == TRIGGER + "?ref=main"
    resp = await gateway.post(TRIGGER, json={"token": trigger, "ref": "main"})
    assert resp.status == 200
    assert json.loads(upstream.last.body) == {"ref": "main"}


async def test_trigger_token_cannot_read_packages(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    trigger = await world.store.create_trigger(1, 7)
    await assert_denied(await gateway.get(PKG, headers={"JOB-TOKEN": trigger}), upstream)


async def test_revoked_trigger_token_is_denied(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    trigger = await world.store.create_trigger(1, 7)
    assert await world.store.revoke_trigger(trigger)
    await assert_denied(await gateway.post(TRIGGER, data={"token": trigger, "ref": "main"}), upstream)


# -- proxy hygiene ----------------------------------------------------------------------


async def test_spoofed_identity_and_hop_by_hop_headers_are_stripped(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    resp = await gateway.get(
        PKG,
        headers={
            "JOB-TOKEN": world.tokens["100"],
            "X-Jobgate-Job-Id": "999",
            "X-Jobgate-User-Id": "1",
            "X-Jobgate-Admin": "yes",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "Proxy-Authorization": "Basic eDp5",
        },
    )
    assert resp.status == 200
    seen = upstream.last.headers
    assert seen["x-jobgate-job-id"] == ["100"] and seen["x-jobgate-user-id"] == ["7"]
    assert "x-jobgate-admin" not in seen and "x-secret-hop" not in seen
    assert "proxy-authorization" not in seen
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert "x-forwarded-host" in seen


async def test_upload_body_arrives_byte_for_byte(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    payload = bytes(range(256)) * 4096
    resp = await gateway.put(PKG, data=payload, headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200
    assert upstream.last.body == payload
    assert upstream.last.headers["content-length"] == [str(len(payload))]


async def test_upstream_down_is_502(make_gateway: Any, world: World, upstream: RecordingUpstream) -> None:
    client = await make_gateway()
    await upstream.server.close()  # type: ignore[union-attr]
    resp = await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 502
    assert await resp.json() == {"message": "502 Bad Gateway"}


async def test_redis_down_is_503(
    make_gateway: Any, upstream: RecordingUpstream, world: World, aiohttp_client: Any
) -> None:
    from gateway.app import build_gateway
    from gateway.devredis import free_port

    from .conftest import gateway_config

    config = gateway_config(f"redis://127.0.0.1:{free_port()}/0", upstream.url)
    client = await aiohttp_client(build_gateway(config))
    resp = await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 503
    assert upstream.requests == []


async def test_only_token_digests_are_stored(world: World) -> None:
    token = world.tokens["100"]
    trigger = await world.store.create_trigger(1, 7)
    keys = [k.decode() async for k in world.store.client.scan_iter()]
    stored = await world.store.client.hget(f"{world.store.prefix}job:100", "d")
    assert stored == bytes.fromhex(token_digest(token))  # the job token: its digest, in its job
    assert f"{world.store.prefix}tok:{token_digest(trigger)}" in keys  # a trigger token: likewise
    for key in keys:
        assert token not in key and trigger not in key
        dump = await world.store.client.dump(key)
        assert token.encode() not in dump and trigger.encode() not in dump


# -- pass-through of HTTP semantics -----------------------------------------------------

FILE = bytes(range(256)) * 64


async def test_range_head_and_redirects_pass_through_unchanged(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    from aiohttp import web

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path.endswith("/moved"):
            return web.Response(status=302, headers={"Location": "http://elsewhere.example/x"})
        if request.headers.get("Range") == "bytes=10-19":
            return web.Response(
                status=206, body=FILE[10:20], headers={"Content-Range": f"bytes 10-19/{len(FILE)}"}
            )
        return web.Response(body=FILE, headers={"ETag": '"v1"', "Content-Encoding": "identity"})

    upstream.respond = respond
    headers = {"JOB-TOKEN": world.tokens["100"]}
    ranged = await gateway.get(PKG, headers={**headers, "Range": "bytes=10-19"})
    assert ranged.status == 206 and await ranged.read() == FILE[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(FILE)}"
    assert upstream.last.headers["range"] == ["bytes=10-19"]

    head = await gateway.head(PKG, headers=headers)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(FILE))
    assert head.headers["ETag"] == '"v1"' and await head.read() == b""
    assert upstream.last.method == "HEAD"

    moved = await gateway.get(
        "/api/v4/projects/1/packages/generic/x/1/moved", headers=headers, allow_redirects=False
    )
    assert moved.status == 302 and moved.headers["Location"] == "http://elsewhere.example/x"
    assert len(upstream.requests) == 3, "jobgate must not follow the redirect itself"


async def test_chunked_upload_is_streamed_through(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    async def body() -> Any:
        for i in range(50):
            yield bytes([i]) * 10_000

    resp = await gateway.put(PKG, data=body(), headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200
    assert upstream.last.body == b"".join(bytes([i]) * 10_000 for i in range(50))
    assert upstream.last.headers["transfer-encoding"] == ["chunked"]


async def test_pass_token_upstream_keeps_the_credential(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    from gateway.config import UPSTREAM_NAMES

    client = await make_gateway(
        upstreams={n: {"url": upstream.url, "pass_token": n == "packages"} for n in UPSTREAM_NAMES}
    )
    token = world.tokens["100"]
    assert (await client.get(PKG + f"?job_token={token}", headers={"JOB-TOKEN": token})).status == 200
    assert upstream.last.headers["job-token"] == [token]
    assert upstream.last.path_qs.endswith(f"job_token={token}")


async def test_upstream_timeout_is_504(make_gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    import asyncio

    from gateway.config import UPSTREAM_NAMES

    async def hang(request: Any, body: bytes) -> Any:
        await asyncio.sleep(5)

    upstream.respond = hang
    client = await make_gateway(
        upstreams={n: {"url": upstream.url, "read_timeout": 0.3} for n in UPSTREAM_NAMES}
    )
    resp = await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 504
    assert await resp.json() == {"message": "504 Gateway Timeout"}


# -- every denial reason, end to end: the same 404, nothing forwarded --------------------


async def _private_lib(w: World) -> None:
    await w.project(2, "other/lib", "private")
    await w.store.set_member(2, 7, 30)


async def _outbound_limited(w: World) -> None:
    await _private_lib(w)
    await w.store.set_project(2, inbound=False)
    await w.store.set_project(1, scope=True)


async def _inbound_limited(w: World) -> None:
    await _private_lib(w)


async def _reporter_only(w: World) -> None:
    await _private_lib(w)
    await w.store.set_inbound(2, "group", True)
    await w.store.set_member(2, 7, 20)


async def _policy_limited(w: World) -> None:
    await _private_lib(w)
    await w.store.set_inbound(2, "1", True, ["read_releases"])


async def _nothing(w: World) -> None:
    return None


LIB = "/api/v4/projects/2/packages/generic/lib/1/lib.tar"
DENIALS = [
    ("outside_scope", _outbound_limited, "GET", LIB),
    ("outside_inbound_scope", _inbound_limited, "GET", LIB),
    ("insufficient_role", _reporter_only, "PUT", LIB),
    ("policy_missing", _policy_limited, "GET", LIB),
    ("project_not_found", _nothing, "GET", "/api/v4/projects/99/packages/generic/x/1/x"),
    ("project_not_found", _nothing, "GET", "/api/v4/projects/no%2Fsuch/packages/generic/x/1/x"),
    ("own_project_only", _private_lib, "GET", "/api/v4/projects/2/registry/repositories"),
    ("insufficient_role", _nothing, "POST", "/api/v4/projects/1/terraform/state/prod/lock"),
]


@pytest.mark.parametrize(
    ("reason", "setup", "method", "path"), DENIALS, ids=[f"{d[0]}-{i}" for i, d in enumerate(DENIALS)]
)
async def test_every_denial_is_the_same_404(
    gateway: Any, upstream: RecordingUpstream, world: World, reason: str, setup: Any, method: str, path: str
) -> None:
    from gateway.app import GATEWAY

    await setup(world)
    resp = await gateway.request(method, path, headers={"JOB-TOKEN": world.tokens["100"]})
    await assert_denied(resp, upstream)
    metrics = gateway.app[GATEWAY].metrics
    assert (
        metrics.registry.get_sample_value(
            "jobgate_auth_decisions_total", {"result": "deny", "reason": reason}
        )
        == 1
    )


async def test_cross_project_access_in_scope_is_forwarded(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await _private_lib(world)
    await world.store.set_inbound(2, "group", True)
    resp = await gateway.get(LIB, headers={"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200
    assert upstream.last.headers["x-jobgate-target-project-id"] == ["2"]
    assert upstream.last.headers["x-jobgate-project-id"] == ["1"]


async def test_request_id_reaches_the_upstream_and_comes_back(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    token = world.tokens["100"]
    resp = await gateway.get(PKG, headers={"JOB-TOKEN": token, "X-Request-Id": "ci-run-42"})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "ci-run-42"
    assert upstream.last.headers["x-request-id"] == ["ci-run-42"]
    resp = await gateway.get(PKG, headers={"JOB-TOKEN": token, "X-Request-Id": "x" * 200})  # too long
    made_up = resp.headers["X-Request-Id"]
    assert made_up and made_up != "x" * 200
    assert upstream.last.headers["x-request-id"] == [made_up]
    resp = await gateway.get(PKG)  # denied: answered by jobgate, same header
    assert resp.status == 404 and resp.headers["X-Request-Id"]


async def test_a_token_hidden_in_the_request_id_is_refused_and_masked(
    gateway: Any, upstream: RecordingUpstream, world: World, caplog: Any, capfd: Any
) -> None:
    """The token outside its credential places is refused (rule 4), and masked in the log line
    and in the id echoed back."""
    token = world.tokens["100"]
    resp = await gateway.get(PKG, headers={"JOB-TOKEN": token, "X-Request-Id": f"id-{token}"})
    assert resp.status == 400
    assert "token_outside_credential_places" in (await resp.json())["message"]
    assert resp.headers["X-Request-Id"] == "id-[MASKED]"
    from gateway.app import GATEWAY

    gateway.app[GATEWAY].metrics.fold()  # counts and logs the finished requests now
    err = capfd.readouterr().err
    assert '"request_id":"id-[MASKED]"' in err and token not in err


async def test_answers_jobgate_gives_itself_carry_their_bytes_out(
    gateway: Any, upstream: RecordingUpstream, world: World, capfd: Any
) -> None:
    job = await gateway.get("/api/v4/job", headers={"JOB-TOKEN": world.tokens["100"]})
    body = await job.read()
    assert job.status == 200 and body
    denied = await gateway.get("/api/v4/projects/99/packages/generic/a/1/a")
    denied_body = await denied.read()
    from gateway.app import GATEWAY

    gateway.app[GATEWAY].metrics.fold()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith('{"time"')]
    by_route = {line["route"]: line for line in lines}
    assert by_route["job"]["bytes_out"] == len(body)  # was 0: only proxied bytes were counted
    assert by_route["packages_read"]["bytes_out"] == len(denied_body)
    assert upstream.requests == []
