"""Brute force: unknown tokens from one client are limited across replicas; others keep working."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.app import GATEWAY

from .conftest import RecordingUpstream, World

PKG = "/api/v4/projects/1/packages/generic/a/1/a"


async def test_unknown_tokens_are_limited_per_client_across_replicas(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    first = await make_gateway(limits={"failed_auth_per_minute": 5})
    second = await make_gateway(limits={"failed_auth_per_minute": 5})
    for i in range(3):
        assert (await first.get(PKG, headers={"JOB-TOKEN": f"glcbt-guess-{i}"})).status == 404
    for i in range(2):
        assert (await second.get(PKG, headers={"JOB-TOKEN": f"glcbt-guess-b{i}"})).status == 404
    # the sixth failure from this client, counted in Redis by both replicas, trips the brake
    limited = await second.get(PKG, headers={"JOB-TOKEN": "glcbt-guess-c"})
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert await limited.json() == {"message": "429 Too Many Requests"}
    # the brake holds for every request from this client on that replica, even a valid one
    assert (await second.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 429
    assert second.app[GATEWAY].metrics.rate_limited._value.get() == 2
    # first replica: its next failure sees the shared count and brakes too
    assert (await first.get(PKG, headers={"JOB-TOKEN": "glcbt-guess-d"})).status == 429
    assert len(upstream.requests) == 0
    # another client (a different address) is untouched on the replica that brakes the first
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        valid = await other.get(second.make_url(PKG), headers={"JOB-TOKEN": world.tokens["100"]})
        guess = await other.get(second.make_url(PKG), headers={"JOB-TOKEN": "glcbt-guess-e"})
    assert (valid.status, guess.status) == (200, 404)


async def test_valid_tokens_never_count(make_gateway: Any, upstream: RecordingUpstream, world: World) -> None:
    client = await make_gateway(limits={"failed_auth_per_minute": 2})
    for _ in range(10):
        assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 200
    await world.store.finish_job(100)
    for _ in range(10):  # a finished job is not a guess: 404, never 429
        assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 404
