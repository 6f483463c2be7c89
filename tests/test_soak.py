"""The soak harness itself (a few seconds; `make soak` runs the real one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_soak_smoke_has_no_wrong_decision() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "SOAK_SECONDS": "4"},
    )  # fmt: skip
    summary = json.loads((ROOT / "bench" / "results" / "soak-smoke.json").read_text())
    assert result.returncode == 0, (summary["problems"], result.stderr[-2000:])
    assert summary["problem_count"] == 0 and summary["jobs_finished"] > 0
    outcomes = summary["by_outcome"]
    assert outcomes.get("allowed 200", 0) > 0 and outcomes.get("denied 404", 0) > 0
    assert outcomes.get("streaming 200", 0) > 0
