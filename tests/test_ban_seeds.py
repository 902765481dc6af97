"""`ban.seeds` end to end and `bornagain report` over seeds: each seed's run is the single-seed run, a killed
seed resumes, the aggregate is the statistics of the seed runs' own files, differing configs are refused."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats as scipy_stats

from bornagain_kd.cli import main

TINY = ["train.epochs=2", "model.name=resnet-8", "train.batch_size=64", "train.progress=false",
        "train.trackers=[]", "train.num_threads=1", "data.train_subset=300", "data.val_size=60",
        "ban.generations=2"]


def _cli(out, *extra, kill_at=None):
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1")
    env.pop("BORNAGAIN_KILL_AT_STEP", None)
    if kill_at is not None:
        env["BORNAGAIN_KILL_AT_STEP"] = kill_at
    return subprocess.run([sys.executable, "-m", "bornagain_kd", "ban", "--output", str(out), *TINY, *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def _untimed(gens):
    return [{k: v for k, v in g.items() if k != "train_seconds"} for g in gens]


def _correct(run, *gens):
    probs = [load_file(str(run / f"gen{g}" / "test_probs.safetensors")) for g in gens]
    mean = torch.stack([p["probs"].double() for p in probs]).mean(0)
    return (mean.argmax(1) == probs[0]["labels"]).numpy()


@pytest.mark.slow
def test_three_seeds_killed_and_resumed_aggregate_the_seed_runs(tmp_path, capsys):
    out = tmp_path / "seeds"
    # 240 training images / 64 = 4 steps an epoch: gen1's step 6 is mid epoch 2 of seed 0's first student
    killed = _cli(out, "ban.seeds=[0,1,2]", kill_at="gen1:6")
    assert killed.returncode == -signal.SIGKILL
    assert (out / "seed-0" / "gen1" / "checkpoint.safetensors").exists() and not (out / "seed-1").exists()
    assert not (out / "results.json").exists()
    stamp = (out / "seed-0" / "gen0" / "model.safetensors").stat().st_mtime_ns
    resumed = _cli(out, "ban.seeds=[0,1,2]", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "seed-0" / "gen0" / "model.safetensors").stat().st_mtime_ns == stamp  # finished: not retrained
    assert "Paired t over seeds" in resumed.stdout
    # says what it does: the teacher reused, the student continued from its last checkpoint (epoch 1's end)
    assert f"bornagain: {out / 'seed-0' / 'gen0'} is finished: reused, not retrained" in resumed.stdout
    assert f"bornagain: resuming {out / 'seed-0' / 'gen1'} from step 4 (epoch 2, batch 0 of 4)" in resumed.stdout

    # seed-<s> is exactly `bornagain ban seed=s`, killed or not
    _ban(tmp_path, "single", "seed=0", epochs=2)
    seed0 = json.loads((out / "seed-0" / "results.json").read_text())
    alone = json.loads((tmp_path / "single" / "results.json").read_text())
    assert _untimed(seed0["generations"]) == _untimed(alone["generations"])
    for s in (0, 1, 2):
        assert "seed: %d" % s in (out / f"seed-{s}" / "config.yaml").read_text()

    agg = json.loads((out / "results.json").read_text())
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1, 2)]
    columns = {c["name"]: c for c in agg["columns"]}
    assert list(columns) == ["teacher", "BAN-1", "BAN-2", "Ens*2", "All"]
    ban2 = [r["generations"][2]["test_error"] for r in runs]
    teacher = [r["generations"][0]["test_error"] for r in runs]
    assert columns["BAN-2"]["test_error"]["mean"] == pytest.approx(np.mean(ban2))
    assert columns["BAN-2"]["test_error"]["std"] == pytest.approx(np.std(ban2, ddof=1))
    assert columns["BAN-2"]["test_error"]["n"] == 3
    assert columns["All"]["ece"]["values"] == [next(e["ece"] for e in r["ensembles"] if e["name"] == "All")
                                               for r in runs]
    assert columns["teacher"]["nll"]["values"] == [r["generations"][0]["test_nll"] for r in runs]

    tests = {(c["a"], c["b"]): c for c in agg["comparisons"]}
    t = tests[("BAN-2", "teacher")]
    reference = scipy_stats.ttest_rel(ban2, teacher)
    if math.isnan(t["paired_t"]["p_value"]):  # equal differences: undefined, see test_seed_stats
        assert len(set(np.subtract(ban2, teacher))) == 1
    else:
        assert t["paired_t"]["p_value"] == pytest.approx(reference.pvalue)
    for s, per_seed in zip((0, 1, 2), t["mcnemar"]):
        a, b = _correct(out / f"seed-{s}", 2), _correct(out / f"seed-{s}", 0)
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
        assert (per_seed["only_a_correct"], per_seed["only_b_correct"]) == (only_a, only_b)
        if only_a + only_b:
            assert per_seed["p_value"] == pytest.approx(scipy_stats.binomtest(only_a, only_a + only_b).pvalue)
    ens = tests[("Ens*2", "teacher")]["mcnemar"][1]
    a, b = _correct(out / "seed-1", 1, 2), _correct(out / "seed-1", 0)
    assert (ens["only_a_correct"], ens["only_b_correct"]) == (int(np.sum(a & ~b)), int(np.sum(~a & b)))
    pooled = t["mcnemar_pooled"]  # one exact binomial test on the discordant counts summed over seeds
    assert pooled["only_a_correct"] == sum(s["only_a_correct"] for s in t["mcnemar"])
    assert pooled["only_b_correct"] == sum(s["only_b_correct"] for s in t["mcnemar"])
    assert agg["tests"]["mcnemar_pooled"].startswith("McNemar's exact test pooled over seeds")
    assert agg["loss"] == runs[0]["loss"] and agg["loss_weights"] == runs[0]["loss_weights"]
    for name in ("table.md", "table.csv", "table.tex", "generations.png", "generations.pdf", "reliability.png",
                 "curves.png", "curves.pdf"):
        assert (out / name).stat().st_size > 0, name

    # --resume with another config is refused, naming the key
    assert main(["ban", "--output", str(out), "--resume", *TINY, "ban.seeds=[0,1,2]", "train.lr=0.05"]) == 2
    assert "train.lr" in capsys.readouterr().err


def _ban(tmp_path, name, *extra, epochs=1):
    """One sequence in this process, without plots (the seed test draws them)."""
    from bornagain_kd.config import load_config
    from bornagain_kd.pipelines.ban import run_ban
    from bornagain_kd.vision.config import VisionConfig

    out = tmp_path / name
    run_ban(load_config(VisionConfig, None, [*TINY, f"train.epochs={epochs}", *extra]), out, resume=False, plots=False)
    return str(out)


def test_report_pools_seeds_refuses_other_configs_and_writes_latex(tmp_path, capsys, monkeypatch):
    a = _ban(tmp_path, "a", "seed=0")
    b = _ban(tmp_path, "b", "seed=1", "train.checkpoint_every_steps=2")  # how it ran: may differ
    assert main(["report", a, b, "--output", str(tmp_path / "pooled")]) == 0
    out = capsys.readouterr().out
    assert "over n = 2 seeds (0, 1)" in out and "| BAN-1 - Teacher |" in out
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["kind"] == "ban-seeds" and pooled["seeds"] == [0, 1]
    # the written folder reports again: it finds its runs, also where they were given relative to the working folder
    monkeypatch.chdir(tmp_path)
    assert main(["report", "a", "b", "--output", "reports/pooled"]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "reports" / "pooled")]) == 0
    assert "over n = 2 seeds (0, 1)" in capsys.readouterr().out
    assert main(["report", a, b, "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex and "Ens$\\ast$2" in latex
    assert main(["report", a, b, "--per-run"]) == 0  # one row per run, as before
    assert capsys.readouterr().out.count("| resnet-8 |") == 2
    # how sure: each comparison's interval, minimum detectable effect and reading, and the seeds an effect needs
    assert main(["report", a, b, "--effect", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "| 95% interval | Minimum detectable effect |" in out and "- BAN-1 - teacher: " in out
    assert "seeds would detect 0.30 points with 80% power" in out or "seeds up to 100,000 would detect" in out
    power = pooled["comparisons"][0]["power"]
    assert power["n"] == 2 and power["ci_low"] <= power["mean_difference"] <= power["ci_high"]
    assert main(["report", a, b, "--per-run", "--effect", "0.3"]) == 2  # nothing to size without pooling
    assert "--effect sizes the seeds a pooled comparison needs" in capsys.readouterr().err

    c = _ban(tmp_path, "c", "seed=2", "train.lr=0.05", "data.augment=false")
    assert main(["report", a, c]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bornagain: error: cannot pool")
    assert "data.augment, train.lr" in err[0]


@pytest.mark.parametrize("overrides, message", [
    (["ban.seeds=[]"], "is empty"),
    (["ban.seeds=[0,1,0]"], "repeats a seed"),
    (["ban.seeds=[0,1]", "ban.teacher_run=somewhere"], "put {seed} in the path"),
])
def test_bad_seed_lists_are_refused_in_one_line(tmp_path, capsys, overrides, message):
    assert main(["ban", "--output", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_seeds_reuse_one_teacher_per_seed_through_the_seed_field(tmp_path):
    """ban.teacher_run=.../seed-{seed}/gen0 with ban.seeds: each seed's students learn from that seed's teacher
    (another loss over the same teachers), nothing retrained; the configs keep the path as written."""
    first = tmp_path / "first"
    assert main(["ban", "--output", str(first), *TINY, "ban.generations=1", "ban.ensembles=[]",
                 "ban.seeds=[0,1]"]) == 0
    stamps = {s: (first / f"seed-{s}" / "gen0" / "model.safetensors").stat().st_mtime_ns for s in (0, 1)}
    other = tmp_path / "paper"
    assert main(["ban", "--output", str(other), *TINY, "ban.generations=1", "ban.ensembles=[]",
                 "ban.seeds=[0,1]", "ban.normalize_loss_weights=false",
                 f"ban.teacher_run={first}/seed-{{seed}}/gen0"]) == 0
    for s in (0, 1):
        assert (first / f"seed-{s}" / "gen0" / "model.safetensors").stat().st_mtime_ns == stamps[s]
        assert not (other / f"seed-{s}" / "gen0").exists()
        mine = json.loads((other / f"seed-{s}" / "results.json").read_text())["generations"][0]
        theirs = json.loads((first / f"seed-{s}" / "results.json").read_text())["generations"][0]
        assert mine["test_error"] == theirs["test_error"] and mine["teacher_run"] == str(first / f"seed-{s}" / "gen0")
    # every seed records the path as written, so the seeds pool as one experiment in `report`
    assert all("seed-{seed}/gen0" in (other / d / "config.yaml").read_text() for d in (".", "seed-0", "seed-1"))
    assert main(["report", str(other)]) == 0 and main(["report", str(other / "seed-0"), str(other / "seed-1")]) == 0
    # seed 0's teacher is refused as seed 1's: the template is what keeps the seeds apart
    with pytest.raises(Exception, match="changed: seed"):
        from bornagain_kd.config import load_config
        from bornagain_kd.pipelines.ban import run_ban
        from bornagain_kd.vision.config import VisionConfig
        cfg = load_config(VisionConfig, None, [*TINY, "ban.generations=1", "ban.ensembles=[]", "seed=1",
                                               f"ban.teacher_run={first}/seed-0/gen0"])
        run_ban(cfg, tmp_path / "wrong", resume=False)
