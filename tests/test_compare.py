"""Paired evidence across sweeps and comparisons: `bornagain report --compare A B` over the same teachers, Holm's
adjustment, the forest plot, agreement with the teacher in the pooled table."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from bornagain_kd.cli import main
from bornagain_kd.reports.stats import holm

TINY = ["train.epochs=1", "ban.generations=2", "ban.ensembles=[2]", "data.train_subset=300", "data.val_size=100",
        "train.progress=false", "train.trackers=[]", "train.num_threads=1", "ban.seeds=[0,1]"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A: the default weights; B: the paper's weights over A's teachers; C: teachers of another learning rate."""
    root = tmp_path_factory.mktemp("sweeps")
    assert main(["ban", "--output", str(root / "A"), *TINY]) == 0
    assert main(["ban", "--output", str(root / "B"), *TINY, "ban.normalize_loss_weights=false",
                 f"ban.teacher_run={root / 'A'}/seed-{{seed}}/gen0"]) == 0
    assert main(["ban", "--output", str(root / "C"), *TINY, "train.lr=0.05"]) == 0
    assert main(["ban", "--output", str(root / "D"), *TINY, "ban.generations=1",  # one student: All of 2 networks
                 f"ban.teacher_run={root / 'A'}/seed-{{seed}}/gen0"]) == 0
    return root


def _errors(run_dir, column):
    results = json.loads((run_dir / "results.json").read_text())
    if column.startswith("BAN-"):
        return next(g["test_error"] for g in results["generations"] if g["generation"] == int(column[4:]))
    return next(e["test_error"] for e in results["ensembles"] if e["name"] == column)


def test_compare_gives_each_columns_per_seed_differences_over_the_same_teachers(sweeps, capsys):
    assert main(["report", "--compare", str(sweeps / "A"), str(sweeps / "B"), "--output", str(sweeps / "AB"),
                 "--plots"]) == 0
    out = capsys.readouterr().out
    agg = json.loads((sweeps / "AB" / "results.json").read_text())
    assert agg["seeds"] == [0, 1] and [c["column"] for c in agg["comparisons"]] == ["BAN-1", "BAN-2", "Ens*2", "All"]
    for c in agg["comparisons"]:  # B - A per seed, from each run's own results
        expected = [_errors(sweeps / "B" / f"seed-{s}", c["column"]) - _errors(sweeps / "A" / f"seed-{s}", c["column"])
                    for s in (0, 1)]
        assert c["differences"] == pytest.approx(expected)
        assert c["mean_difference"] == pytest.approx(sum(expected) / 2)
    assert "B BAN-1 - A BAN-1" in out and "This table holds 4 comparisons" in out
    assert agg["differ_in"] == {"ban.normalize_loss_weights": [True, False]}  # what the comparison is about
    assert "the sweeps differ in ban.normalize_loss_weights (A: True, B: False)" in out
    assert (sweeps / "AB" / "forest.png").is_file() and (sweeps / "AB" / "table.md").is_file()
    assert main(["report", str(sweeps / "AB")]) == 0  # the written comparison prints again
    assert "B BAN-1 - A BAN-1" in capsys.readouterr().out


def test_compare_refuses_sweeps_whose_teachers_differ(sweeps, cli_error):
    assert "teachers of" in cli_error(["report", "--compare", str(sweeps / "A"), str(sweeps / "C")])
    assert "two sweeps" in cli_error(["report", "--compare", str(sweeps / "A")])
    assert "twice" in cli_error(["report", "--compare", str(sweeps / "A"), str(sweeps / "A")])
    assert "does not exist" in cli_error(["report", "--compare", str(sweeps / "A"), str(sweeps / "nope")])
    assert "drop --per-run" in cli_error(["report", "--compare", str(sweeps / "A"), str(sweeps / "B"), "--per-run"])


def test_compare_leaves_out_a_column_that_averages_other_members(sweeps, capsys):
    """D has one student: its All averages 2 networks, A's 3; BAN-1 is one thing in both."""
    assert main(["report", "--compare", str(sweeps / "A"), str(sweeps / "D")]) == 0
    out = capsys.readouterr().out
    assert "D BAN-1 - A BAN-1" in out and "D All - A All" not in out and "Left out: All" in out


def test_holm_adjustment_by_hand_and_in_the_pooled_table(sweeps, capsys):
    adjusted = holm([0.01, 0.04, 0.03, math.nan])  # m = 3: 3 x 0.01, then max(0.03, 2 x 0.03), max(0.06, 0.04)
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert main(["report", str(sweeps / "A"), "--adjust", "holm", "--output", str(sweeps / "A-holm"), "--plots"]) == 0
    out = capsys.readouterr().out
    agg = json.loads((sweeps / "A-holm" / "results.json").read_text())
    ps = [c["paired_t"]["p_value"] for c in agg["comparisons"]]
    assert [c["paired_t"]["p_holm"] for c in agg["comparisons"]] == pytest.approx(holm(ps), nan_ok=True)
    assert f"This table holds {len(ps)} comparisons" in out and "(Holm: " in out
    assert all("Holm-adjusted over the" in c["reading"] for c in agg["comparisons"] if c["paired_t"]["p_holm"] == c[
        "paired_t"]["p_holm"])  # every reading says what the adjustment leaves of it
    assert (sweeps / "A-holm" / "forest.png").is_file()
    assert "top-1 agreement with its teacher (%)" in out  # each student's agreement, pooled over the seeds


