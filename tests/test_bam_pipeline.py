"""End to end: `bornagain bam` on a tiny GLUE folder with every target arm, resume, cache checks."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bam_fixtures import tiny_overrides, write_tiny_encoder, write_tiny_glue  # noqa: E402

from bornagain_kd.config import load_config  # noqa: E402
from bornagain_kd.errors import UserError  # noqa: E402
from bornagain_kd.pipelines.bam import ensure_seed_teachers, load_student_data, run_bam  # noqa: E402
from bornagain_kd.glue.cache import load_teacher_predictions, save_teacher_predictions  # noqa: E402
from bornagain_kd.glue.config import GlueExperimentConfig  # noqa: E402
from bornagain_kd.glue.tokenization import load_tokenizer  # noqa: E402

pytest.importorskip("transformers")
ARMS = ("annealed", "fixed", "labels", "smoothing-annealed")
TASKS = ("CoLA", "MRPC", "STS-B")


@pytest.fixture(scope="module")
def bam_run(tmp_path_factory):
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("bam")
    overrides = tiny_overrides(write_tiny_glue(root / "glue"), write_tiny_encoder(root / "encoder"))
    overrides.append(f"bam.targets=[{','.join(ARMS)}]")
    cfg = load_config(GlueExperimentConfig, None, overrides)
    results = run_bam(cfg, root / "out")
    yield cfg, root / "out", results, overrides
    torch.set_num_threads(threads)


def test_every_arm_runs_and_the_table_is_complete(bam_run):
    cfg, out, results, _ = bam_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == ["majority", "teachers", "labels", "annealed", "fixed", "smoothing-annealed"]
    assert saved["summary"]["majority"]["GLUE"]["n"] == 1  # the reference row: one value
    for row in saved["rows"][1:]:
        assert sorted(saved["metrics"][row]) == ["0", "1"]  # every seed's metrics are kept
        for seed in ("0", "1"):
            assert set(saved["metrics"][row][seed]) == set(TASKS)
            assert {"f1", "accuracy"} <= set(saved["metrics"][row][seed]["MRPC"])
        for column in (*TASKS, "GLUE"):
            assert saved["summary"][row][column]["n"] == 2
    # GLUE average of one seed = mean of its task scores.
    scores = saved["scores"]["annealed"]["0"]
    assert scores["GLUE"] == pytest.approx(sum(scores[t] for t in TASKS) / 3)
    assert saved["test"] == "paired t-test"
    assert saved["tests"]["annealed vs teachers"]["GLUE"]["n"] == 2
    assert saved["tests"]["annealed vs labels"]["seeds"] == [0, 1]
    table = (out / "table.md").read_text()
    for title in ("single-task teachers", "multi-task (labels)", "BAM (teacher annealing)",
                  "fixed mixture", "smoothing annealed"):
        assert title in table
    assert "(n=2)" in table and "p" in table
    # how sure: BAM minus each other arm on the GLUE average, with its interval and minimum detectable effect
    glue = saved["tests"]["annealed vs labels"]["GLUE"]
    bam, labels = ([100 * saved["scores"][row][seed]["GLUE"] for seed in ("0", "1")] for row in ("annealed", "labels"))
    assert glue["power_points"]["mean_difference"] == pytest.approx((bam[0] - labels[0] + bam[1] - labels[1]) / 2)
    assert len(saved["readings"]) == 4 and saved["readings"][1].startswith(
        "BAM (teacher annealing) - multi-task (labels), GLUE average: ")
    assert saved["readings"][1] in table and "Minimum detectable effect" in table
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,task,mean,std,n")
    # Teachers per seed: seed 0 where `glue-teachers` puts them, seed 1 in its own folder.
    assert (out / "teachers" / "CoLA" / "results.json").exists()
    assert (out / "teachers" / "seed1" / "CoLA" / "results.json").exists()


def test_lambda_is_logged_every_step(bam_run):
    _, out, _, _ = bam_run
    for arm in ARMS:
        records = [json.loads(line) for line in (out / "students" / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "lambda" in r]
        total = len(steps)
        assert [r["step"] for r in steps] == list(range(total))
        for r in steps:
            assert r["lambda"] == pytest.approx(r["step"] / total)
            expected_weight = {"annealed": r["lambda"], "smoothing-annealed": r["lambda"], "fixed": 0.5, "labels": 1.0}[arm]
            assert r["label_weight"] == pytest.approx(expected_weight)
            assert math.isfinite(r["loss"])
        assert any(k.startswith("dev/") for k in records[-1])


def test_arms_of_one_seed_share_the_initialisation_but_differ_in_targets(bam_run):
    _, out, _, _ = bam_run
    first = {arm: json.loads((out / "students" / arm / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
             for arm in ARMS}
    # At step 0 lambda = 0: `annealed` and `fixed` (weights 0 vs 0.5) and `labels` see different targets
    # on the same minibatch through the same initial weights.
    assert first["annealed"]["loss"] != pytest.approx(first["labels"]["loss"])
    assert set(k for k in first["annealed"] if k.startswith("loss/")) == set(k for k in first["labels"] if k.startswith("loss/"))


def test_resume_skips_finished_runs(bam_run):
    cfg, out, results, _ = bam_run
    done = out / "students" / "annealed" / "seed1" / "dev_metrics.json"
    before = done.stat().st_mtime_ns
    again = run_bam(cfg, out, resume=True)
    assert done.stat().st_mtime_ns == before
    assert again["scores"] == results["scores"]


def test_changed_settings_are_refused(bam_run):
    _, out, _, overrides = bam_run
    cfg = load_config(GlueExperimentConfig, None, [*overrides, "bam.targets=[labels]", "bam.lr=0.01"])
    with pytest.raises(UserError, match="other settings"):
        run_bam(cfg, out, resume=True)


def test_teacher_cache_is_looked_up_by_id_and_misalignment_is_refused(bam_run):
    cfg, out, _, _ = bam_run
    tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
    teachers = ensure_seed_teachers(cfg, out, 0, resume=False)  # finished: reused, not retrained
    data = load_student_data(cfg, tokenizer, teachers)
    # both_orders: the swapped MRPC encoding is [CLS] b [SEP] a [SEP] for [CLS] a [SEP] b [SEP].
    sep = tokenizer.sep_token_id
    for r in range(3):
        a, b = _segments(data.train["MRPC"].input_ids[r], sep)
        assert _segments(data.swapped["MRPC"].input_ids[r], sep) == (b, a)
    assert "CoLA" not in data.swapped
    cache = load_teacher_predictions(teachers["CoLA"].predictions_path, task="CoLA",
                                     expected_fingerprint=teachers["CoLA"].prediction_fingerprint)
    row = {eid: i for i, eid in enumerate(cache.example_ids)}
    for r, eid in enumerate(data.train["CoLA"].ids):
        torch.testing.assert_close(data.teacher_outputs["CoLA"][r], cache.outputs[row[eid]])

    # Rows stored in another order (same ids, same fingerprint): the lookup by id still aligns.
    path = teachers["CoLA"].predictions_path
    original = path.read_bytes()
    order = list(reversed(range(len(cache.example_ids))))
    save_teacher_predictions(path, task="CoLA", example_ids=[cache.example_ids[i] for i in order],
                             outputs=cache.outputs[order], fingerprint=cache.fingerprint)
    try:
        again = load_student_data(cfg, tokenizer, teachers)
        torch.testing.assert_close(again.teacher_outputs["CoLA"], data.teacher_outputs["CoLA"])
        # A cache whose fingerprint does not match the student's examples is refused.
        save_teacher_predictions(path, task="CoLA", example_ids=list(cache.example_ids),
                                 outputs=cache.outputs, fingerprint="0" * 64)
        with pytest.raises(UserError, match="do not match"):
            load_student_data(cfg, tokenizer, teachers)
    finally:
        path.write_bytes(original)
    # The student tokenising differently from the teacher (max_seq_length) is refused too.
    with pytest.raises(UserError, match="do not match"):
        load_student_data(dataclasses.replace(cfg, max_seq_length=16), tokenizer, teachers)


def test_bam_command_prints_the_table(bam_run, capsys):
    from bornagain_kd.cli import bam_command

    _, out, _, overrides = bam_run
    bam_command(None, str(out), True, [*overrides, f"bam.targets=[{','.join(ARMS)}]"])  # all reused
    printed = capsys.readouterr().out
    assert "| BAM (teacher annealing) |" in printed
    assert "Paired t-test per task, pairing seed k of BAM with seed k" in printed
    assert "results in" in printed


def _segments(ids, sep):
    ids = list(ids)
    first = ids.index(sep)
    return tuple(ids[1:first]), tuple(ids[first + 1:-1])


def test_unfinished_student_needs_resume_and_a_rerun_is_deterministic(bam_run):
    cfg, out, results, _ = bam_run
    run_dir = out / "students" / "labels" / "seed1"
    assert not (run_dir / "checkpoint.safetensors").exists()  # finished: the resume state is deleted
    saved = json.loads((run_dir / "dev_metrics.json").read_text())
    (run_dir / "dev_metrics.json").unlink()  # as if killed before the end...
    (run_dir / "results.json").unlink()  # (results.json is the finished marker)
    (run_dir / "checkpoint.safetensors").write_bytes(b"")  # ...with a checkpoint on disk
    with pytest.raises(UserError, match="pass --resume"):
        run_bam(cfg, out, resume=False)
    (run_dir / "checkpoint.safetensors").unlink()  # killed before its first checkpoint: trains again
    again = run_bam(cfg, out, resume=True)
    assert json.loads((run_dir / "dev_metrics.json").read_text()) == saved  # same seed, same result
    assert again["scores"] == results["scores"]


def test_report_reads_every_kind_of_run_directory(bam_run, tmp_path):
    from bornagain_kd.errors import UserError
    from bornagain_kd.reports.runs import report_command

    _, out, _, _ = bam_run
    text = report_command([str(out), str(out / "students" / "annealed" / "seed0"), str(out / "teachers" / "MRPC")])
    assert "BAM (teacher annealing)" in text  # the bam output's table
    assert "| arm | annealed |" in text and "| dev MRPC f1 |" in text  # one student run
    assert "| task | MRPC |" in text and "| dev f1 |" in text  # one teacher run
    assert "last epoch train_loss" in text
    with pytest.raises(UserError, match="not a finished bornagain run"):
        report_command([str(tmp_path)])
    with pytest.raises(UserError, match="--output and --plots"):
        report_command([str(out)], str(tmp_path / "t"))


def test_python_api_runs_the_glue_commands(bam_run):
    """bornagain_kd.api.glue_teachers / bam run what the commands run (here: everything is reused on resume)."""
    from bornagain_kd import api

    _, out, results, overrides = bam_run
    summary = api.glue_teachers(None, overrides=overrides, output=out, resume=True)
    assert set(summary["teachers"]) == set(TASKS) and set(summary["tasks"]) == set(TASKS)
    again = api.bam({"bam": {"targets": list(ARMS)}}, overrides=overrides, output=out, resume=True)
    assert again["scores"] == results["scores"]
    with pytest.raises(UserError, match="glue.data_dir"):
        api.bam(None, overrides=[*overrides, "glue.data_dir=/nonexistent/glue"], output=out, resume=True)
