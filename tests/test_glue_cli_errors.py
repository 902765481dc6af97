"""GLUE commands: a wrong path or name is one clear error, raised before any file is written."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bam_fixtures import tiny_overrides, write_tiny_encoder, write_tiny_glue  # noqa: E402

from bornagain_kd.cli import main  # noqa: E402


@pytest.fixture
def tiny(tmp_path):
    return tiny_overrides(write_tiny_glue(tmp_path / "glue"), write_tiny_encoder(tmp_path / "encoder"))


@pytest.mark.parametrize("command", ["glue-teachers", "bam"])
@pytest.mark.parametrize("bad, expected", [
    ("glue.data_dir=/no/such/glue", "/no/such/glue"),
    ("glue.tasks=[CoLA,NOPE]", "NOPE"),
    ("encoder.name_or_path=/no/such/encoder", "/no/such/encoder"),
])
def test_bad_input_fails_before_writing(tmp_path, capsys, tiny, command, bad, expected):
    out = tmp_path / "out"
    code = main([command, "--output", str(out), *tiny, bad])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("bornagain: error: ") and "\n" not in err and expected in err
    assert not out.exists()
