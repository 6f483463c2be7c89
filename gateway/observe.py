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
from json.encoder import encode_basestring_ascii
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        with contextlib.suppress(OSError):  # a closed stderr must not fail requests
            while data:
                data = data[os.write(self.fd, data) :]


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

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        # Label children resolved once: `labels()` costs more than the increment itself.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._cache_children = {result: self.cache.labels(result) for result in ("hit", "miss", "bypass")}
        self._decision_children: dict[tuple[bool, str], Any] = {}
        self._upstream_children: dict[str, tuple[Any, Any, Any]] = {}

    def count_cache(self, result: str) -> None:
        """Count one decision-cache lookup: hit, miss or bypass."""
        self._cache_children[result].inc()

    def count_decision(self, allowed: bool, reason: str) -> None:
        """Count one authorization decision (reasons are a closed set)."""
        child = self._decision_children.get((allowed, reason))
        if child is None:
            child = self.decisions.labels("allow" if allowed else "deny", reason)
            self._decision_children[(allowed, reason)] = child
        child.inc()

    def count_upstream(self, upstream: str, seconds: float, sent: int, received: int) -> None:
        """Count one upstream exchange: its duration and the body bytes each way."""
        children = self._upstream_children.get(upstream)
        if children is None:
            children = (self.upstream_seconds.labels(upstream), self.bytes.labels(upstream, "up"),
                        self.bytes.labels(upstream, "down"))  # fmt: skip
            if len(self._upstream_children) < 1_000:
                self._upstream_children[upstream] = children
        children[0].observe(seconds)
        if sent:
            children[1].inc(sent)
        if received:
            children[2].inc(received)

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (label children resolved once)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            method = method_label(method)
            children = (self.requests.labels(route, method, str(status)), self.request_seconds.labels(route))
            if len(self._request_children) < 10_000:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


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

        Only the request id and the path come from the client, so only they are masked;
        built as one f-string because it runs on every request.
        """
        token = self.token
        return (
            f'{{"time":{time.time():.3f},"request_id":{_json_str(mask(self.request_id, token))},'
            f'"pid":{_PID[0]},"remote":{_json_str(self.remote)},"method":{_json_str(self.method)},'
            f'"path":{_json_str(mask(self.path, token))},"route":{_json_str(self.route)},'
            f'"status":{self.status},"reason":{_json_str(self.reason)},"job_id":{_json_int(self.job_id)},'
            f'"source_project":{_json_int(self.source_project)},'
            f'"target_project":{_json_int(self.target_project)},"upstream":{_json_str(self.upstream)},'
            f'"bytes_in":{self.bytes_in},"bytes_out":{self.bytes_out},'
            f'"duration_ms":{(time.perf_counter() - self.started) * 1000:.3f}}}'
        )


_PID = [os.getpid()]  # refreshed in forked workers
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


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
