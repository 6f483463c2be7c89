"""The decision cache: warm hits skip Redis, every revoking write reaches every gateway first."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import GATEWAY, build_gateway

from .conftest import RecordingUpstream, World, gateway_config

PKG = "/api/v4/projects/1/packages/generic/a/1/a"
LIB = "/api/v4/projects/2/packages/generic/b/1/b"


async def cached_gateway(redis_url: str, upstream: RecordingUpstream, aiohttp_client: Any) -> TestClient:
    client: TestClient = await aiohttp_client(build_gateway(gateway_config(redis_url, upstream.url)))
    for _ in range(100):  # the invalidation subscription comes up in the background
        if client.app[GATEWAY].cache.available:
            return client
        await asyncio.sleep(0.02)
    raise AssertionError("the cache never subscribed")


def lookups(client: TestClient, result: str) -> float:
    registry = client.app[GATEWAY].metrics.registry
    return registry.get_sample_value("jobgate_cache_lookups_total", {"result": result}) or 0.0


async def commands(world: World) -> int:
    stats = await world.store.client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_warm_cache_skips_redis_and_every_write_reaches_every_gateway(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    first = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    second = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    for client in (first, second):
        assert (await client.get(PKG, headers=headers)).status == 200  # cold: one read each
    before = await commands(world)
    for _ in range(20):
        for client in (first, second):
            assert (await client.get(PKG, headers=headers)).status == 200
    assert await commands(world) == before, "a warm cache must not read Redis"
    assert lookups(first, "hit") == 20 and lookups(first, "miss") == 1

    await world.store.finish_job(100)  # returns once both gateways dropped the job's entries
    for client in (first, second):
        assert (await client.get(PKG, headers=headers)).status == 404


async def test_role_scope_and_project_changes_invalidate(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    await world.project(2, "other/lib", "private")
    await world.store.set_member(2, 7, 30)
    await world.store.set_inbound(2, "group", True)
    assert (await client.put(LIB, headers=headers)).status == 200
    await world.store.set_member(2, 7, 20)  # demoted: may no longer push
    assert (await client.put(LIB, headers=headers)).status == 404
    assert (await client.get(LIB, headers=headers)).status == 200
    await world.store.set_inbound(2, "group", False)
    assert (await client.get(LIB, headers=headers)).status == 404
    await world.store.set_inbound(2, "group", True)
    assert (await client.get(LIB, headers=headers)).status == 200
    await world.store.set_project(2, pending_delete=True)
    assert (await client.get(LIB, headers=headers)).status == 404
    await world.store.erase_job(100)
    assert (await client.get(PKG, headers=headers)).status == 404


async def test_lost_subscription_bypasses_the_cache(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert (await client.get(PKG, headers=headers)).status == 200
    await world.store.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for _ in range(100):
        if not client.app[GATEWAY].cache.available:
            break
        await asyncio.sleep(0.02)
    assert len(client.app[GATEWAY].cache) == 0
    assert (await client.get(PKG, headers=headers)).status in (200,)
    assert lookups(client, "bypass") + lookups(client, "miss") >= 2
    for _ in range(200):  # and it comes back by itself
        if client.app[GATEWAY].cache.available:
            break
        await asyncio.sleep(0.02)
    assert client.app[GATEWAY].cache.available
    await world.store.finish_job(100)
    assert (await client.get(PKG, headers=headers)).status == 404


async def test_cache_off_reads_redis_every_time(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    config = gateway_config(redis_server.url, upstream.url, cache={"ttl": 0})
    client = await aiohttp_client(build_gateway(config))
    before = await commands(world)
    for _ in range(5):
        assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 200
    assert await commands(world) - before == 5


async def test_a_remembered_decision_ends_with_the_token(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    """Decisions are remembered on warm cache entries; the job's expiry still ends them."""
    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    token = await world.job(150, 1, 7, timeout=1.0)
    headers = {"JOB-TOKEN": token}
    assert (await client.get(PKG, headers=headers)).status == 200
    assert (await client.get(PKG, headers=headers)).status == 200  # remembered
    assert lookups(client, "hit") == 1
    # 3 s later (expiry is stored in whole seconds, rounded up), well within the 5 s TTL
    client.app[GATEWAY].authorizer.clock = lambda: time.time() + 3
    assert (await client.get(PKG, headers=headers)).status == 404
    assert lookups(client, "hit") == 2, "the entry was still cached: the decision was re-made"


async def test_reload_forgets_remembered_decisions(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any, tmp_path: Any
) -> None:
    """A SIGHUP reload can change the scope settings a remembered decision was made under."""
    from gateway.server import reload_config

    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert (await client.get(PKG, headers=headers)).status == 200
    assert len(client.app[GATEWAY].cache) == 1
    assert not reload_config(client.app, str(tmp_path / "missing.yaml"))  # rejected: nothing changes
    assert len(client.app[GATEWAY].cache) == 1
    config = tmp_path / "jobgate.yaml"
    config.write_text(
        f"listen: 127.0.0.1:1\nredis: {{url: '{redis_server.url}'}}\n"
        f"upstreams: {{packages: {{url: '{upstream.url}'}}}}\nscope: {{enforce_inbound: true}}\n"
    )
    assert reload_config(client.app, str(config))
    assert len(client.app[GATEWAY].cache) == 0


