"""Shared fixtures: tiny, fast, CPU-only. Tests that read ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("BORNAGAIN_NO_PROGRESS", "1")  # keep test logs readable
# One intra-op thread: tiny models gain nothing from more, and on a shared 2-core machine
# spinning OpenMP threads make small ops 10-100x slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data, or skip the test when it is not there (users do not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found (real-data test)")
    return SHARED_DATA
