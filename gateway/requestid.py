"""Request ids unique across workers and replicas: a per-process random prefix and a counter.

The prefix is drawn again in every forked child (`os.register_at_fork`), so the workers
of one `jobgate serve` never share it; 48 random bits make two processes anywhere in a
fleet drawing the same one negligible. The counter keeps a fresh id free of syscalls.
"""

from __future__ import annotations

import itertools
import os
import secrets

_prefix = ""
_counter = itertools.count(1)


def _draw() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(6) + "-"
    _counter = itertools.count(1)


_draw()
os.register_at_fork(after_in_child=_draw)


def next_request_id() -> str:
    """A request id no other request of any jobgate process is given."""
    return f"{_prefix}{next(_counter):x}"
