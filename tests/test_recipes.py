"""Every recipe in configs/ loads under its current keys, the Table 2 rows are comparable, and every recipe runs
end to end at smoke scale through the public API, with its own model, loss, schedule type, generations,
ensembles, seeds and arms, on data of its shape written by the test (recipe_fixtures.py says what is shrunk)."""

import csv
import io
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fixtures import (  # noqa: E402
    GLUE_KINDS, GLUE_TRAIN_EXAMPLES, RECIPES, VISION_KINDS, SmokeData, glue_overrides, read_recipe, recipe_kind,
    vision_overrides,
)

from bornagain_kd.config import load_config, load_yaml  # noqa: E402
from bornagain_kd.engine.settings import flatten  # noqa: E402
from bornagain_kd.glue.config import GlueExperimentConfig  # noqa: E402
from bornagain_kd.glue.tasks import get_task  # noqa: E402
from bornagain_kd.vision.config import VisionConfig  # noqa: E402

CONFIGS = RECIPES


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads_without_renamed_keys(path):
    cls = GlueExperimentConfig if path.name.startswith(("glue", "bam")) else VisionConfig
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recipe under an old key name would warn
        load_config(cls, path)


def _dropouts(model: torch.nn.Module) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("table2-match-wrn")], ids=lambda p: p.name)
def test_table2_wide_resnet_students_use_the_baselines_dropout(path):
    """The paper regularises wide-ResNets with dropout (0.3 in the WRN baselines): the Match-WRN students and their
    label-only baselines must get it too, and the DenseNet teacher none."""
    from bornagain_kd.pipelines.ban import build_model, generation_model_name

    class Data:  # what build_model reads of the prepared data
        num_classes, in_channels = 100, 3

    cfg = load_config(VisionConfig, path)
    baseline = load_config(VisionConfig, path.parent / "table2-baseline-wrn-28-10.yaml")
    with torch.device("meta"):
        student = build_model(cfg, generation_model_name(cfg, 1), Data)
        teacher = build_model(cfg, generation_model_name(cfg, 0), Data)
    assert _dropouts(student) == {baseline.model.dropout} == {0.3}
    assert _dropouts(teacher) == set()


# ------------------------------------------------------------------------- every recipe, end to end


@dataclass
class Run:
    """One recipe run at smoke scale: its kind, resolved config, the overrides that shrank it, its output."""

    path: Path
    kind: str
    cfg: object
    overrides: list[str]
    output: Path
    results: dict


class RecipeRuns:
    """Runs recipes once each (a Table 1 run that teaches Table 2 recipes is the same run as its own test's)."""

    def __init__(self, root: Path):
        self.root, self.data = root, SmokeData(root / "data")
        self._done: dict[str, Run | BaseException] = {}

    def run(self, path: Path) -> Run:
        if path.name not in self._done:
            try:
                self._done[path.name] = self._run(path)
            except BaseException as err:  # noqa: BLE001 - kept, so a dependent recipe reports it too
                self._done[path.name] = err
                raise
        done = self._done[path.name]
        if isinstance(done, BaseException):
            pytest.fail(f"{path.name} failed earlier in this module: {type(done).__name__}: {done}")
        return done

    def _run(self, path: Path) -> Run:
        from bornagain_kd import api  # noqa: PLC0415

        tree = read_recipe(path)
        kind = recipe_kind(tree)
        if kind in VISION_KINDS:
            overrides = vision_overrides(tree, self.data)
            reused = (tree.get("ban") or {}).get("teacher_run")
            if reused and "{seed}" in reused:
                # one teacher per seed from another recipe's ban.seeds run (OUTPUT/seed-{seed}/gen0)
                overrides.append(f"ban.teacher_run={self.run(seeds_recipe(path, reused)).output}/seed-{{seed}}/gen0")
            elif reused:
                # a Table 2 recipe: its comments say to train the teacher once (a Table 1 run) and point
                # ban.teacher_run at its gen0/
                overrides.append(f"ban.teacher_run={self.run(teacher_recipe(path, tree)).output / 'gen0'}")
            cfg = load_config(VisionConfig, path, overrides)
        else:
            overrides = glue_overrides(tree, self.data)
            cfg = load_config(GlueExperimentConfig, path, overrides)
        entry = {"ban": api.run_ban, "train": api.train, "glue-teachers": api.glue_teachers, "bam": api.bam}[kind]
        output = self.root / "runs" / path.stem
        threads = torch.get_num_threads()
        try:
            results = entry(path, overrides=overrides, output=output)
        finally:
            torch.set_num_threads(threads)  # a recipe's train.num_threads stays with its run
        return Run(path, kind, cfg, overrides, output, results)


