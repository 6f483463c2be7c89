"""Metrics, the JSON access log, token masking and the authentication-log recorder."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from json.encoder import encode_basestring_ascii
from typing import Any
from urllib.parse import unquote_plus

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .decision import ALLOWING, Decision, Reason
from .model import AccessState

#: Reasons counted as authorization decisions (a 429 or a 503 answers before any decision).
_DECISION_REASONS = frozenset(Reason) - {Reason.RATE_LIMITED, Reason.STORE_UNAVAILABLE}

MASK = "[MASKED]"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "LOCK", "UNLOCK"})
_SECRET_PARAMS = re.compile(r"(?i)((?:^|[?&;])(?:job_token|token|private_token|access_token)=)[^&#\s\"\\]*")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s\"\\]*@")
#: jobgate's own token shapes (`model.JOB_TOKEN_PREFIX`, `TRIGGER_TOKEN_PREFIX`): masked
#: wherever they appear, also where no credential place carried them (a path, a header).
_TOKEN_SHAPE = re.compile(r"gl(?:cbt|ptt)-[A-Za-z0-9_-]+")
#: A piece of a URL between delimiters: percent-decoded before it is compared with a token.
_URL_PIECE = re.compile(r"[^/?&;=#]+")
_SECRET_NAMES = frozenset({"job_token", "token", "private_token", "access_token"})

PIPE_BUF = 4096
_NO_DECISION = '"reason":null,"job_id":null,"source_project":null,"target_project":null'


class AccessLog:
    """Access lines to stderr, written in batches of whole lines.

    Finished requests reach it in batches (`Metrics.fold`, every FOLD_SECONDS at most, as
    Envoy flushes its access log every second): one `os.write` per PIPE_BUF bytes of whole
    lines instead of a logging record and a flush per request, and worker processes sharing
    stderr never interleave inside a line.
    """

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd

    def write_entries(self, entries: list[RequestLog]) -> None:
        """Write the access lines of these finished requests."""
        offset = time.time() - time.perf_counter()  # perf_counter instants to wall-clock times
        self.write_lines([entry.line(offset) for entry in entries])

    def write_lines(self, lines: list[str]) -> None:
        """Write lines now, in writes of at most PIPE_BUF bytes of whole lines (a longer
        line goes alone)."""
        data = ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")
        view, start, end = memoryview(data), 0, len(data)
        while start < end:
            stop = start + PIPE_BUF
            if stop >= end:
                stop = end
            else:  # just after the last newline that fits, or after a line longer than PIPE_BUF
                cut = data.rfind(b"\n", start, stop)
                stop = cut + 1 if cut >= start else data.index(b"\n", stop) + 1
            self._write(view[start:stop])
            start = stop

    def _write(self, data: memoryview) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:  # a closed stderr must not fail requests
            pass


access_log = AccessLog()

logger = logging.getLogger("jobgate")


def mask(text: str, *tokens: str | None) -> str:
    """`text` with every known token (also percent-encoded), every jobgate-shaped token, secret
    query value (also under an encoded name) and URL userinfo replaced by [MASKED]."""
    for token in tokens:
        if token:
            text = text.replace(token, MASK)
    if "%" in text or "+" in text:
        text = _mask_encoded(text, [t for t in tokens if t])
    if "gl" in text:
        text = _TOKEN_SHAPE.sub(MASK, text)
    lowered = text.lower()
    if "token=" in lowered:
        text = _SECRET_PARAMS.sub(lambda m: m.group(1) + MASK, text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return text


def maskable(text: str, token: str | None, tokens: tuple[str, ...] = ()) -> bool:
    """False when `mask(text, token, *tokens)` is `text` itself: no token in it as it stands,
    and none of what `mask` looks for besides (an encoding, a token's shape, a parameter, a
    userinfo). The access line asks this first (a property test holds it to `mask`)."""
    if "%" in text or "+" in text or "gl" in text or "=" in text or "@" in text:
        return True
    if token and token in text:
        return True
    return any(t and t in text for t in tokens)


def _mask_encoded(text: str, tokens: list[str]) -> str:
    """Pieces of a URL that decode to a token, or follow a secret name spelled encoded."""

    def piece(match: re.Match[str]) -> str:
        raw = match.group(0)
        if "%" not in raw and "+" not in raw:
            return raw
        decoded = unquote_plus(raw)
        if any(t in decoded for t in tokens) or _TOKEN_SHAPE.search(decoded):
            return MASK
        return raw

    text = _URL_PIECE.sub(piece, text)
    if "=" in text:  # `%6Aob_token=value`: a secret parameter under an encoded name
        text = re.sub(
            r"(^|[?&;])([^&;=#?/]*)=([^&;#]*)",
            lambda m: (
                m.group(0)
                if unquote_plus(m.group(2)).lower() not in _SECRET_NAMES
                else f"{m.group(1)}{m.group(2)}={MASK}"
            ),
            text,
        )
    return text


def method_label(method: str) -> str:
    """A bounded label for an HTTP method."""
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own."""

    #: How long a finished request may wait to be counted and logged: what another process
    #: (the `--workers` parent, which reads the workers' stores) can lag behind, and how late
    #: an access line may be written. A scrape of this registry is never stale.
    FOLD_SECONDS = 0.1
    #: A fold also starts once this many finished requests wait: it holds the event loop
    #: ~3 µs per request (its access line and its counts), so a bounded batch is a bounded
    #: pause (~0.2 ms) for the requests in flight.
    FOLD_BATCH = 64

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        r.register(_FoldFirst(self))  # a scrape (or get_sample_value) counts every finished request
        self.requests = Counter(
            "jobgate_requests_total",
            "Requests by route, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.decisions = Counter(
            "jobgate_auth_decisions_total",
            "Authorization decisions by result and reason.",
            ["result", "reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "jobgate_request_duration_seconds",
            "Time to answer a request (to the last byte).",
            ["route"],
            registry=r,
        )
        self.redis_seconds = Histogram(
            "jobgate_redis_duration_seconds",
            "Time of the Redis read behind one decision.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.upstream_seconds = Histogram(
            "jobgate_upstream_duration_seconds",
            "Time of the upstream exchange, to the last byte.",
            ["upstream"],
            registry=r,
        )
        self.in_flight = Gauge(
            "jobgate_in_flight_requests",
            "Requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.bytes = Counter(
            "jobgate_proxied_bytes_total",
            "Body bytes proxied, by upstream and direction.",
            ["upstream", "direction"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "jobgate_upstream_errors_total",
            "Upstream failures by upstream and kind.",
            ["upstream", "kind"],
            registry=r,
        )
        self.lease_lapses = Counter(
            "jobgate_cache_lease_lapses_total",
            "Times this process's decision-cache lease lapsed unanswered (its self-ping through its "
            "own subscription failed): revoking writes then waited out the lease, not an acknowledgement.",
            registry=r,
        )
        self.cache = Counter(
            "jobgate_cache_lookups_total",
            "Decision-input cache lookups: hit, miss or bypass.",
            ["result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "jobgate_rate_limited_total",
            "Requests answered 429: too many unknown tokens from one client.",
            registry=r,
        )
        self.reloads = Counter(
            "jobgate_config_reloads_total",
            "Config reloads (SIGHUP) by result: applied or rejected.",
            ["result"],
            registry=r,
        )
        self.redis_errors = Counter(
            "jobgate_redis_errors_total", "Redis reads that failed (answered 503).", registry=r
        )
        # A finished request is queued, not counted: every FOLD_SECONDS (and before every
        # scrape, and when the gateway stops) the queue is counted into the value stores in
        # one loop (one lock per touched series, not ~10 calls per request) and its access
        # lines are written in as few writes as whole lines allow.
        self.log: AccessLog | None = None  # the gateway's access log; None writes no lines
        self.active = 0  # requests in flight in this process
        self.cache_lookups = {"hit": 0, "miss": 0, "bypass": 0}  # since the last fold
        self._finished: list[RequestLog] = []
        self._timer: asyncio.TimerHandle | None = None  # the next fold, when one is due
        self._requests: dict[tuple[str, str, int], tuple[_Count, _Timing]] = {}
        self._labelled: dict[tuple[str, str, str], tuple[_Count, _Timing]] = {}
        self._decisions: dict[str, _Count] = {}
        self._upstreams: dict[str, tuple[_Timing, _Count, _Count]] = {}
        self._series: list[_Count | _Timing] = []  # every accumulator above, to flush

    def started(self) -> None:
        """A request began (the in-flight gauge)."""
        self.active += 1
        if self._timer is None:
            self._schedule()

    def finish(self, entry: RequestLog) -> None:
        """A request ended: it is counted and logged at the next fold (FOLD_SECONDS at most,
        sooner once FOLD_BATCH requests wait: a fold holds the loop ~3 µs per request)."""
        self.active -= 1
        self._finished.append(entry)
        if len(self._finished) >= self.FOLD_BATCH:
            self.fold()
        elif self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        try:
            self._timer = asyncio.get_running_loop().call_later(self.FOLD_SECONDS, self.fold)
        except RuntimeError:  # no loop (tools, tests): count and log now
            self.fold()

    def fold(self) -> None:
        """Count and log every finished request, and bring the in-flight gauge up to date."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries, self._finished = self._finished, []
        if entries and self.log is not None:
            try:
                self.log.write_entries(entries)
            except Exception as exc:  # the batch's counts still go in; no text, no token
                logger.error("access lines of %d requests lost: %s", len(entries), type(exc).__name__)
        for result, lookups in self.cache_lookups.items():
            if lookups:
                self.cache.labels(result).inc(lookups)
                self.cache_lookups[result] = 0
        requests, decisions, upstreams = self._requests, self._decisions, self._upstreams
        for entry in entries:  # plain arithmetic on accumulators; the stores are written below
            count, timing = (requests.get((entry.route, entry.method, entry.status))
                             or self._request_series(entry))  # fmt: skip
            count.amount += 1
            seconds = entry.seconds
            timing.total += seconds
            timing.counts[bisect_left(timing.bounds, seconds)] += 1
            reason = entry.reason
            if reason is not None and reason in _DECISION_REASONS:
                (decisions.get(reason) or self._decision_series(reason)).amount += 1
            if entry.upstream is not None:
                upstream = entry.upstream
                timing, sent, received = upstreams.get(upstream) or self._upstream_series(upstream)
                seconds = entry.upstream_seconds
                timing.total += seconds
                timing.counts[bisect_left(timing.bounds, seconds)] += 1
                sent.amount += entry.bytes_in
                received.amount += entry.bytes_out
        if entries:
            for series in self._series:
                series.flush()
        self.in_flight.set(self.active)

    def _request_series(self, entry: RequestLog) -> tuple[_Count, _Timing]:
        labels = (entry.route, method_label(entry.method), str(entry.status))
        series = self._labelled.get(labels)
        if series is None:  # one per label set: routes, ten methods, statuses
            count = self._count(self.requests.labels(*labels))
            series = self._labelled[labels] = count, self._timing(self.request_seconds.labels(entry.route))
        if len(self._requests) < 10_000:  # keyed by the raw method, which a client makes up
            self._requests[(entry.route, entry.method, entry.status)] = series
        return series

    def _decision_series(self, reason: str) -> _Count:
        allowed = "allow" if reason in ALLOWING else "deny"
        count = self._decisions[reason] = self._count(self.decisions.labels(allowed, reason))
        return count

    def _upstream_series(self, name: str) -> tuple[_Timing, _Count, _Count]:
        series = self._upstreams[name] = (  # one per configured upstream
            self._timing(self.upstream_seconds.labels(name)),
            self._count(self.bytes.labels(name, "up")),
            self._count(self.bytes.labels(name, "down")),
        )
        return series

    def _count(self, child: Any) -> _Count:
        count = _Count(child)
        self._series.append(count)
        return count

    def _timing(self, child: Any) -> _Timing:
        timing = _Timing(child)
        self._series.append(timing)
        return timing


class _Count:
    """What finished requests added to one counter child since the last fold."""

    __slots__ = ("amount", "store")

    def __init__(self, child: Any) -> None:
        self.store = child._value
        self.amount = 0

    def flush(self) -> None:
        if self.amount:
            self.store.inc(self.amount)
            self.amount = 0


class _Timing:
    """What finished requests added to one histogram child since the last fold.

    `Histogram.observe` checks its argument and adds to `_sum` and to the bucket of the
    first upper bound not below the amount, each under a lock; `flush` adds to the same
    value stores through their own `inc`, so single-process and multiprocess (mmap) modes
    both work. The metrics tests compare with the public API's exposition, so a change in
    the library shows there.
    """

    __slots__ = ("bounds", "buckets", "counts", "sum", "total")

    def __init__(self, child: Any) -> None:
        self.sum, self.buckets, self.bounds = child._sum, child._buckets, child._upper_bounds
        self.total = 0.0
        self.counts = [0] * len(self.buckets)

    def flush(self) -> None:
        if self.total or any(self.counts):
            self.sum.inc(self.total)
            for bucket, count in zip(self.buckets, self.counts, strict=True):
                if count:
                    bucket.inc(count)
            self.total, self.counts = 0.0, [0] * len(self.buckets)


class _FoldFirst:
    """Registered first in the metrics registry: a collection folds the finished requests, then reads."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        self.metrics.fold()
        return []


class RequestLog:
    """What one request did, filled in as it walks the chain and written as one JSON line.

    The fields not known at the start are class-level defaults: a request sets only what it
    learns, so creating one costs five attribute writes.
    """

    route: str = "unmatched"
    status: int = 0
    reason: str | None = None
    decision: str = _NO_DECISION  # the JSON of the decision's reason, job and projects
    upstream: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    token: str | None = None
    tokens: tuple[str, ...] = ()  # every value a credential place held (masked like the token)
    id_from_client: bool = False  # the request id came from X-Request-Id (masked like the path)
    upstream_seconds: float = 0.0
    seconds: float = 0.0  # from start to the last byte, set when the request ends

    def __init__(self, request_id: str, method: str, path: str, remote: str | None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.remote = remote
        self.started = time.perf_counter()

    def __repr__(self) -> str:
        return f"RequestLog(request_id={self.request_id!r}, route={self.route!r})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every token this request carried, longest first (a token inside another is masked last)."""
        found = (self.token, *self.tokens) if self.token else self.tokens
        return tuple(sorted(set(found), key=len, reverse=True))

    def record(self, decision: Decision, fields: str | None = None) -> None:
        """Note the decision: its reason (for metrics) and its access-log fields (`fields`
        when made already: see `cache.Outcome`)."""
        self.reason = decision.reason
        self.decision = decision_fields(decision.reason, decision.state) if fields is None else fields

    def line(self, clock_offset: float | None = None) -> str:
        """The access-log line (JSON), with the token masked wherever it might appear.

        Its time is when the request ended: `clock_offset` turns the perf_counter instants
        into wall-clock time (`time.time() - time.perf_counter()`, once per batch).

        Only the request id and the path come from the client, so only they are masked
        and escaped. The other strings are JSON-safe by construction: the method passed
        the HTTP parser's token grammar, the remote address is an IP, route and upstream
        names and reasons are the gateway's own, a made-up request id is hex. Built as one
        f-string because it runs on every request.
        """
        if clock_offset is None:
            clock_offset = time.time() - time.perf_counter()
        path, remote, upstream = self.path, self.remote, self.upstream
        remote = "null" if remote is None else _Q + remote + _Q
        upstream = "null" if upstream is None else _Q + upstream + _Q
        if maskable(path, self.token, self.tokens):
            path = encode_basestring_ascii(mask(path, *self.secrets))
        else:
            path = encode_basestring_ascii(path)
        request_id = (encode_basestring_ascii(mask(self.request_id, *self.secrets)) if self.id_from_client
                      else f'"{self.request_id}"')  # fmt: skip
        decision = self.decision
        if decision is _NO_DECISION and self.reason is not None:  # answered before a decision
            decision = decision_fields(self.reason, None)
        return (
            f'{{"time":{self.started + self.seconds + clock_offset:.3f},"request_id":{request_id},'
            f'"pid":{_PID[0]},"remote":{remote},"method":"{self.method}",'
            f'"path":{path},"route":"{self.route}","status":{self.status},'
            f'{decision},"upstream":{upstream},"bytes_in":{self.bytes_in},"bytes_out":{self.bytes_out},'
            f'"duration_ms":{self.seconds * 1000:.3f}}}'
        )


def decision_fields(reason: str, state: AccessState | None) -> str:
    """The access-log fields of a decision: reason, job and projects (JSON, no braces)."""
    job, source, target = (state.job, state.source, state.target) if state is not None else (None, None, None)
    return (f'"reason":"{reason}","job_id":{_json_int(job.id if job else None)},'
            f'"source_project":{_json_int(source.id if source else None)},'
            f'"target_project":{_json_int(target.id if target else None)}')  # fmt: skip


_Q = '"'
_PID = [os.getpid()]  # refreshed in forked workers
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
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


class AccessRecorder:
    """Writes the authentication log (cross-project accesses) off the request path.

    Each (target, source, route) is written at most once a minute per process, in a
    background task: the request never waits for it, and `write` (the store's, best
    effort) may fail without failing anything.
    """

    PERIOD = 60.0

    def __init__(self) -> None:
        self._recent: dict[tuple[int, int, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def note(
        self, decision: Decision, route: str, write: Callable[[int, int, str], Coroutine[Any, Any, None]]
    ) -> None:
        """Count an allowed cross-project access (at most once a minute per key, in the background)."""
        source, target = decision.source, decision.target
        if source is None or target is None or source.id == target.id:
            return
        key, now = (target.id, source.id, route), time.monotonic()
        if self._recent.get(key, 0.0) > now:
            return
        if len(self._recent) > 10_000:
            self._recent = {k: v for k, v in self._recent.items() if v > now}
        self._recent[key] = now + self.PERIOD
        task = asyncio.ensure_future(write(*key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
