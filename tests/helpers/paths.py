"""Where the repository and the shared data are, for tests that run CLIs or read the shared example."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SHARED = ROOT.parent / "shared"
EXAMPLE = SHARED / "data" / "longreward_example"


def shared_path(*parts: str) -> Path:
    """A path under ../shared that must exist: fail with a clear message (never skip) when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: these tests need the project's shared/ folder beside the checkout "
                    "(the LongReward example data)", pytrace=False)
    return path
