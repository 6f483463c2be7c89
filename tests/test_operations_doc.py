"""docs/operations.md lists every metric the code exports, with its type."""

from __future__ import annotations

import re
from pathlib import Path

from .exported import exported_metrics

DOC = Path(__file__).parent.parent / "docs" / "operations.md"


def documented_metrics() -> dict[str, str]:
    section = DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(jobgate_[a-z_]+)` \| (\w+) \|", section, re.M))


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    exported, documented = exported_metrics(), documented_metrics()
    assert len(exported) >= 12
    assert set(exported) - set(documented) == set(), "exported but missing from docs/operations.md"
    assert set(documented) - set(exported) == set(), "in docs/operations.md but not exported"
    assert documented == exported