def teacher_recipe(path: Path, tree: dict) -> Path:
    """The recipe that trains the teacher a recipe with ban.teacher_run reuses: a plain `ban` recipe of the same
    model and data (no student architecture, no reused teacher, no seeds), a Table 1 one first."""
    def plain(p: Path) -> bool:
        t = read_recipe(p)
        try:
            if p == path or recipe_kind(t) != "ban":
                return False
        except ValueError:  # unclassifiable: its own test fails
            return False
        ban = t.get("ban") or {}
        return (t["model"] == {"name": tree["model"]["name"]} and t["data"] == tree["data"]
                and not ban.get("student_model") and "teacher_run" not in ban and not ban.get("seeds"))

    found = sorted((p for p in RECIPES if plain(p)), key=lambda p: (not p.name.startswith("table1-"), p.name))
    if not found:
        pytest.fail(f"{path.name} reuses a teacher (ban.teacher_run), but no recipe in configs/ trains a "
                    f"{tree['model']['name']} on its data")
    return found[0]


def seeds_recipe(path: Path, teacher_run: str) -> Path:
    """The recipe whose `ban.seeds` run a ban.teacher_run=OUTPUT/seed-{seed}/gen0 names by its output_dir."""
    output = teacher_run.split("/seed-{seed}")[0]
    found = [p for p in RECIPES if p != path and read_recipe(p).get("output_dir") == output]
    if len(found) != 1 or not (read_recipe(found[0]).get("ban") or {}).get("seeds"):
        pytest.fail(f"{path.name}: ban.teacher_run={teacher_run} names no recipe of configs/ with output_dir={output} "
                    "and ban.seeds")
    return found[0]


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    yield RecipeRuns(root)
    shutil.rmtree(root / "runs", ignore_errors=True)  # gigabytes of weights (wrn-28-20 alone: 0.6 GB per copy)


@pytest.mark.parametrize("tree, kind", [
    ({"data": {"name": "cifar100"}, "model": {"name": "wrn-28-10"}}, "train"),
    ({"data": {}, "model": {}, "ban": {"generations": 1}}, "ban"),
    ({"glue": {}, "encoder": {}, "train": {}}, "glue-teachers"),
    ({"glue": {}, "encoder": {}, "bam": {}}, "bam"),
])
def test_the_kind_of_run_comes_from_the_recipes_sections(tree, kind):
    assert recipe_kind(tree) == kind


@pytest.mark.parametrize("tree", [{"seed": 0, "train": {"epochs": 1}}, {"model": {}, "ban": {}},
                                  {"data": {}, "model": {}, "encoder": {}}, {"bam": {}, "ban": {}}])
def test_a_recipe_of_no_known_kind_is_refused_not_skipped(tree):
    with pytest.raises(ValueError):
        recipe_kind(tree)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_runs_end_to_end_at_smoke_scale(path, recipe_runs):
    try:
        kind = recipe_kind(read_recipe(path))
    except ValueError as err:  # a recipe this test cannot classify fails it
        pytest.fail(f"{path.name}: {err}; teach tests/recipe_fixtures.recipe_kind about it")
    run = recipe_runs.run(path)
    assert run.kind == kind
    CHECKS[kind](run)
    _check_recipe_settings_kept(run)


# ------------------------------------------------------------------------- what each kind must have written


