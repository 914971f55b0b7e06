"""Shared fixtures.

Tests that use real imagery read it from ``../shared/data`` (next to the
checkout) or from the folder named by ``TIO_SHARED_DATA``. When it is missing
those tests *fail* with a message saying where it was looked for: they never
skip silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("TIO_SHARED_DATA")
    return Path(env) if env else _REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real test imagery (``../shared/data``); fails clearly if absent."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.fail(
            f"real test data not found at {path}: put the shared data folder next to the "
            "checkout (../shared/data) or set TIO_SHARED_DATA to its path",
            pytrace=False,
        )
    return path
