"""Forward-auth mode: nginx, Traefik and Envoy styles, judged without forwarding anything."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RecordingUpstream, World

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"


def styles(method: str, uri: str) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("nginx", "/-/auth", {"X-Original-Method": method, "X-Original-URI": uri}),
        ("traefik", "/-/auth", {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri}),
        ("envoy", "/-/auth" + uri, {}),
    ]


@pytest.mark.parametrize("style", ["nginx", "traefik", "envoy"])
async def test_allowed_answers_200_with_identity(
    gateway: Any, upstream: RecordingUpstream, world: World, style: str
) -> None:
    path, headers = next((p, h) for s, p, h in styles("GET", PKG) if s == style)
    method = "GET"
    resp = await gateway.request(method, path, headers={**headers, "JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Jobgate-Job-Id"] == "100"
    assert resp.headers["X-Jobgate-Target-Project-Id"] == "1"
    assert resp.headers["X-Jobgate-Route"] == "packages_read"
    assert upstream.requests == []


@pytest.mark.parametrize(("style", "status"), [("nginx", 403), ("traefik", 404), ("envoy", 404)])
async def test_denied_answers_the_denial(
    gateway: Any, upstream: RecordingUpstream, world: World, style: str, status: int
) -> None:
    await world.store.finish_job(100)
    path, headers = next((p, h) for s, p, h in styles("GET", PKG) if s == style)
    resp = await gateway.get(path, headers={**headers, "JOB-TOKEN": world.tokens["100"]})
    assert resp.status == status
    assert await resp.json() == {"message": "404 Not Found"}
    assert upstream.requests == []


async def test_original_method_and_query_token_are_judged(gateway: Any, world: World) -> None:
    await world.store.set_member(1, 7, 20)  # reporter: may read, may not push
    uri = PKG + f"?job_token={world.tokens['100']}"
    read = await gateway.get("/-/auth", headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": uri})
    assert read.status == 200
    push = await gateway.get("/-/auth", headers={"X-Forwarded-Method": "PUT", "X-Forwarded-Uri": uri})
    assert push.status == 404
    trick = await gateway.get("/-/auth", headers={"X-Forwarded-Uri": "/api/v4/projects/2/../1/packages/x"})
    assert trick.status == 400