def _csv_blocks(path: Path) -> list[list[list[str]]]:
    """The CSV tables of a table.csv (separated by blank lines), each as rows of cells."""
    return [list(csv.reader(io.StringIO(block))) for block in path.read_text().split("\n\n") if block.strip()]


def _finished(run_dir: Path) -> dict:
    """A finished run directory (engine contract): results.json, final weights, no checkpoint left."""
    from bornagain_kd.files import read_json  # noqa: PLC0415

    assert (run_dir / "results.json").is_file(), f"{run_dir} did not finish (no results.json)"
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "checkpoint.safetensors").exists()
    return read_json(run_dir / "results.json")


def _expected_ensembles(cfg) -> list[str]:
    """Ens*k over the last k students (the teacher counted with include_teacher_in_ensembles) where k fits, then
    All over every generation (models/ensembles: windows larger than the sequence are skipped)."""
    members = cfg.ban.generations + (1 if cfg.ban.include_teacher_in_ensembles else 0)
    return [f"Ens*{k}" for k in cfg.ban.ensembles if 2 <= k <= members] + (["All"] if cfg.ban.generations else [])


def _expected_controls(cfg) -> list[str]:
    """The control columns after the ensembles: Ind*K per Ens*K, the label-smoothing student, then the longer-trained
    teacher and the doubled-label student."""
    independent = [f"Ind*{k}" for k in cfg.ban.ensembles if 2 <= k <= cfg.ban.generations]
    return [*(independent if "independent" in cfg.ban.controls else []),
            *(["label smoothing"] if "label_smoothing" in cfg.ban.controls else []),
            *(["longer"] if "longer" in cfg.ban.controls else []),
            *(["doubled label"] if "doubled_label" in cfg.ban.controls else [])]


def _check_ban_sequence(cfg, out: Path, results: dict) -> None:
    """One born-again sequence in ``out``: every generation finished, the baseline, the ensembles, the tables."""
    g_last = cfg.ban.generations
    student = cfg.ban.student_model or cfg.model.name
    assert [g["generation"] for g in results["generations"]] == list(range(g_last + 1))
    assert [g["model"] for g in results["generations"]] == [cfg.model.name] + [student] * g_last
    assert results["model"] == cfg.model.name and results["student_model"] == student
    assert results["loss"] == cfg.ban.loss and results["normalize_loss_weights"] == cfg.ban.normalize_loss_weights
    label_w, teacher_w, temperature = cfg.ban.weights()
    assert results["loss_weights"] == {"label_weight": label_w, "teacher_weight": teacher_w,
                                       "temperature": temperature}
    if cfg.ban.teacher_run:
        from bornagain_kd.vision.config import teacher_run_dir  # noqa: PLC0415

        assert results["generations"][0]["teacher_run"] == teacher_run_dir(cfg) and not (out / "gen0").exists()
        _finished(Path(teacher_run_dir(cfg)))
    else:
        assert _finished(out / "gen0")["loss"] == "ce"
    for g in range(1, g_last + 1):
        gen = _finished(out / f"gen{g}")
        assert gen["generation"] == g and gen["model"] == student and gen["loss"] == cfg.ban.loss
        assert gen["teacher_dir"] == f"gen{g - 1}" and gen["epochs"] == cfg.train.epochs
        assert (out / f"gen{g}" / "test_probs.safetensors").is_file()
    if cfg.ban.student_baseline:
        assert _finished(out / "baseline")["model"] == student
        assert results["student_baseline"]["model"] == student
    else:
        assert results["student_baseline"] is None and not (out / "baseline").exists()
    assert [e["name"] for e in results["ensembles"]] == _expected_ensembles(cfg)

    # Table 1 layout: Baseline (the teacher), BAN-1..BAN-k, the ensembles; Table 2 where a baseline was trained
    blocks = _csv_blocks(out / "table.csv")
    header, *rows = blocks[0]
    columns = [c for c in header if c in ("Baseline (teacher)", "All") or c.startswith(("BAN-", "Ens*"))]
    assert header[0] == "Network" and columns == ["Baseline (teacher)", *[f"BAN-{k}" for k in range(1, g_last + 1)],
                                                  *_expected_ensembles(cfg)]
    network = cfg.model.name if student == cfg.model.name else f"{cfg.model.name} -> {student}"
    assert [row[0] for row in rows] == [network]
    if cfg.ban.student_baseline:
        header2, *rows2 = blocks[1]
        assert header2[:6] == ["Network", "Parameters", "Baseline (labels only)", "BAN", "Teacher", "Teacher error"]
        assert [(row[0], row[4]) for row in rows2] == [(student, cfg.model.name)]  # the student model's row
    else:
        assert len(blocks) == 1
    assert (out / "table.md").read_text().startswith("Test error")
    controls = results.get("controls", {})
    assert sorted(controls) == sorted(cfg.ban.controls)
    if "independent" in controls:
        assert [e["name"] for e in controls["independent"]["ensembles"]] == [
            f"Ind*{k}" for k in cfg.ban.ensembles if 2 <= k <= cfg.ban.generations]
    if "label_smoothing" in controls:
        assert _finished(out / "controls" / f"label-smoothing-{cfg.ban.label_smoothing[0]}")["model"] == student


