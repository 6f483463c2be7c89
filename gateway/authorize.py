"""The one decision path: a warm cache entry answers without Redis, else one Redis read.

The pipeline asks `warm` first, a plain call with no coroutine (most requests of a CI job
end there), and awaits `read` only on a miss; the registry's token endpoint asks the same
two. The brute-force limiter sits here too: it counts unknown tokens, which only this
path sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .cache import DecisionCache, Outcome
from .config import ScopeConfig
from .decision import Decision, Reason
from .model import TargetRef
from .observe import Metrics
from .routes import Action
from .store import Store

NO_CREDENTIAL = Outcome.of(Decision(Reason.NO_CREDENTIAL))
INVALID_REGISTRY_TOKEN = Outcome.of(Decision(Reason.INVALID_REGISTRY_TOKEN))


class Authorizer:
    """Decides for a token's credential key: from the cache when warm, else from Redis.

    Redis failing raises `StoreUnavailable` from `read`: callers answer 503 (fail closed).
    `clock` is the wall clock decisions are made at (job expiry); tests move it.
    """

    def __init__(
        self, cache: DecisionCache, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.store: Store | None = None  # set when the app starts (its Redis client)

    def warm(
        self, action: Action | None, target: TargetRef, locator: str, scope: ScopeConfig, grants: bool = True
    ) -> Outcome | None:
        """The outcome a warm cache gives for `locator` (a `credential_key`), or None."""
        return self.cache.outcome((locator, target), action, grants, self.clock(), scope)

    async def read(
        self, action: Action | None, target: TargetRef, locator: str, scope: ScopeConfig, grants: bool = True
    ) -> Outcome:
        """Read the state `locator` names in one round trip, cache it, decide (a cache miss)."""
        assert self.store is not None, "the app has not started"
        cache, generation = self.cache, self.cache.generation
        started = time.perf_counter()
        state = await self.store.read_access_key(locator, target)
        self.metrics.redis_seconds.observe(time.perf_counter() - started)
        return cache.remember((locator, target), state, generation, action, grants, self.clock(), scope)


class FailureLimiter:
    """Brute-force brake: unknown-token attempts per client IP, counted in Redis.

    Counting happens only on the deny path (one INCR), so allowed requests pay nothing;
    the count is shared by every replica, and a client over the limit is answered 429
    locally until the window ends.
    """

    WINDOW = 60

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._blocked: dict[str, float] = {}

    def blocked_for(self, client: str) -> int:
        """Seconds this client stays blocked (0: not blocked)."""
        until = self._blocked.get(client)
        if until is None:
            return 0
        left = until - self.clock()
        if left <= 0:
            del self._blocked[client]
            return 0
        return int(left) + 1

    async def fail(self, store: Store, client: str, limit: int) -> int:
        """Count a failure; seconds to block when the client went over `limit`, else 0."""
        count = await store.count_failure(client, self.WINDOW)
        if count <= limit:
            return 0
        if len(self._blocked) > 100_000:
            self._blocked.clear()
        self._blocked[client] = self.clock() + self.WINDOW
        return self.WINDOW
