"""A per-process cache of decision inputs, invalidated through Redis pub/sub.

A warm hit costs no Redis round trip. Correctness does not rest on the TTL: every
control-plane write that can change a decision announces itself on the `events` channel
and waits until each subscribed gateway has dropped the entries it touches and
acknowledged (`Store.announce`). A gateway only uses its cache while its subscription is
up; when it drops, the cache is flushed and bypassed until it is back. A read that raced
an invalidation is not cached (generation check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from .store import AccessState, Store, StoreUnavailable, TargetRef, TokenKind

log = logging.getLogger("jobgate.cache")
#: The token's credential key and the target: what one Redis read is about.
CacheKey = tuple[str, TargetRef]


class CacheEntry:
    """One cached state, and the decisions already made from it (by action).

    A decision depends on the clock only through the job's expiry, so a remembered one
    holds while `time < valid_until`; dropping the entry (TTL, invalidation) drops them.
    """

    __slots__ = ("decisions", "expires", "state", "tags", "valid_until")

    def __init__(self, state: AccessState, expires: float, tags: tuple[str, ...]) -> None:
        self.state = state
        self.expires = expires
        self.tags = tags
        self.decisions: dict[Any, Any] = {}
        self.valid_until = state.job.expires_at if state.job is not None else float("inf")


class DecisionCache:
    """AccessState by (credential key, target), tagged by job, projects and token for invalidation."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.available = False  # only while the invalidation subscription is up
        self.generation = 0
        self._entries: dict[CacheKey, CacheEntry] = {}  # insertion order: oldest first
        self._tags: dict[str, set[CacheKey]] = {}

    @property
    def enabled(self) -> bool:
        """True when configured (ttl > 0)."""
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> AccessState | None:
        """The cached state, or None (miss, expired, or cache not usable)."""
        entry = self.entry(key)
        return entry.state if entry is not None else None

    def entry(self, key: CacheKey) -> CacheEntry | None:
        """The cache entry, or None (miss, expired, or cache not usable)."""
        if not self.available:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            self._drop(key)
            return None
        return entry

    def put(self, key: CacheKey, state: AccessState, generation: int) -> CacheEntry | None:
        """Remember a state read at `generation`, unless an invalidation happened meanwhile."""
        if not self.available or generation != self.generation or state.kind is TokenKind.UNKNOWN:
            return None
        tags = [f"tok:{key[0][2:]}"] if key[0].startswith("t:") else []
        if state.job is not None:
            tags.append(f"job:{state.job.id}")
        if state.source is not None:
            tags.append(f"prj:{state.source.id}")
        tags.append(f"prj:{state.target.id}" if state.target is not None else "prj:*")
        if key in self._entries:
            self._drop(key)
        while len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))
        entry = self._entries[key] = CacheEntry(state, time.monotonic() + self.ttl, tuple(tags))
        for tag in tags:
            self._tags.setdefault(tag, set()).add(key)
        return entry

    def invalidate(self, event: str) -> None:
        """Drop every entry an event touches (`job:<id>`, `prj:<id>`, `tok:<digest>`)."""
        self.generation += 1
        keys = set(self._tags.get(event, ()))
        if event.startswith("prj:"):  # a project change may also resolve a path that found none
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


async def follow_invalidations(cache: DecisionCache, store: Store) -> None:
    """Keep the cache subscribed to the events channel; acknowledge each event after applying it."""
    backoff = 0.1
    while True:
        pubsub = store.client.pubsub()
        try:
            await store.client.ping()  # a cluster client learns its slots on first use
            await pubsub.subscribe(store.events_channel)
            cache.flush()
            cache.available = True
            backoff = 0.1
            log.info("decision cache on: following %s", store.events_channel)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                event, _, nonce = (data.decode() if isinstance(data, bytes) else str(data)).partition(" ")
                cache.invalidate(event)
                if nonce:
                    await store.acknowledge(nonce)
        except (RedisError, OSError, StoreUnavailable) as exc:
            log.warning("decision cache off until Redis is back (%s)", type(exc).__name__)
        finally:
            cache.available = False
            cache.flush()
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)
