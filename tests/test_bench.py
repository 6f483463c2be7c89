"""The benchmark harness itself runs (tiny durations; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent


def test_bench_smoke_run_produces_every_scenario() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    expected = {"direct", "bare proxy", "naive aiohttp proxy", "nginx proxy_pass (upstream keepalive)",
                "jobgate (cache warm)", "nginx auth_request -> jobgate, nginx proxy_pass"}  # fmt: skip
    assert set(report["scenarios"]) >= expected
    for run in report["scenarios"].values():
        assert run["requests"] > 0 and run["errors"] == 0
    assert (
        report["scenarios"]["jobgate denied (unknown token)"]["non2xx"]
        == (report["scenarios"]["jobgate denied (unknown token)"]["requests"])
    )
    assert report["scenarios"]["jobgate (cache warm)"]["non2xx"] == 0
    assert report["scenarios"]["jobgate (cache warm)"]["ratio_per_round"]  # rounds are interleaved
    assert set(report["added_latency_us"]) == {"p50", "p99", "p999"}
    assert len(report["revocation"]["first_404_ms"]) == 2
    assert report["state_scale"]["bytes_per_job"] > 0
    verdicts = {row["target"]: row["verdict"] for row in report["targets"]}
    assert set(verdicts.values()) <= {"met", "missed", "not measured", "reported"}
    assert verdicts["1 GiB download >= 0.7 x direct"] == "not measured"  # the smoke run skips it
    assert set(report["ratios"]) >= {"jobgate (cache warm) / naive aiohttp proxy"}


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_figures(ratio: float, first_404_ms: float) -> dict[str, Any]:
    warm = {"ratio_to_bare": ratio, "ratio_per_round": [ratio], "redis_reads_per_request": 0.001, "rps": 100,
            "p99": 2000}  # fmt: skip
    cold = {"ratio_to_bare": 0.5, "ratio_per_round": [0.5], "redis_reads_per_request": 1.001, "rps": 60}
    naive = {"ratio_to_bare": 1.0, "ratio_per_round": [1.0], "redis_reads_per_request": 0.0, "rps": 100,
             "p99": 1500 if ratio > 0.85 else 900}  # fmt: skip
    return {
        "scenarios": {
            "jobgate (cache warm)": warm,
            "jobgate (no cache: a Redis read per request)": cold,
            "naive aiohttp proxy": naive,
        },
        "ratios": {
            "jobgate (cache warm) / naive aiohttp proxy": ratio / 0.85,
            "bare proxy / naive aiohttp proxy": 1.0,
        },
        "added_latency_us": {"p50": 50, "p99": 900, "p999": 2000},
        "revocation": {"gateways": 2, "first_404_ms": [3.0, first_404_ms]},
        "state_scale": {
            "jobs": 1000,
            "bytes_per_job": 241,
            "read_us_1k_jobs": 100.0,
            "read_us_1000_jobs": 124.0,
        },
    }


def test_targets_are_judged_from_the_figures() -> None:
    bench = load_bench()
    verdicts = {row["target"]: row["verdict"] for row in bench.targets(run_figures(0.86, 49.0))}
    assert verdicts["valid token >= 0.85 x bare proxy (wrk, same worker count; issue 5)"] == "met"
    assert verdicts["valid token, cache warm: req/s >= 1.0 x the naive aiohttp proxy (wrk -c16)"] == "met"
    assert verdicts["p99 at 16 connections <= the naive proxy's p99 + 1 ms"] == "met"
    assert verdicts["revocation < 50 ms on every gateway"] == "met"
    assert verdicts["p99 added <= 1 ms (one connection)"] == "met"
    assert verdicts["decision latency unchanged from 1,000 jobs (within 25 %)"] == "met"
    assert verdicts["1 GiB download >= 0.7 x direct"] == "not measured"
    figures = run_figures(0.86, 49.0)  # medians 500 µs apart, but per round 1.2 ms (the judged figure)
    figures["p99_over_naive_us"] = {"median": 1200, "per_round": [1200, 900, 1500]}
    verdicts = {row["target"]: row["verdict"] for row in bench.targets(figures)}
    assert verdicts["p99 at 16 connections <= the naive proxy's p99 + 1 ms"] == "missed"
    figures = run_figures(0.84, 51.0)  # medians 1.1 ms apart, per round 0.8 ms
    figures["p99_over_naive_us"] = {"median": 800, "per_round": [800, 700, 1100]}
    verdicts = {row["target"]: row["verdict"] for row in bench.targets(figures)}
    assert verdicts["p99 at 16 connections <= the naive proxy's p99 + 1 ms"] == "met"
    verdicts = {row["target"]: row["verdict"] for row in bench.targets(run_figures(0.84, 51.0))}
    assert verdicts["valid token >= 0.85 x bare proxy (wrk, same worker count; issue 5)"] == "missed"
    assert verdicts["valid token, cache warm: req/s >= 1.0 x the naive aiohttp proxy (wrk -c16)"] == "missed"
    assert verdicts["p99 at 16 connections <= the naive proxy's p99 + 1 ms"] == "missed"
    assert verdicts["revocation < 50 ms on every gateway"] == "missed"
