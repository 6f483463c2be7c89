"""Metrics, the JSON access log and token masking."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from bisect import bisect_left
from json.encoder import encode_basestring_ascii
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .decision import ALLOWING, Reason

_DECISION_REASONS = frozenset(Reason)

MASK = "[MASKED]"
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "LOCK", "UNLOCK"}
)
_SECRET_PARAMS = re.compile(
    r"(?i)((?:^|[?&;])(?:job_token|token|private_token|access_token)=)[^&#\s\"\\]*"
)
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s\"\\]*@")

PIPE_BUF = 4096


class AccessLog:
    """Access lines to stderr, batched per event-loop turn, written in whole lines.

    One `os.write` per turn instead of a logging record and a flush per request; each
    write is at most PIPE_BUF bytes of whole lines, so worker processes sharing stderr
    never interleave inside a line.
    """

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._lines: list[str] = []

    def write(self, line: str) -> None:
        """Queue one line; it is written at the end of this event-loop turn."""
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self._lines.append(line)
                self.flush()
                return
        self._lines.append(line)

    def flush(self) -> None:
        """Write every queued line now."""
        lines, self._lines = self._lines, []
        data = "\n".join(lines).encode("utf-8", "backslashreplace") + b"\n"
        if len(data) <= PIPE_BUF:  # the usual case: one write
            self._write(data)
            return
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "backslashreplace") + b"\n"
            if size + len(data) > PIPE_BUF and chunk:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # a closed stderr must not fail requests
            pass


access_log = AccessLog()

logger = logging.getLogger("jobgate")


def mask(text: str, *tokens: str | None) -> str:
    """`text` with every known token, secret query value and URL userinfo replaced by [MASKED]."""
    for token in tokens:
        if token:
            text = text.replace(token, MASK)
    lowered = text.lower()
    if "token=" in lowered:
        text = _SECRET_PARAMS.sub(lambda m: m.group(1) + MASK, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return text


def method_label(method: str) -> str:
    """A bounded label for an HTTP method."""
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    #: How stale a value store may be: what another process (the `--workers` parent, which
    #: reads the workers' stores) can lag behind. A scrape of this registry is never stale.
    FOLD_SECONDS = 0.1

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._dirty: list[_Tally] = []  # tallies with an amount not yet in their store
        r.register(_FoldFirst(self))  # a scrape (or get_sample_value) sees every amount
        self.requests = Counter(
            "jobgate_requests_total", "Requests by route, method and status code.",
            ["route", "method", "code"], registry=r,
        )
        self.decisions = Counter(
            "jobgate_auth_decisions_total", "Authorization decisions by result and reason.",
            ["result", "reason"], registry=r,
        )
        self.request_seconds = Histogram(
            "jobgate_request_duration_seconds", "Time to answer a request (to the last byte).",
            ["route"], registry=r,
        )
        self.redis_seconds = Histogram(
            "jobgate_redis_duration_seconds", "Time of the Redis read behind one decision.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.upstream_seconds = Histogram(
            "jobgate_upstream_duration_seconds", "Time of the upstream exchange, to the last byte.",
            ["upstream"], registry=r,
        )
        self.in_flight = Gauge(
            "jobgate_in_flight_requests", "Requests being served.", registry=r,
            multiprocess_mode="livesum",
        )
        self.bytes = Counter(
            "jobgate_proxied_bytes_total", "Body bytes proxied, by upstream and direction.",
            ["upstream", "direction"], registry=r,
        )
        self.upstream_errors = Counter(
            "jobgate_upstream_errors_total", "Upstream failures by upstream and kind.",
            ["upstream", "kind"], registry=r,
        )
        self.cache = Counter(
            "jobgate_cache_lookups_total", "Decision-input cache lookups: hit, miss or bypass.",
            ["result"], registry=r,
        )
        self.rate_limited = Counter(
            "jobgate_rate_limited_total", "Requests answered 429: too many unknown tokens from one client.",
            registry=r,
        )
        self.reloads = Counter(
            "jobgate_config_reloads_total", "Config reloads (SIGHUP) by result: applied or rejected.",
            ["result"], registry=r,
        )
        self.redis_errors = Counter(
            "jobgate_redis_errors_total", "Redis reads that failed (answered 503).", registry=r
        )
        # The per-request series, resolved once per label set. A request adds plain numbers
        # to their tallies; the tallies reach the value stores (one lock each) at most
        # FOLD_SECONDS later, however many requests ended meanwhile, and before every scrape.
        self._in_flight = self._counter(self.in_flight)
        self._requests: dict[tuple[str, str, int], tuple[_Tally, _Histogram]] = {}
        self._cache = {r: self._counter(self.cache.labels(r)) for r in ("hit", "miss", "bypass")}
        self._decisions: dict[str, _Tally] = {}
        self._upstreams: dict[str, tuple[_Histogram, _Tally, _Tally]] = {}

    def _counter(self, child: Any) -> _Tally:
        return _Tally(child._value, self)

    def _histogram(self, child: Any) -> _Histogram:
        return _Histogram(child, self)

    def fold(self) -> None:
        """Move every tallied amount into its value store (FOLD_SECONDS after the first one,
        before every scrape of this registry, and when the gateway stops)."""
        dirty, self._dirty = self._dirty, []
        for tally in dirty:
            if tally.amount:
                tally.store.inc(tally.amount)
                tally.amount = 0.0

    def _dirtied(self, tally: _Tally) -> None:
        if not self._dirty:
            with contextlib.suppress(RuntimeError):  # no loop (tools, tests): the next scrape folds
                asyncio.get_running_loop().call_later(self.FOLD_SECONDS, self.fold)
        self._dirty.append(tally)

    def count_cache(self, result: str) -> None:
        """Count one decision-cache lookup: hit, miss or bypass."""
        self._cache[result].add(1)

    def started(self) -> None:
        """A request began (the in-flight gauge)."""
        self._in_flight.add(1)

    def account(self, entry: RequestLog, seconds: float) -> None:
        """Count one finished request from its log entry: status, duration, cache lookup,
        decision, upstream exchange. One call per request; every label set is closed."""
        self._in_flight.add(-1)
        key = (entry.route, entry.method, entry.status)
        request = self._requests.get(key)
        if request is None:
            request = (self._counter(self.requests.labels(entry.route, method_label(entry.method),
                                                          str(entry.status))),
                       self._histogram(self.request_seconds.labels(entry.route)))  # fmt: skip
            if len(self._requests) < 10_000:
                self._requests[key] = request
        request[0].add(1)
        request[1].observe(seconds)
        reason = entry.reason
        if reason is not None and reason in _DECISION_REASONS:
            decision = self._decisions.get(reason)
            if decision is None:
                allowed = "allow" if reason in ALLOWING else "deny"
                decision = self._decisions[reason] = self._counter(self.decisions.labels(allowed, reason))
            decision.add(1)
        if entry.upstream is not None:
            upstream = self._upstreams.get(entry.upstream)
            if upstream is None:
                upstream = (self._histogram(self.upstream_seconds.labels(entry.upstream)),
                            self._counter(self.bytes.labels(entry.upstream, "up")),
                            self._counter(self.bytes.labels(entry.upstream, "down")))  # fmt: skip
                if len(self._upstreams) < 1_000:
                    self._upstreams[entry.upstream] = upstream
            upstream[0].observe(entry.upstream_seconds)
            if entry.bytes_in:
                upstream[1].add(entry.bytes_in)
            if entry.bytes_out:
                upstream[2].add(entry.bytes_out)


class _Tally:
    """An amount not yet in the value store behind one prometheus-client child.

    `Counter.inc`, `Gauge.inc` and `Histogram.observe` check their arguments and then add
    to value stores (`_value`, or `_sum` and `_buckets` by upper bound) under a lock; a
    request adds to a tally instead, and `Metrics.fold` adds each tally to its store
    through the store's own `inc`, so single-process and multiprocess (mmap) modes both
    still work. The metrics tests scrape the real exposition, so a change in the library
    shows there.
    """

    __slots__ = ("amount", "metrics", "store")

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.amount = 0.0

    def add(self, amount: float) -> None:
        if not self.amount:
            self.metrics._dirtied(self)
        self.amount += amount


class _Histogram:
    """A histogram child as tallies: its sum and one per bucket (by upper bound)."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child: Any, metrics: Metrics) -> None:
        self.sum = _Tally(child._sum, metrics)
        self.buckets = [_Tally(bucket, metrics) for bucket in child._buckets]
        self.bounds = child._upper_bounds

    def observe(self, amount: float) -> None:
        self.sum.add(amount)
        self.buckets[bisect_left(self.bounds, amount)].add(1)


