"""A per-process cache of decision inputs, invalidated through Redis pub/sub.

A warm hit costs no Redis round trip. Correctness does not rest on the TTL: every
control-plane write that can change a decision announces itself on the `events` channel
and waits until each lease holder has dropped the entries it touches and acknowledged, or
its lease has lapsed (`Store.announce`).

A process uses its cache only while its invalidation channel is known healthy: it pings
itself through its own subscription every third of `redis.timeout`, and each ping that
comes back renews its lease (expiry `redis.timeout`, counted from when the ping was sent).
Past the lease without an answer the cache allows nothing: it is flushed and every
request is a 503 (`StoreUnavailable`), like any Redis failure, until the channel is back —
not a bypass to a Redis read that would hang as well. When the subscription is lost with a
connection error instead, the cache is flushed and bypassed (each request reads Redis) until
it is back. A read that raced an invalidation is not cached (generation check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import ScopeConfig
from .decision import Decision, decide
from .identity import identity_headers
from .model import AccessState, TargetRef, TokenKind
from .observe import decision_fields
from .routes import Action
from .store import Store, StoreUnavailable

log = logging.getLogger("jobgate.cache")
#: The token's credential key and the target: what one Redis read is about.
CacheKey = tuple[str, TargetRef]
#: What a decision is made for on one state: the action, and whether a registry token
#: the request came with grants it (see `decide`).
OutcomeKey = tuple[Action | None, bool]
_NO_IDENTITY: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision and what the requests it answers derive from it, made once per cache entry
    and action: a warm cache hands one Outcome to every request of its token, target and
    action."""

    decision: Decision
    log_fields: str  # the access-log fields of the decision (see `observe.decision_fields`)
    identity: Mapping[str, str]  # the identity headers of an allowed decision
    identity_with_source: Mapping[str, str]  # the same, with the trigger's pipeline source

    @classmethod
    def of(cls, decision: Decision) -> Outcome:
        """Everything requests derive from `decision`."""
        fields = decision_fields(decision.reason, decision.state)
        if not decision.allowed or decision.source is None:
            return cls(decision, fields, _NO_IDENTITY, _NO_IDENTITY)
        return cls(decision, fields, identity_headers(decision, False), identity_headers(decision, True))


class CacheEntry:
    """One cached state, and the outcomes already made from it (by action).

    A decision depends on the clock only through the job's expiry, so a remembered one
    holds while `time < valid_until`; dropping the entry (TTL, invalidation) drops them.
    """

    __slots__ = ("expires", "outcomes", "state", "tags", "valid_until")

    def __init__(self, state: AccessState, expires: float, tags: tuple[str, ...]) -> None:
        self.state = state
        self.expires = expires
        self.tags = tags
        self.outcomes: dict[OutcomeKey, Outcome] = {}
        self.valid_until = state.job.expires_at if state.job is not None else float("inf")


