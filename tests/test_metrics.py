"""Finished requests are counted in batches straight into the metric value stores: the
exposition must be what the public API would give, and nothing may wait past a fold period."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from prometheus_client import generate_latest

from gateway.observe import PIPE_BUF, AccessLog, Metrics, RequestLog

AMOUNTS = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.5, 7.0, 10.0, 11.0, 1e9]


def finished(seconds: float, route: str = "packages_read", status: int = 200) -> RequestLog:
    entry = RequestLog("id", "GET", "/p", "127.0.0.1")
    entry.route, entry.status, entry.reason, entry.upstream = route, status, "same_project", "packages"
    entry.seconds, entry.upstream_seconds = seconds, seconds / 2
    entry.bytes_in, entry.bytes_out = int(seconds * 10), 1234
    return entry


def exposition(metrics: Metrics) -> bytes:
    lines = generate_latest(metrics.registry).splitlines()
    return b"\n".join(line for line in lines if b"_created" not in line)


def test_a_fold_exposes_exactly_what_the_public_api_would() -> None:
    folded, public = Metrics(), Metrics()
    for number, amount in enumerate(AMOUNTS):  # on bucket bounds, between them, past the last one
        route, status = ("packages_read", "git_read")[number % 2], (200, 404)[number % 3 // 2]
        entry = finished(amount, route=route, status=status)
        folded.started()
        folded.finish(entry)
        public.requests.labels(entry.route, "GET", str(entry.status)).inc()
        public.request_seconds.labels(entry.route).observe(entry.seconds)
        public.decisions.labels("allow", "same_project").inc()
        public.upstream_seconds.labels("packages").observe(entry.upstream_seconds)
        public.bytes.labels("packages", "up").inc(entry.bytes_in)
        public.bytes.labels("packages", "down").inc(entry.bytes_out)
    folded.cache_lookups["hit"] += 3
    public.cache.labels("hit").inc(3)
    assert exposition(folded) == exposition(public)


def test_one_finish_counts_a_whole_request() -> None:
    metrics = Metrics()
    metrics.started()
    metrics.finish(finished(0.003))
    sample = metrics.registry.get_sample_value
    assert sample("jobgate_requests_total", {"route": "packages_read", "method": "GET", "code": "200"}) == 1
    assert sample("jobgate_request_duration_seconds_count", {"route": "packages_read"}) == 1
    assert sample("jobgate_auth_decisions_total", {"result": "allow", "reason": "same_project"}) == 1
    assert sample("jobgate_proxied_bytes_total", {"upstream": "packages", "direction": "down"}) == 1234
    assert sample("jobgate_upstream_duration_seconds_bucket", {"upstream": "packages", "le": "0.005"}) == 1
    assert sample("jobgate_in_flight_requests") == 0
    entry = finished(0.001)
    entry.reason = "rate_limited"  # not a decision: not counted as one
    metrics.finish(entry)
    assert sample("jobgate_auth_decisions_total", {"result": "allow", "reason": "same_project"}) == 1
    assert sample("jobgate_requests_total", {"route": "packages_read", "method": "GET", "code": "200"}) == 2


async def test_finished_requests_are_counted_and_logged_within_the_fold_period() -> None:
    """Another process (the multiprocess parent) reads the stores; people read the log."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    metrics = Metrics()
    metrics.log = AccessLog(write)
    store = metrics.requests.labels("packages_read", "GET", "200")._value
    gauge = metrics.in_flight._value
    metrics.started()
    metrics.started()
    await asyncio.sleep(Metrics.FOLD_SECONDS * 2)
    assert gauge.get() == 2  # in flight, nothing finished yet: the gauge is still folded
    metrics.finish(finished(0.01))
    metrics.finish(finished(0.02))
    await asyncio.sleep(0)
    assert store.get() == 0  # queued: one store write per period, not per request
    assert not _drain(read)
    await asyncio.sleep(Metrics.FOLD_SECONDS * 2)  # a later timer than the fold's
    assert store.get() == 2 and gauge.get() == 0
    lines = [json.loads(line) for line in _drain(read).splitlines()]
    assert [line["duration_ms"] for line in lines] == [10.0, 20.0]
    metrics.finish(finished(0.01))
    assert (
        metrics.registry.get_sample_value(
            "jobgate_requests_total", {"route": "packages_read", "method": "GET", "code": "200"}
        )
        == 3
    )
    assert len(_drain(read).splitlines()) == 1  # a scrape logs what it counted
    os.close(read)
    os.close(write)


async def test_a_full_batch_is_folded_at_once() -> None:
    """A fold pauses the loop for every request it holds: under load it must not wait 0.1 s."""
    metrics = Metrics()
    store = metrics.requests.labels("packages_read", "GET", "200")._value
    for _ in range(Metrics.FOLD_BATCH):
        metrics.started()
    for _ in range(Metrics.FOLD_BATCH - 1):
        metrics.finish(finished(0.01))
    assert store.get() == 0
    metrics.finish(finished(0.01))
    assert store.get() == Metrics.FOLD_BATCH  # no await in between: folded by that finish
    metrics.started()  # and the timer still runs after a fold that cancelled it
    await asyncio.sleep(Metrics.FOLD_SECONDS * 2)
    assert metrics.in_flight._value.get() == 1


def test_made_up_methods_share_one_series_and_nothing_grows_with_them() -> None:
    metrics = Metrics()
    for number in range(12_000):  # past the raw-method memo's 10,000
        entry = finished(0.01)
        entry.method = f"M{number}"
        metrics.finish(entry)
    labels = {"route": "packages_read", "method": "OTHER", "code": "200"}
    assert metrics.registry.get_sample_value("jobgate_requests_total", labels) == 12_000
    # requests and their timing, the decision, the upstream's timing and bytes up and down
    assert len(metrics._series) == 6


def test_a_line_that_cannot_be_written_loses_no_counts(monkeypatch: Any, caplog: Any) -> None:
    metrics = Metrics()
    metrics.log = AccessLog(99)
    monkeypatch.setattr(RequestLog, "line", lambda self, offset=None: 1 / 0)
    metrics.finish(finished(0.01))
    labels = {"route": "packages_read", "method": "GET", "code": "200"}
    assert metrics.registry.get_sample_value("jobgate_requests_total", labels) == 1
    assert "access lines of 1 requests lost: ZeroDivisionError" in caplog.text


def _drain(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def test_access_lines_go_out_in_whole_lines_of_at_most_pipe_buf_bytes(monkeypatch: Any) -> None:
    """Workers share stderr: a write of at most PIPE_BUF bytes is never interleaved with another."""
    writes: list[bytes] = []
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(bytes(data)) or len(data))
    lines = [f"{n}:" + "x" * (n * 37 % 700) for n in range(200)] + ["long" * 2000, "é", "last"]
    AccessLog(99).write_lines(lines)
    assert b"".join(writes).decode() == "\n".join(lines) + "\n"
    for data in writes:
        assert data.endswith(b"\n")
        assert len(data) <= PIPE_BUF or data.count(b"\n") == 1  # only a line too long goes over, alone
    assert len(writes) < len(lines) / 5  # batched, not a write per line
