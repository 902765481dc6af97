"""Shared fixtures: tiny, fast, CPU-only. Tests that read ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("BORNAGAIN_NO_PROGRESS", "1")  # keep test logs readable
# train.compile=auto reads and writes a per-machine record of compile measurements (engine/speed.py): the tests
# keep theirs apart from the user's, in a folder of their own that starts empty.
if "BORNAGAIN_CACHE_DIR" not in os.environ:
    import tempfile  # noqa: E402

    os.environ["BORNAGAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="bornagain-test-cache-")
# No test reaches the Hugging Face hub (set before anything imports huggingface_hub, which reads them once): a hub
# id fails at once instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A run with ATEN_CPU_CAPABILITY=avx2 (the suite is run so too, to check no test hinges on this CPU's rounding)
# compiles into a TorchInductor cache of its own, before any test makes torch ask for one (engine/compile.py).
from bornagain_kd.engine.compile import separate_kernel_cache  # noqa: E402

separate_kernel_cache(os.environ)
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


@pytest.fixture
def cli_error(capsys):
    """Run the CLI expecting a refusal: returns its one `bornagain: error:` line (exit status 2)."""
    from bornagain_kd.cli import main  # noqa: PLC0415

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("bornagain: error: ") and "\n" not in err
        return err

    return run
