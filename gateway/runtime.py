"""The config in force and the upstream pools built from it: one owner, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config
from .upstream import Pool


@dataclass
class Runtime:
    """The config in force and the upstream pools built from it; SIGHUP swaps both."""

    config: Config
    pools: dict[str, Pool] = field(default_factory=dict)

    def open_pools(self, previous: Runtime | None = None) -> list[Pool]:
        """Build a pool for every upstream, keeping unchanged ones; returns those retired."""
        kept = previous.pools if previous else {}
        old = previous.config.upstreams if previous else {}
        for name, upstream in self.config.upstreams.items():
            same = name in kept and old.get(name) == upstream
            self.pools[name] = kept[name] if same else Pool(upstream)
        return [p for name, p in kept.items() if self.pools.get(name) is not p]

    def apply(self, config: Config) -> list[Pool]:
        """Put `config` in force with pools for its upstreams; returns the pools retired
        (the caller closes them once requests in flight on them are done)."""
        fresh = Runtime(config)
        retired = fresh.open_pools(self)
        self.config, self.pools = fresh.config, fresh.pools
        return retired

    async def close(self) -> None:
        """Close every upstream pool."""
        for pool in self.pools.values():
            await pool.close()
