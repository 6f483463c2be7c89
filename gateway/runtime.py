"""The config in force and the upstream clients built from it: one owner, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from .config import Config
from .proxy import client_session


@dataclass
class Runtime:
    """The config in force and the upstream clients built from it; SIGHUP swaps both."""

    config: Config
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def open_sessions(self, previous: Runtime | None = None) -> list[aiohttp.ClientSession]:
        """Build clients for every upstream, keeping unchanged ones; returns those retired."""
        kept = previous.sessions if previous else {}
        old = previous.config.upstreams if previous else {}
        for name, upstream in self.config.upstreams.items():
            same = name in kept and old.get(name) == upstream
            self.sessions[name] = kept[name] if same else client_session(upstream)
        return [s for name, s in kept.items() if self.sessions.get(name) is not s]

    def apply(self, config: Config) -> list[aiohttp.ClientSession]:
        """Put `config` in force with clients for its upstreams; returns the clients retired
        (the caller closes them once requests in flight on them are done)."""
        fresh = Runtime(config)
        retired = fresh.open_sessions(self)
        self.config, self.sessions = fresh.config, fresh.sessions
        return retired

    async def close(self) -> None:
        """Close every upstream client."""
        for session in self.sessions.values():
            await session.close()
