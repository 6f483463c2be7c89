"""What `pip install jobgate` brings: the dependencies every production run needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def dependencies() -> list[str]:
    return list(tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"])


def test_uvloop_is_a_core_dependency_on_linux() -> None:
    # a plain `pip install` ran the asyncio loop (0.74x a naive aiohttp proxy, 0.76-0.89x with uvloop)
    assert "uvloop>=0.19; sys_platform == 'linux'" in dependencies()
    assert "speed" not in tomllib.loads(PYPROJECT.read_text())["project"].get("optional-dependencies", {})
