"""The benchmark harness itself runs (tiny durations; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_smoke_run_produces_every_scenario() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    expected = {"direct", "bare proxy", "jobgate (cache warm)", "nginx + forward-auth"}
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