def check_ban(run: Run) -> None:
    cfg, out = run.cfg, run.output
    if cfg.ban.seeds is None:
        assert (out / "results.json").is_file()
        _check_ban_sequence(cfg, out, run.results)
        assert (out / "generations.png").is_file()
        return
    # ban.seeds: one complete sequence per seed, then the aggregate over the seeds
    import dataclasses  # noqa: PLC0415

    from bornagain_kd.files import read_json  # noqa: PLC0415

    for seed in cfg.ban.seeds:
        sub = dataclasses.replace(cfg, seed=seed, ban=dataclasses.replace(cfg.ban, seeds=None))
        seed_out = out / f"seed-{seed}"
        assert load_yaml(seed_out / "config.yaml")["seed"] == seed
        _check_ban_sequence(sub, seed_out, read_json(seed_out / "results.json"))
    agg = read_json(out / "results.json")
    assert agg["seeds"] == list(cfg.ban.seeds) and agg["runs"] == [f"seed-{s}" for s in cfg.ban.seeds]
    names = ["teacher", *[f"BAN-{k}" for k in range(1, cfg.ban.generations + 1)],
             *(["student baseline"] if cfg.ban.student_baseline else []), *_expected_ensembles(cfg),
             *_expected_controls(cfg)]
    assert [c["name"] for c in agg["columns"]] == names
    assert all(c["test_error"]["n"] == len(cfg.ban.seeds) for c in agg["columns"])
    header, *rows = _csv_blocks(out / "table.csv")[0]
    assert header[:4] == ["Network", "Parameters", "Metric", "n"]
    assert header[4:4 + len(names)] == ["Baseline (teacher)", *[n[0].upper() + n[1:] for n in names[1:]]]
    assert {row[3] for row in rows} == {str(len(cfg.ban.seeds))}
    assert (out / "table.md").is_file() and (out / "generations.png").is_file()


def check_train(run: Run) -> None:
    cfg, out = run.cfg, run.output
    result = _finished(out)
    assert result == run.results and result["model"] == cfg.model.name and result["run"] == "train"
    assert result["epochs"] == cfg.train.epochs
    assert (out / "test_probs.safetensors").is_file() and (out / "val_probs.safetensors").is_file()


def _expected_submissions(cfg, task: str) -> list[str]:
    """The GLUE server files a teacher writes (the test writes every task's test files)."""
    files = get_task(task).submission_files if cfg.glue.test_submissions else ()
    return [f"submission/{name}" for name in files]


