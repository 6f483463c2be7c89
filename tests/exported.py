"""The metric names gateway/observe.py registers, as Prometheus sees them (counters end in _total)."""

from __future__ import annotations

from gateway.observe import Metrics


def exported_metrics() -> dict[str, str]:
    """Every metric a gateway exports, by the name its series carry, with its type."""
    names = {}
    for family in Metrics().registry.collect():
        names[family.name + "_total" if family.type == "counter" else family.name] = family.type
    return names