class _FoldFirst:
    """Registered first in the metrics registry: a collection folds the tallies, then reads."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        self.metrics.fold()
        return []


class RequestLog:
    """What one request did, filled in as it walks the chain and written as one JSON line.

    The fields not known at the start are class-level defaults: a request sets only what it
    learns, so creating one costs four attribute writes.
    """

    route: str = "unmatched"
    status: int = 0
    reason: str | None = None
    job_id: int | None = None
    source_project: int | None = None
    target_project: int | None = None
    upstream: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    token: str | None = None
    id_from_client: bool = False  # the request id came from X-Request-Id (masked like the path)
    upstream_seconds: float = 0.0

    def __init__(self, request_id: str, method: str, path: str, remote: str | None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.remote = remote
        self.started = time.perf_counter()

    def __repr__(self) -> str:
        return f"RequestLog(request_id={self.request_id!r}, route={self.route!r})"

    def line(self) -> str:
        """The access-log line (JSON), with the token masked wherever it might appear.

        Only the request id and the path come from the client, so only they are masked
        and escaped. The other strings are JSON-safe by construction: the method passed
        the HTTP parser's token grammar, the remote address is an IP, route and upstream
        names and reasons are the gateway's own, a made-up request id is hex. Built as one
        f-string because it runs on every request.
        """
        token, path = self.token, self.path
        if (token and token in path) or "=" in path or "@" in path:  # what `mask` looks for
            path = mask(path, token)
        request_id = (encode_basestring_ascii(mask(self.request_id, token)) if self.id_from_client
                      else f'"{self.request_id}"')  # fmt: skip
        return (
            f'{{"time":{time.time():.3f},"request_id":{request_id},'
            f'"pid":{_PID[0]},"remote":{_json_safe(self.remote)},"method":"{self.method}",'
            f'"path":{encode_basestring_ascii(path)},"route":"{self.route}",'
            f'"status":{self.status},"reason":{_json_safe(self.reason)},"job_id":{_json_int(self.job_id)},'
            f'"source_project":{_json_int(self.source_project)},'
            f'"target_project":{_json_int(self.target_project)},"upstream":{_json_safe(self.upstream)},'
            f'"bytes_in":{self.bytes_in},"bytes_out":{self.bytes_out},'
            f'"duration_ms":{(time.perf_counter() - self.started) * 1000:.3f}}}'
        )


_PID = [os.getpid()]  # refreshed in forked workers
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _json_safe(value: str | None) -> str:
    """A string that needs no escaping (see `RequestLog.line`), or null."""
    return "null" if value is None else f'"{value}"'


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"time": round(record.created, 3), "level": record.levelname.lower(),
                   "logger": record.name, "message": mask(record.getMessage())}
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = record.exc_info[0].__name__
        return json.dumps(payload, separators=(",", ":"))


def setup_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr; exception texts and tracebacks are reduced to their type."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