def _check_teacher(cfg, run_dir: Path, task: str) -> None:
    teacher = _finished(run_dir)
    assert teacher["task"] == task and teacher["num_train_examples"] == GLUE_TRAIN_EXAMPLES
    assert set(get_task(task).score_keys) <= set(teacher["dev_metrics"])
    assert teacher["submission_files"] == _expected_submissions(cfg, task)
    assert all((run_dir / f).is_file() for f in teacher["submission_files"])
    assert (run_dir / "train_predictions.safetensors").is_file()


def check_glue_teachers(run: Run) -> None:
    cfg, out = run.cfg, run.output
    tasks = list(cfg.glue.tasks)
    assert list(run.results["tasks"]) == tasks and list(run.results["teachers"]) == tasks
    for task in tasks:
        _check_teacher(cfg, out / "teachers" / task, task)
    assert (out / "teachers" / "summary.json").is_file()


def check_bam(run: Run) -> None:
    from bornagain_kd.files import read_json  # noqa: PLC0415
    from bornagain_kd.pipelines.bam import teacher_dir, teacher_seed_of  # noqa: PLC0415
    from bornagain_kd.reports.bam_tables import ROW_TITLES  # noqa: PLC0415

    cfg, out = run.cfg, run.output
    seeds, arms, tasks = list(cfg.bam.seeds), list(cfg.bam.targets), list(cfg.glue.tasks)
    saved = read_json(out / "results.json")
    assert set(saved["rows"]) == {"majority", "teachers", *arms} and len(saved["rows"]) == len(arms) + 2
    teacher_seeds = sorted({teacher_seed_of(cfg, s) for s in seeds})
    assert teacher_seeds == (seeds if cfg.bam.teacher_per_seed else [cfg.seed])
    for teacher_seed in teacher_seeds:
        for task in tasks:
            _check_teacher(cfg, teacher_dir(out, cfg, task, teacher_seed), task)
    assert sorted(saved["metrics"]["teachers"]) == [str(s) for s in teacher_seeds]
    for arm in arms:
        assert sorted(saved["metrics"][arm]) == sorted(str(s) for s in seeds)  # every seed of every arm
        for seed in seeds:
            student = _finished(out / "students" / arm / f"seed{seed}")
            assert set(student["dev_metrics"]) == set(tasks)
            assert set(saved["metrics"][arm][str(seed)]) == set(tasks)
        assert all(saved["summary"][arm][c]["n"] == len(seeds) for c in (*tasks, "GLUE"))
    assert saved["teacher_seeds"] == {str(s): teacher_seed_of(cfg, s) for s in seeds}
    assert saved["test"] == {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}[cfg.bam.paired_test]
    comparisons = [f"annealed vs {other}" for other in ("teachers", "labels", "fixed", "smoothing-annealed")
                   if "annealed" in arms and (other == "teachers" or other in arms)]
    assert sorted(saved["tests"]) == sorted(comparisons)
    table = (out / "table.md").read_text()
    assert all(ROW_TITLES[row] in table for row in saved["rows"])
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,task,mean,std,n")


CHECKS = {"ban": check_ban, "train": check_train, "glue-teachers": check_glue_teachers, "bam": check_bam}
assert set(CHECKS) == {*VISION_KINDS, *GLUE_KINDS}


def _saved_config(run: Run) -> dict:
    if run.kind == "bam":
        return load_yaml(run.output / "bam_config.yaml")
    if run.kind == "glue-teachers":
        return load_yaml(run.output / "teachers" / run.cfg.glue.tasks[0] / "config.yaml")
    return load_yaml(run.output / "config.yaml")


def _check_recipe_settings_kept(run: Run) -> None:
    """Every key the recipe sets and the test did not override is recorded with the recipe's value: the run was
    the recipe's (its model, loss, arms, seeds, schedule, ensembles...), only smaller."""
    overridden = {o.split("=", 1)[0] for o in run.overrides} | {"output_dir"}
    recorded = flatten(_saved_config(run))
    recipe = flatten(read_recipe(run.path))
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    kept = {k: v for k, v in recipe.items() if k not in overridden}
    assert {k: norm(recorded.get(k)) for k in kept} == {k: norm(v) for k, v in kept.items()}