def test_compare_tests_b_against_the_controls_that_only_a_trained(tmp_path, capsys, cli_error):
    """The controls trained without students (longer, Ind*2, label smoothing) serve B's students too, pair by pair;
    the doubled-label control depends on the students' weights and is not borrowed. A sweep that differs in more
    than the students' loss borrows none; a control missing from one seed is left out, and said."""
    a, b = tmp_path / "A", tmp_path / "B"
    assert main(["ban", "--output", str(a), *TINY, "ban.controls=[longer,independent,label_smoothing,doubled_label]"]) == 0
    assert main(["ban", "--output", str(b), *TINY, "ban.normalize_loss_weights=false",
                 f"ban.teacher_run={a}/seed-{{seed}}/gen0"]) == 0
    assert main(["report", "--compare", str(a), str(b), "--output", str(tmp_path / "AB"), "--adjust", "holm",
                 "--plots"]) == 0
    out = capsys.readouterr().out
    agg = json.loads((tmp_path / "AB" / "results.json").read_text())
    borrowed = [(c["column"], c["control"]) for c in agg["comparisons"] if "control" in c]
    assert borrowed == [("Ens*2", "Ind*2"), ("BAN-1", "label smoothing"), ("BAN-1", "longer"), ("Ens*2", "longer")]
    assert agg["borrowed_controls"] == ["Ind*2", "label smoothing", "longer"]
    assert agg["differ_in"] == {"ban.normalize_loss_weights": [True, False]}  # which controls ran is not a difference
    assert agg["adjust"]["comparisons"] == 4 + 4  # B - A of BAN-1, BAN-2, Ens*2 and All; the four borrowed
    for c in agg["comparisons"]:
        if "control" not in c:
            continue
        controls = []
        for s in (0, 1):
            results = json.loads((a / f"seed-{s}" / "results.json").read_text())["controls"]
            controls.append({"longer": lambda: results["longer"]["test_error"],
                             "label smoothing": lambda: results["label_smoothing"]["test_error"],
                             "Ind*2": lambda: results["independent"]["ensembles"][0]["test_error"]}[c["control"]]())
        expected = [_errors(b / f"seed-{s}", c["column"]) - controls[i] for i, s in enumerate((0, 1))]
        assert c["differences"] == pytest.approx(expected)  # B's network minus A's control of the same seed
    assert "B BAN-1 - A longer" in out and "compared with B's networks too" in out
    assert "| longer |" in (tmp_path / "AB" / "table.md").read_text() and (tmp_path / "AB" / "forest.png").is_file()

    # another schedule for B: the controls (the teacher's recipe) no longer fit B's students
    c = tmp_path / "C"
    assert main(["ban", "--output", str(c), *TINY, "train.lr=0.05", "ban.teacher_run_other_schedule=true",
                 f"ban.teacher_run={a}/seed-{{seed}}/gen0"]) == 0
    assert main(["report", "--compare", str(a), str(c)]) == 0
    out = capsys.readouterr().out
    assert "A's Ind*2, label smoothing, longer not compared with C's networks: the sweeps also differ in train.lr" in out
    assert "C BAN-1 - A longer" not in out

    # the sweeps given the other way round: the second sweep's controls are not borrowed, and the caption says why
    assert main(["report", "--compare", str(b), str(a)]) == 0
    out = capsys.readouterr().out
    assert "A's controls Ind*2, label smoothing, longer serve the first sweep's networks only when that sweep comes " \
           "second: --compare A B compares them" in out

    # an --output inside a run being reported would replace its files: refused
    assert "inside the run" in cli_error(["report", "--compare", str(a), str(b), "--output", str(a / "seed-1")])
    assert "inside the run" in cli_error(["report", str(a), "--output", str(a)])

    # a control missing from one seed: left out, and said
    shutil.copytree(a, tmp_path / "A2")
    summary = tmp_path / "A2" / "seed-1" / "results.json"
    results = json.loads(summary.read_text())
    del results["controls"]["longer"]
    summary.write_text(json.dumps(results))
    assert main(["report", "--compare", str(tmp_path / "A2"), str(b)]) == 0
    out = capsys.readouterr().out
    assert "Not in every seed of A2, so left out: longer." in out and "A2 longer" not in out


def test_a_teacher_run_that_is_a_whole_sequence_names_its_gen0(sweeps, cli_error, tmp_path):
    """ban.teacher_run pointed at a ban run (or a sweep) instead of its teacher: one message naming the folder inside,
    before anything is written."""
    message = cli_error(["ban", "--output", str(tmp_path / "x"), *TINY, f"ban.teacher_run={sweeps / 'A'}/seed-{{seed}}"])
    assert f"point it at the teacher inside, ban.teacher_run={sweeps / 'A'}/seed-0/gen0" in message
    message = cli_error(["ban", "--output", str(tmp_path / "y"), f"ban.teacher_run={sweeps / 'A'}"])
    assert f"ban.teacher_run={sweeps / 'A'}/seed-{{seed}}/gen0" in message
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
