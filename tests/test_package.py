"""The package as users install it: recipes by name, recipes that need nothing beside the repository, the Table 2
teacher path, the environment report and the config printer. (`predict`: test_predict.py; the wheel in a fresh
virtual environment: test_wheel.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from bornagain_kd.cli import main
from bornagain_kd.config import load_config
from bornagain_kd.config_doc import _first_sentence
from bornagain_kd.engine.settings import flatten
from bornagain_kd.recipes import FIELDS, available, find_recipe, recipe_fields
from bornagain_kd.vision.config import VisionConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))


# ------------------------------------------------------------------------- recipes by name


def test_a_recipe_is_found_by_its_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged copy (a checkout's configs/) answers
    want = (REPO / "configs" / "fast-cifar10-10k.yaml").resolve()
    for name in ("fast-cifar10-10k", "fast-cifar10-10k.yaml", "configs/fast-cifar10-10k.yaml"):
        assert find_recipe(name).resolve() == want, name
    cfg = load_config(VisionConfig, "fast-cifar10-10k", ["train.epochs=1"])
    assert cfg.model.name == "airbench-32-64-128" and cfg.train.epochs == 1
    assert set(available()) == {p.stem for p in RECIPES}


def test_a_path_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fast-cifar10-10k").write_text("seed: 7\n")
    assert find_recipe("fast-cifar10-10k") == Path("fast-cifar10-10k")
    cfg = load_config(VisionConfig, "fast-cifar10-10k")
    assert cfg.seed == 7 and cfg.model.name == VisionConfig().model.name  # the file, not the packaged recipe


def test_an_unknown_name_lists_close_matches_and_writes_nothing(tmp_path, monkeypatch, cli_error):
    monkeypatch.chdir(tmp_path)
    err = cli_error(["ban", "--config", "fast-cifar10-1k", "--output", "out"])
    assert "fast-cifar10-10k" in err and "bornagain recipes" in err and "neither a file nor a packaged recipe" in err
    err = cli_error(["ban", "--config", "elsewhere/fast-cifar10-10k.yaml"])  # a path into another folder
    assert "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_recipes_lists_every_recipe_with_its_purpose_data_and_time(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in RECIPES:
        assert re.search(rf"^{re.escape(path.stem)} .*\(bornagain \S+ --config {re.escape(path.stem)}\)$", out,
                         re.M), path.stem
        fields = recipe_fields(path)
        assert all(fields[f] for f in FIELDS), (path.name, fields)  # the first three comment lines
    assert "(not stated)" not in out


# ------------------------------------------------------------------------- what a recipe may assume


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_no_recipe_reads_beside_the_repository(path):
    text = path.read_text()
    assert "../shared" not in text and "shared/data" not in text
    values = [v for v in flatten(yaml.safe_load(text)).values() if isinstance(v, str)]
    assert not [v for v in values if v.startswith("..")], values


SPEED_KEYS = ("train.precision", "train.channels_last", "train.compile", "train.compile_mode", "train.last_batch",
              "ban.teacher_precision", "ban.teacher_compile")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_speed_key_is_auto_or_says_why(path):
    text = path.read_text()
    for key, value in flatten(yaml.safe_load(text)).items():
        if key not in SPEED_KEYS or value == "auto":
            continue
        leaf = key.split(".")[-1]
        line = re.search(rf"^\s+{leaf}:[^\n]*$", text, re.M).group(0)
        assert re.search(r"#\s*\S", line), f"{path.name}: {key}={value} without a comment saying why: {line!r}"


def test_table2_recipes_take_table1s_teacher_by_default():
    table1 = yaml.safe_load((REPO / "configs" / "table1-densenet-bc-90-60.yaml").read_text())
    rows = [p for p in RECIPES if p.name.startswith("table2-match-")]
    assert len(rows) == 13
    for path in rows:
        tree = yaml.safe_load(path.read_text())
        assert tree["ban"]["teacher_run"] == f"{table1['output_dir']}/gen0", path.name
        # what ban.teacher_run checks: the same teacher model, data and schedule
        assert (tree["model"]["name"], tree["data"], tree["train"]) == (
            table1["model"]["name"], table1["data"], table1["train"]), path.name


def test_a_missing_table1_teacher_names_the_recipe_to_run_before_any_download(tmp_path, monkeypatch, cli_error):
    monkeypatch.chdir(tmp_path)
    err = cli_error(["ban", "--config", "table2-match-wrn-1-1", "--output", "out"])
    assert "ban.teacher_run=runs/table1-densenet-bc-90-60/gen0 does not exist" in err
    assert "run configs/table1-densenet-bc-90-60.yaml first" in err and "set ban.teacher_run" in err
    assert list(tmp_path.iterdir()) == []  # no output, no data/cifar100 download


# ------------------------------------------------------------------------- bornagain env


@pytest.fixture(scope="module")
def env_facts():
    from bornagain_kd.env_report import facts

    return facts


def test_env_says_bf16_exactly_where_the_cpu_flags_have_it(env_facts, monkeypatch):
    """The reason follows /proc/cpuinfo's flags (faked here both ways), and ATEN_CPU_CAPABILITY=avx2 counts as none."""
    import bornagain_kd.engine.device as device
    import bornagain_kd.env_report as env_report

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    for flags, native in ((frozenset({"avx2", "avx512f", "avx512_bf16"}), True), (frozenset({"avx2", "fma"}), False),
                          (frozenset({"asimd", "bf16"}), True)):
        monkeypatch.setattr(device, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(env_report, "cpu_flags", lambda flags=flags: flags)
        report = env_facts()
        assert report["cpu"]["native bf16"].startswith("yes" if native else "no"), flags
        assert report["cpu"]["flags"].split() == [f for f in env_report.CPU_FLAGS if f in flags]
        if not torch.cuda.is_available():
            assert report["auto"]["train.precision"].startswith("bf16 (" if native else "fp32 (")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert env_facts()["cpu"]["native bf16"].startswith("no")


def test_env_agrees_with_this_machines_cpuinfo(env_facts, monkeypatch):
    """Against /proc/cpuinfo read here, apart from the code under test."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    flags = {f for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
             for f in line.split(":", 1)[1].split()}
    report = env_facts()
    assert report["cpu"]["native bf16"].startswith("yes" if flags & {"avx512_bf16", "amx_bf16", "bf16"} else "no")
    assert report["versions"]["torch"] == torch.__version__
    assert report["threads"]["torch threads"] == torch.get_num_threads()


def test_env_prints_every_section(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for section in ("versions:", "cpu:", "gpu:", "threads:", "auto:"):
        assert re.search(rf"^{section}$", out, re.M), section
    assert re.search(r"^  bornagain-kd:\s+\d+\.\d+", out, re.M) and "train.precision" in out


# ------------------------------------------------------------------------- bornagain config


@pytest.mark.parametrize("text, first", [
    ("A preset: ban+l (Eq. 2: labels + teacher), ban (teacher only). More here.",
     "A preset: ban+l (Eq. 2: labels + teacher), ban (teacher only)."),
    ("Smoothed teachers distil worse, as Mueller et al. 2019 found. Off by default.",
     "Smoothed teachers distil worse, as Mueller et al. 2019 found."),
    ("A value, e.g. 0.5. Or none.", "A value, e.g. 0.5."),
    ("Ends with a version 2.1.0 inside. Then more.", "Ends with a version 2.1.0 inside."),
    ("No full stop at all", "No full stop at all"),
    ("Converted to mono. Then more.", "Converted to mono."),
    ("Lists, etc. And more.", "Lists, etc. And more."),
])
def test_the_config_printer_keeps_abbreviations(text, first):
    assert _first_sentence(text) == first


def test_bornagain_config_prints_whole_first_sentences(capsys):
    assert main(["config", "ban"]) == 0
    out = capsys.readouterr().out
    loss = next(line for line in out.splitlines() if line.startswith("ban.loss "))
    assert "(Eq. 2: labels + teacher)" in loss and "dkpp" in loss
    precision = next(line for line in out.splitlines() if line.startswith("train.precision "))
    assert "auto (" in precision and "fp32" in precision
