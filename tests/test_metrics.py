"""The hot path tallies into metric value stores itself: it must expose what the public API would."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Histogram, generate_latest

from gateway.observe import Metrics, RequestLog

AMOUNTS = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.5, 7.0, 10.0, 11.0, 1e9]


def exposition(direct: bool) -> bytes:
    metrics = Metrics()  # its registry folds the tallies before every collection
    registry = metrics.registry
    histogram = Histogram("h", "h", ["l"], registry=registry)
    counter = Counter("c", "c", ["l"], registry=registry)
    tallied_histogram = metrics._histogram(histogram.labels("x"))
    tallied_counter = metrics._counter(counter.labels("x"))
    for amount in AMOUNTS:  # on bucket bounds, between them, past the last one
        if direct:
            tallied_histogram.observe(amount)
            tallied_counter.add(amount)
        else:
            histogram.labels("x").observe(amount)
            counter.labels("x").inc(amount)
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_direct_series_expose_exactly_what_the_public_api_would() -> None:
    assert exposition(direct=True) == exposition(direct=False)


def test_one_account_call_counts_a_whole_request() -> None:
    metrics = Metrics()
    entry = RequestLog("id", "GET", "/p", "127.0.0.1")
    entry.route, entry.status, entry.reason, entry.upstream = "packages_read", 200, "same_project", "packages"
    entry.bytes_out, entry.upstream_seconds = 1234, 0.002
    metrics.started()
    metrics.account(entry, 0.003)
    sample = metrics.registry.get_sample_value
    assert sample("jobgate_requests_total", {"route": "packages_read", "method": "GET", "code": "200"}) == 1
    assert sample("jobgate_request_duration_seconds_count", {"route": "packages_read"}) == 1
    assert sample("jobgate_auth_decisions_total", {"result": "allow", "reason": "same_project"}) == 1
    assert sample("jobgate_proxied_bytes_total", {"upstream": "packages", "direction": "down"}) == 1234
    assert sample("jobgate_upstream_duration_seconds_bucket", {"upstream": "packages", "le": "0.005"}) == 1
    assert sample("jobgate_in_flight_requests") == 0
    entry.reason = "rate_limited"  # not a decision: not counted as one
    metrics.account(entry, 0.001)
    assert sample("jobgate_auth_decisions_total", {"result": "allow", "reason": "same_project"}) == 1


async def test_tallies_reach_their_value_stores_within_the_fold_period() -> None:
    """Another process (the multiprocess parent) reads the stores, not the tallies."""
    metrics = Metrics()
    store = metrics.cache.labels("hit")._value
    metrics.count_cache("hit")
    metrics.count_cache("hit")
    await asyncio.sleep(0)
    assert store.get() == 0  # still tallied: one store write per period, not per request
    await asyncio.sleep(Metrics.FOLD_SECONDS * 2)  # a later timer than the fold's
    assert store.get() == 2
    metrics.count_cache("hit")
    assert metrics.registry.get_sample_value("jobgate_cache_lookups_total", {"result": "hit"}) == 3