def test_entries_expire_with_the_ttl_on_the_cache_clock() -> None:
    """The TTL is measured on the cache's own clock: an entry past it is a miss and is dropped."""
    from gateway.cache import DecisionCache
    from gateway.model import AccessState, TargetRef, TokenKind

    now = [100.0]
    cache = DecisionCache(ttl=5, clock=lambda: now[0])
    cache.available, cache.lease_until = True, 1000.0  # as a follower with a renewed lease sets them
    key = ("t:" + "a" * 64, TargetRef(1))
    assert cache.put(key, AccessState(kind=TokenKind.TRIGGER), cache.generation) is not None
    now[0] = 104.9
    assert cache.entry(key) is not None
    now[0] = 105.1
    assert cache.entry(key) is None and len(cache) == 0


async def test_a_group_rename_reaches_cached_decisions(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    await world.project(2, "other/lib", "private")
    await world.store.set_member(2, 7, 20)
    await world.store.set_group(10, "group")
    await world.store.set_inbound(2, "group", True)
    assert (await client.get(LIB, headers=headers)).status == 200
    await world.store.set_group(10, "renamed")  # project 1 stays at group/app: no longer covered
    assert (await client.get(LIB, headers=headers)).status == 404


async def test_a_project_at_a_longer_path_drops_cached_path_resolutions(
    world: World, upstream: RecordingUpstream, aiohttp_client: Any, redis_server: Any
) -> None:
    """`group/app/img` registered beside `group/app`: a cached `{repo+}` resolution of
    `group/app/img...` to `group/app` is dropped by the write, not kept until cache.ttl.

    A container repository below a project (`group/app/img` in `group/app`'s registry) is
    the case: a git path longer than its project is refused outright (trust boundary)."""
    from .conftest import basic

    client = await cached_gateway(redis_server.url, upstream, aiohttp_client)
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    tags = "/v2/group/app/img/tags/list"
    assert (await client.get(tags, headers=auth)).status == 200  # resolves to group/app, its own project
    assert (await client.get(tags, headers=auth)).status == 200
    assert lookups(client, "hit") == 1, "the resolution is cached"
    await world.project(3, "group/app/img", "private")  # user 7 is no member: a private project
    assert (await client.get(tags, headers=auth)).status == 404
    assert upstream.requests[-1].path_qs == tags and len(upstream.requests) == 2


def test_a_lapsed_lease_allows_nothing_until_the_channel_is_back() -> None:
    """Past its lease (no self-ping answered for redis.timeout) the cache neither answers nor
    lets the request fall through to a Redis read: a StoreUnavailable (503), and it forgets."""
    import pytest

    from gateway.cache import DecisionCache
    from gateway.model import AccessState, TargetRef, TokenKind
    from gateway.store import StoreUnavailable

    now, lapses = [100.0], []
    cache = DecisionCache(ttl=5, clock=lambda: now[0])
    cache.on_lapse = lambda: lapses.append(now[0])  # the app counts jobgate_cache_lease_lapses_total
    cache.available, cache.lease_until = True, 100.5
    key = ("t:" + "a" * 64, TargetRef(1))
    assert cache.put(key, AccessState(kind=TokenKind.TRIGGER), cache.generation) is not None
    assert cache.entry(key) is not None
    now[0] = 100.5
    with pytest.raises(StoreUnavailable):
        cache.entry(key)
    assert len(cache) == 0 and cache.stalled and not cache.available
    with pytest.raises(StoreUnavailable):
        cache.entry(key)  # and stays so until the follower renews the lease
    assert lapses == [100.5], "one lapse is counted once, however many requests meet it"
    assert cache.put(key, AccessState(kind=TokenKind.TRIGGER), cache.generation) is None


@pytest.mark.parametrize("swallowed", [False, True], ids=["as-timeout", "as-no-message"])
async def test_a_cancelled_follower_stops_even_when_redis_py_turns_the_cancellation_into_a_timeout(
    swallowed: bool,
) -> None:
    """redis-py may raise TimeoutError out of a read that a cancellation interrupted, or return
    no message; the follower must still end, or a stopping worker waits for it forever."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from gateway.cache import DecisionCache, follow_invalidations

    converted = []  # only the first cancellation is turned into a timeout (so a regression ends)

    class PubSub:
        confirmations = [{"type": "subscribe"}, {"type": "subscribe"}]

        async def subscribe(self, *channels: str) -> None:
            pass

        async def get_message(self, **_: Any) -> dict[str, str] | None:
            if self.confirmations:
                return self.confirmations.pop()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if converted:
                    raise
                converted.append(True)
                if swallowed:
                    return None
                raise RedisTimeoutError("Timeout reading from socket") from None
            return None

        async def aclose(self) -> None:
            pass

    class Client:
        async def ping(self) -> bool:
            return True

        def pubsub(self) -> PubSub:
            return PubSub()

    class FakeStore:
        client, events_channel = Client(), "{jobgate}:events"

        def ping_channel(self, holder: str) -> str:
            return "{jobgate}:ping:" + holder

        async def epoch(self) -> int:
            return 0

        async def self_ping(self, holder: str, nonce: str) -> None:
            pass

        async def drop_lease(self, holder: str) -> None:
            pass

    follower = asyncio.ensure_future(follow_invalidations(DecisionCache(ttl=5), FakeStore(), 30.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    follower.cancel()
    done, _ = await asyncio.wait({follower}, timeout=2)
    if not done:
        follower.cancel()
        await asyncio.wait({follower}, timeout=2)
    assert done and converted, "the follower went on after its cancellation"
    with pytest.raises(asyncio.CancelledError):
        follower.result()
