"""`bornagain sweep`: seeds x a grid of overrides, run as an array by submitit's local executor (the SLURM path
as local processes); a failing grid point is reported, a re-run launches only the unfinished runs, and
`bornagain report` pools each point's seeds."""

import json
import sys

import pytest
import yaml

from bornagain_kd.cli import main
from bornagain_kd.errors import UserError
from bornagain_kd.pipelines.sweep import expand, split_grid

TINY = ["train.epochs=1", "ban.generations=1", "train.batch_size=64", "train.progress=false", "train.trackers=[]",
        "train.num_threads=1", "data.train_subset=200", "data.val_size=50"]


def test_brackets_make_a_grid_axis_unless_the_key_takes_a_list(tmp_path):
    fixed, axes = split_grid("ban", ["train.lr=[0.05,0.1]", "ban.ensembles=[2,3]", "model.name=resnet-8",
                                     "ban.controls=[[],[independent]]"])
    assert fixed == ["ban.ensembles=[2,3]", "model.name=resnet-8"]
    assert axes == [("train.lr", ["0.05", "0.1"]), ("ban.controls", ["[]", '["independent"]'])]
    runs = expand("ban", tmp_path, [0, 1], ["train.lr=[0.05,0.1]", "train.epochs=2"])
    assert [r.name for r in runs] == ["train.lr=0.05/seed-0", "train.lr=0.05/seed-1", "train.lr=0.1/seed-0",
                                      "train.lr=0.1/seed-1"]
    assert runs[3].overrides == ("train.epochs=2", "train.lr=0.1", "seed=1")
    assert [r.run_dir for r in expand("train", tmp_path, [3], [])] == [tmp_path / "seed-3"]  # seeds alone
    with pytest.raises(UserError, match="nothing to sweep"):
        expand("ban", tmp_path, [], ["train.lr=0.1"])