class DecisionCache:
    """AccessState by (credential key, target), tagged by job, projects and token for invalidation.

    `clock` measures the TTL (monotonic seconds); the wall-clock `now` a decision is made at
    comes from the caller. `lookups` counts hits, misses and bypasses for the metrics.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        lookups: dict[str, int] | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.lookups = lookups if lookups is not None else {"hit": 0, "miss": 0, "bypass": 0}
        self.available = False  # only while the invalidation subscription is up and caught up
        self.lease_until = 0.0  # on `clock`: the cache answers only before this
        self.on_lapse: Callable[[], None] | None = None  # told when a lease lapses (a metric)
        self.stalled = False  # the channel stopped answering: every request is a 503
        self.generation = 0
        self._entries: dict[CacheKey, CacheEntry] = {}  # insertion order: oldest first
        self._tags: dict[str, set[CacheKey]] = {}

    @property
    def enabled(self) -> bool:
        """True when configured (ttl > 0)."""
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: CacheKey) -> CacheEntry | None:
        """The live cache entry, or None (miss, expired, or cache bypassed).

        Raises StoreUnavailable while the invalidation channel is stalled (its lease lapsed).
        """
        if not self.available:
            if self.stalled:
                raise StoreUnavailable("invalidation channel stalled")
            return None
        now = self.clock()
        if now >= self.lease_until:
            self.lapse()
            raise StoreUnavailable("invalidation channel stalled")
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < now:
            self._drop(key)
            return None
        return entry

    def lapse(self) -> None:
        """The lease ran out unanswered: allow nothing, remember nothing, until the channel is back."""
        if not self.stalled and self.on_lapse is not None:  # counted once per stall
            self.on_lapse()
        self.available = False
        self.stalled = True
        self.flush()

    def outcome(
        self, key: CacheKey, action: Action | None, grants: bool, now: float, scope: ScopeConfig
    ) -> Outcome | None:
        """The outcome a warm entry gives without Redis (made once per action), or None."""
        entry = self.entry(key)
        if entry is None:
            return None
        self.lookups["hit"] += 1
        outcome = entry.outcomes.get((action, grants))
        if outcome is None or now >= entry.valid_until:
            decision = decide(action, entry.state, now, scope, token_grants=grants)
            outcome = entry.outcomes[(action, grants)] = Outcome.of(decision)
        return outcome

    def remember(
        self,
        key: CacheKey,
        state: AccessState,
        generation: int,
        action: Action | None,
        grants: bool,
        now: float,
        scope: ScopeConfig,
    ) -> Outcome:
        """A cache miss: decide on a state read at `generation`, and keep both unless an
        invalidation happened meanwhile."""
        entry = self.put(key, state, generation)
        self.lookups["miss" if self.available else "bypass"] += 1
        outcome = Outcome.of(decide(action, state, now, scope, token_grants=grants))
        if entry is not None:
            entry.outcomes[(action, grants)] = outcome
        return outcome

    def put(self, key: CacheKey, state: AccessState, generation: int) -> CacheEntry | None:
        """Keep a state read at `generation`, unless an invalidation happened meanwhile."""
        if (
            not self.available
            or generation != self.generation
            or state.kind is TokenKind.UNKNOWN
            or self.clock() >= self.lease_until
        ):
            return None
        if key[1].job_id is not None and state.target is None:
            return None  # a job not recorded yet: starting one announces nothing to wait for
        tags = [f"tok:{key[0][2:]}"] if key[0].startswith("t:") else []
        if state.job is not None:
            tags.append(f"job:{state.job.id}")
        if state.source is not None:
            tags.append(f"prj:{state.source.id}")
        tags.append(f"prj:{state.target.id}" if state.target is not None else "prj:*")
        # a project registered later at one of the candidate paths wins the resolution
        tags.extend(f"path:{path.lower()}" for path in key[1].paths)
        if key in self._entries:
            self._drop(key)
        while len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
        entry = self._entries[key] = CacheEntry(state, self.clock() + self.ttl, tuple(tags))
        for tag in tags:
            self._tags.setdefault(tag, set()).add(key)
        return entry

    def invalidate(self, event: str) -> None:
        """Drop every entry an event touches (`job:<id>`, `prj:<id>`, `tok:<digest>`,
        `path:<lower-cased path>`, several joined by commas)."""
        self.generation += 1
        keys: set[CacheKey] = set()
        for one in event.split(","):
            keys |= self._tags.get(one, set())
            if one.startswith("prj:"):  # a project change may also resolve a path that found none
                keys |= self._tags.get("prj:*", set())
        for key in keys:
            self._drop(key)

    def flush(self) -> None:
        """Drop everything."""
        self.generation += 1
        self._entries.clear()
        self._tags.clear()

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tags[tag]


async def follow_invalidations(cache: DecisionCache, store: Store, lease: float) -> None:
    """Keep the cache subscribed to the events channel and its lease renewed; acknowledge each
    event after applying it (see the module docstring)."""
    holder = secrets.token_hex(8)  # this process's lease
    backoff = 0.1
    try:
        while True:
            stalled = False
            try:
                await _follow(cache, store, holder, lease)
            except (RedisError, OSError, StoreUnavailable) as exc:
                _stop_if_cancelled()
                stalled = isinstance(exc, TimeoutError | RedisTimeoutError) or (
                    isinstance(exc, StoreUnavailable) and "Timeout" in str(exc)
                )
                log.warning("decision cache off until Redis is back (%s)", type(exc).__name__)
            finally:
                cache.available = False
                cache.flush()
            cache.stalled = cache.stalled or stalled
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.drop_lease(holder), lease)


async def _follow(cache: DecisionCache, store: Store, holder: str, lease: float) -> None:
    """One subscription's life: ping, renew, apply events; returns only by raising."""
    ping_channel = store.ping_channel(holder)
    pubsub = store.client.pubsub()
    try:
        await store.client.ping()  # a cluster client learns its slots on first use
        await pubsub.subscribe(store.events_channel, ping_channel)
        confirmed, deadline = 0, time.monotonic() + lease
        while confirmed < 2:  # events from here on reach us: then read where the epoch stands
            _stop_if_cancelled()
            message = await pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.01))
            if message is None and time.monotonic() > deadline:
                raise RedisTimeoutError("subscribe unconfirmed")
            confirmed += message is not None and message.get("type") == "subscribe"
        cache.flush()  # events before the subscription are lost to us: start empty
        seen = await store.epoch()
        needed: int | None = None
        ping: tuple[str, float] | None = None  # the nonce in flight and when it was sent
        next_ping = 0.0
        log.info("decision cache following %s (lease %.1f s)", store.events_channel, lease)
        while True:
            _stop_if_cancelled()
            now = cache.clock()
            if ping is not None and now >= ping[1] + lease:
                cache.lapse()
                raise RedisTimeoutError("self-ping unanswered for a whole lease")
            if ping is None and now >= next_ping:
                ping = (secrets.token_hex(8), now)
                next_ping = now + lease / 3
                await store.self_ping(holder, ping[0])
            wait = (ping[1] + lease if ping is not None else next_ping) - cache.clock()
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=max(wait, 0.01))
            if message is None or message.get("type") != "message":
                continue
            channel, data = _text(message["channel"]), _text(message["data"])
            if channel == ping_channel:
                if ping is None or data != ping[0]:
                    continue
                needed = await store.renew_lease(holder, lease)
                cache.lease_until = ping[1] + lease  # the lease in Redis ends later than this
                cache.stalled = False
                ping = None
            else:
                event, _, rest = data.partition(" ")
                nonce, _, epoch = rest.partition(" ")
                cache.invalidate(event)
                if epoch.isdigit():
                    seen = max(seen, int(epoch))
                if nonce:
                    await store.acknowledge(nonce, holder)
            # caught up with every event announced before the last renewal: the cache may answer
            cache.available = needed is not None and seen >= needed
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _stop_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop.

    redis-py can turn a cancellation that lands in a read with a timeout into a TimeoutError,
    or swallow it and return no message: stopping must still stop (a worker would never exit).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