def test_a_bad_key_refuses_the_whole_sweep_before_anything_runs(tmp_path, capsys):
    assert main(["sweep", "ban", "--output", str(tmp_path / "s"), "--seeds", "0,1", "train.lr=[0.1,0.2]",
                 "train.epocs=2"]) == 2
    assert "train.epocs" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_sweep_as_an_array_reports_failures_reruns_only_the_unfinished_and_pools(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    args = ["sweep", "ban", "--output", str(out), "--seeds", "0,1", "--launcher", "submitit-local",
            "model.name=[resnet-8,resnet-nope]", *TINY]
    assert main(args) == 2  # the two runs of the model that does not exist fail; the others finish
    err = capsys.readouterr().err
    assert "2 of 4 sweep run(s) failed" in err and "model.name=resnet-nope/seed-0" in err and "log:" in err
    good = out / "model.name=resnet-8"
    finished = {d: (d / "results.json").stat().st_mtime_ns for d in (good / "seed-0", good / "seed-1")}
    record = json.loads((out / "sweep.json").read_text())
    assert {r["name"]: r["state"] for r in record["runs"]} == {
        "model.name=resnet-8/seed-0": "finished", "model.name=resnet-8/seed-1": "finished",
        "model.name=resnet-nope/seed-0": "failed", "model.name=resnet-nope/seed-1": "failed"}
    config = yaml.safe_load((good / "seed-1" / "config.yaml").read_text())
    assert (config["seed"], config["model"]["name"], config["train"]["epochs"]) == (1, "resnet-8", 1)
    assert main(args) == 2  # the same command again: only the unfinished runs are launched
    record = json.loads((out / "sweep.json").read_text())
    assert record["launched"] == ["model.name=resnet-nope/seed-0", "model.name=resnet-nope/seed-1"]
    assert {d: (d / "results.json").stat().st_mtime_ns for d in finished} == finished
    capsys.readouterr()
    assert main(["report", str(good)]) == 0  # the point's seeds pooled, as a ban.seeds output
    assert "n = 2 seeds (0, 1)" in capsys.readouterr().out
    assert json.loads((good / "results.json").read_text())["runs"] == ["seed-0", "seed-1"]


def test_an_optional_list_key_is_a_grid_axis_only_as_a_list_of_lists():
    fixed, axes = split_grid("ban", ["ban.seeds=[0,1,2]", "train.lr=[0.05,0.1]"])
    assert fixed == ["ban.seeds=[0,1,2]"] and axes == [("train.lr", ["0.05", "0.1"])]
    assert split_grid("ban", ["ban.seeds=[[0],[1,2]]"])[1] == [("ban.seeds", ["[0]", "[1, 2]"])]


def _finish_as_the_engine_records(run_dir, overrides):
    """A finished `train` run's record as the command writes it (settings.json of its resolved config, then
    results.json last), without training one."""
    from bornagain_kd.config import config_to_dict, load_config
    from bornagain_kd.engine.run import record_command
    from bornagain_kd.pipelines.vision_speed import resolve_vision_speed
    from bornagain_kd.vision.config import VisionConfig, vision_settings

    cfg = resolve_vision_speed(load_config(VisionConfig, None, overrides), run_dir)[0]
    run_dir.mkdir(parents=True)
    record_command(run_dir, vision_settings(cfg), config_to_dict(cfg), main=True)
    (run_dir / "results.json").write_text("{}")


def test_a_finished_run_made_with_other_settings_refuses_the_sweep_before_launching(tmp_path, capsys):
    out = tmp_path / "s"
    for seed in (0, 1):
        _finish_as_the_engine_records(out / f"seed-{seed}", [*TINY, f"seed={seed}"])
    same = ["sweep", "train", "--output", str(out), "--seeds", "0,1", *TINY]
    assert main(same) == 0  # the same settings: both runs finished, nothing launched
    assert json.loads((out / "sweep.json").read_text())["launched"] == []
    (out / "sweep.json").unlink()
    assert main([*same, "train.lr=0.3", "train.num_threads=2"]) == 2  # a fixed override changed (threads may)
    err = capsys.readouterr().err
    assert "seed-0: changed: train.lr" in err and "seed-1: changed: train.lr" in err
    assert "num_threads" not in err and not (out / "sweep.json").exists()


def test_a_missing_tracker_library_refuses_the_sweep_before_its_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed: import fails
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "s"
    assert main(["sweep", "train", "--output", str(out), "--seeds", "0", *TINY[:-4],
                 "train.trackers=[mlflow]"]) == 2
    assert 'pip install "bornagain-kd[mlflow]"' in capsys.readouterr().err and not out.exists()


def test_report_of_a_train_sweep_gives_each_grid_points_mean_over_seeds_and_marks_the_best_by_validation(
        tmp_path, capsys):
    """The learning-rate choice docs/ban.md recommends: `sweep train` over a grid, then `report DIR`: one row per
    point, validation and test accuracy as mean ± std over its seeds (from each run's results.json), the best mean
    validation accuracy in bold."""
    out = tmp_path / "lr"
    assert main(["sweep", "train", "--output", str(out), "--seeds", "0,1", "train.lr=[0.01,0.2]",
                 *[a for a in TINY if not a.startswith("ban.")]]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    means = {}
    for point in ("train.lr=0.01", "train.lr=0.2"):
        runs = [json.loads((out / point / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
        means[point] = sum(r["val_accuracy"] for r in runs) / 2
        row = next(line for line in text.splitlines() if f"{point}" in line and "|" in line)
        assert f"| 2 of 2 | {means[point]:.2f} ± " in row
    best = max(means, key=means.get)
    assert f"| **{best}** |" in text and f"Best mean validation accuracy: {best}" in text
    assert main(["report", str(out), "--format", "csv"]) == 0 and "**" not in capsys.readouterr().out
    assert main(["report", str(out), "--output", str(tmp_path / "r")]) == 2
    assert "reported alone" in capsys.readouterr().err
