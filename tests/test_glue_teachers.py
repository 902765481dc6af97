"""End to end on CPU: tiny GLUE folder + tiny BERT -> teachers, cached predictions, submission, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sys

sys.path.insert(0, str(Path(__file__).parent))
import bam_fixtures  # noqa: E402

from bornagain_kd.config import load_config
from bornagain_kd.engine.checkpoint import load_weights
from bornagain_kd.errors import UserError
from bornagain_kd import cli
from bornagain_kd.pipelines import glue_teachers as teachers
from bornagain_kd.glue.config import GlueExperimentConfig
from bornagain_kd.glue.data import load_train_examples
from bornagain_kd.glue.data import load_split
from bornagain_kd.files import json_safe
from bornagain_kd.glue.evaluation import Predicting, evaluate_dev, predict_outputs
from bornagain_kd.glue.model import build_model
from bornagain_kd.glue.submission import read_submission
from bornagain_kd.glue.tasks import get_task
from bornagain_kd.glue.tokenization import encode_examples, load_tokenizer

WORDS = "the a man woman dog cat is was runs sleeps big small red good bad not very".split()


def _sentence(rng, last: str) -> str:
    return " ".join([*rng.choice(WORDS, size=int(rng.integers(2, 7))), last])


def write_tiny_glue(root: Path, n_train: int = 24, n_dev: int = 10) -> Path:
    """RTE (pairs, string labels, test file), STS-B (regression), CoLA (no header row)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", 6)):
        rte = ["index\tsentence1\tsentence2" + ("" if split == "test" else "\tlabel")]
        sts = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
               + ("" if split == "test" else "\tscore")]
        cola = [] if split != "test" else ["index\tsentence"]
        for i in range(n):
            good = i % 2 == 0
            label = "entailment" if good else "not_entailment"
            rte.append(f"{i}\t{_sentence(rng, 'good')}\t\"{_sentence(rng, 'good' if good else 'bad')}\""
                       + ("" if split == "test" else f"\t{label}"))
            sts.append(f"{i}\tg\tf\t2012\t{i}\tnone\tnone\t{_sentence(rng, 'red')}\t{_sentence(rng, 'big')}"
                       + ("" if split == "test" else f"\t{5.0 * (i % 5) / 4:.3f}"))
            cola.append(f"{i}\t{_sentence(rng, 'dog')}" if split == "test"
                        else f"src\t{int(good)}\t\t{_sentence(rng, 'good' if good else 'bad')}")
        for task, lines in (("RTE", rte), ("STS-B", sts), ("CoLA", cola)):
            (root / task).mkdir(parents=True, exist_ok=True)
            (root / task / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_tiny_encoder(root: Path) -> Path:
    return bam_fixtures.write_tiny_encoder(root, num_hidden_layers=2)


@pytest.fixture
def setup(tmp_path):
    data = write_tiny_glue(tmp_path / "glue")
    encoder = write_tiny_encoder(tmp_path / "encoder")
    overrides = [f"glue.data_dir={data}", "glue.tasks=[RTE,STS-B,CoLA]", f"encoder.name_or_path={encoder}",
                 "encoder.from_scratch=true", "max_seq_length=24", "train.epochs=2", "train.batch_size=8",
                 "train.log_every_steps=1", "train.device=cpu", "train.progress=false", "optim.lr=0.001"]
    return tmp_path, overrides


def test_teachers_end_to_end(setup, capsys):
    tmp_path, overrides = setup
    out = tmp_path / "run"
    cli.glue_teachers_command(None, str(out), False, overrides)
    assert "GLUE average over 3 task(s)" in capsys.readouterr().out
    cfg = load_config(GlueExperimentConfig, None, overrides)
    tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
    runs = teachers.ensure_teachers(cfg, out)  # all finished: loaded, not retrained
    for name, run in runs.items():
        task, run_dir = get_task(name), out / "teachers" / name
        results = json.loads((run_dir / "results.json").read_text())
        assert set(results["dev_metrics"]) == {*task.score_keys, "score"}
        assert results["majority_baseline"]["score"] is not None
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2 * 3 + 2  # 3 steps + 1 dev line per epoch
        # the cache holds this teacher's outputs on its own training set, in id order
        train = load_train_examples(cfg, name)
        cache = run.load_predictions(train, tokenizer=tokenizer, max_seq_length=cfg.max_seq_length)
        model = load_weights(build_model(cfg, [name]), run.weights_path)
        expected = predict_outputs(model, encode_examples(task, train, tokenizer, cfg.max_seq_length), task,
                                   Predicting(torch.device("cpu")))
        assert torch.allclose(cache.lookup([e.id for e in train]), expected, atol=1e-5)
        # the reported dev metrics are the final weights' (kept from the last epoch's evaluation)
        dev = {s: encode_examples(task, load_split(task, s, data_dir=cfg.glue.data_dir, source="tsv"), tokenizer,
                                  cfg.max_seq_length) for s in task.dev_splits}
        fresh = json_safe(evaluate_dev(model, dev, task, Predicting(torch.device("cpu"))))
        assert fresh.keys() == results["dev_metrics"].keys()
        assert all(fresh[k] == pytest.approx(results["dev_metrics"][k], abs=1e-6, nan_ok=True) for k in fresh)
        assert cache.outputs.shape == ((24,) if task.is_regression else (24, task.num_labels))
        # a submission file in the GLUE server format
        rows = read_submission(run_dir / "submission" / task.submission_files[0])
        assert [i for i, _ in rows] == list(range(6))
        if task.is_regression:
            assert all(0.0 <= float(p) <= 5.0 for _, p in rows)
        else:
            assert {p for _, p in rows} <= set(task.tsv_labels)
    summary = json.loads((out / "teachers" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"RTE", "STS-B", "CoLA"}
    from bornagain_kd.reports.runs import report_command

    assert "| STS-B |" in report_command([str(out)])  # `bornagain report` reads a glue-teachers output too
    # other examples (here: a subsample) are refused
    sub = load_train_examples(load_config(GlueExperimentConfig, None, [*overrides, "glue.max_train_examples=10"]), "RTE")
    with pytest.raises(UserError, match="do not match"):
        runs["RTE"].load_predictions(sub, tokenizer=tokenizer, max_seq_length=cfg.max_seq_length)


def test_finished_teacher_is_not_retrained_and_settings_are_checked(setup, monkeypatch):
    tmp_path, overrides = setup
    overrides = [*overrides, "glue.tasks=[RTE]", "train.epochs=1"]
    cli.glue_teachers_command(None, str(tmp_path / "run"), False, overrides)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished teacher was retrained")

    monkeypatch.setattr(teachers, "build_model", no_training)
    cli.glue_teachers_command(None, str(tmp_path / "run"), False, overrides)
    cli.glue_teachers_command(None, str(tmp_path / "run"), True, [*overrides, "train.progress=true"])
    # the test-set predictions are an output, not a setting: a reuse that would not write them is no change
    cli.glue_teachers_command(None, str(tmp_path / "run"), True, [*overrides, "glue.test_submissions=false"])
    with pytest.raises(UserError, match="other settings.*optim"):
        cli.glue_teachers_command(None, str(tmp_path / "run"), False, [*overrides, "optim.lr=0.01"])


class Interrupted(Exception):
    pass


def test_teacher_without_test_submissions_writes_none(setup):
    tmp_path, overrides = setup
    cli.glue_teachers_command(None, str(tmp_path / "run"), False,
                              [*overrides, "glue.tasks=[RTE]", "train.epochs=1", "glue.test_submissions=false"])
    results = json.loads((tmp_path / "run" / "teachers" / "RTE" / "results.json").read_text())
    assert results["submission_files"] == [] and not (tmp_path / "run" / "teachers" / "RTE" / "submission").exists()
    assert results["dev_metrics"]["score"] is not None


def test_resume_after_interruption_matches_an_uninterrupted_run(setup, monkeypatch):
    tmp_path, overrides = setup
    # 24 examples / batch 8 = 3 steps per epoch; a checkpoint at step 2 falls mid-epoch
    overrides = [*overrides, "glue.tasks=[RTE]", "train.checkpoint_every_steps=2"]
    cli.glue_teachers_command(None, str(tmp_path / "straight"), False, overrides)

    # killed at step 2, before any checkpoint: a plain rerun starts over. Step records are read and written in
    # batches (at checkpoints, at epoch ends, every 32 records), so the killed run has written none yet; the
    # run killed after its checkpoint below checks that a resume leaves no stale or duplicated lines.
    real_loss, steps_done = teachers.TeacherTask.loss, []

    def step_then_die(*args, **kwargs):
        if len(steps_done) == 1:
            raise Interrupted
        steps_done.append(1)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(teachers.TeacherTask, "loss", step_then_die)
    with pytest.raises(Interrupted):
        cli.glue_teachers_command(None, str(tmp_path / "resumed"), False, overrides)
    log = tmp_path / "resumed" / "teachers" / "RTE" / "metrics.jsonl"
    assert not log.exists() or log.read_text() == ""
    monkeypatch.setattr(teachers.TeacherTask, "loss", real_loss)

    import bornagain_kd.engine.trainer as trainer

    real_save, calls = trainer._save, []

    def save_then_die(path, model, optimizer, scheduler, extra):
        real_save(path, model, optimizer, scheduler, extra)
        calls.append(extra)
        if len(calls) == 1:
            raise Interrupted  # killed right after the mid-epoch checkpoint

    monkeypatch.setattr(trainer, "_save", save_then_die)
    with pytest.raises(Interrupted):
        cli.glue_teachers_command(None, str(tmp_path / "resumed"), False, overrides)
    assert calls[0]["epoch"] == 0 and calls[0]["batch"] == 2
    with pytest.raises(UserError, match="--resume"):
        cli.glue_teachers_command(None, str(tmp_path / "resumed"), False, overrides)
    cli.glue_teachers_command(None, str(tmp_path / "resumed"), True, overrides)

    a = load_file(str(tmp_path / "straight" / "teachers" / "RTE" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "teachers" / "RTE" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(tmp_path / d / "teachers" / "RTE" / "metrics.jsonl").read_text() for d in ("straight", "resumed")]
    steps = [[json.loads(line)["step"] for line in log.splitlines()] for log in logs]
    assert steps[0] == steps[1]  # the resumed log has no duplicated or missing steps


def test_tokenisation_pairs_truncation_padding_and_buckets(tmp_path):
    from bornagain_kd.glue.data import GlueExample
    from bornagain_kd.glue.tokenization import collate, tokenizer_fingerprint, train_batch_indices

    tokenizer = load_tokenizer(str(write_tiny_encoder(tmp_path / "enc")))
    before = tokenizer_fingerprint(tokenizer)
    examples = [GlueExample("RTE/train/0", 0, "the dog", "a cat runs", 0),
                GlueExample("RTE/train/1", 1, " ".join(["big"] * 40), "not good", 1)]
    split = encode_examples(get_task("RTE"), examples, tokenizer, max_seq_length=16)
    assert tokenizer_fingerprint(tokenizer) == before  # calling it must not change its identity
    assert list(split.token_type_ids[0]) == [0, 0, 0, 0, 1, 1, 1, 1]  # [CLS] the dog [SEP] a cat runs [SEP]
    assert len(split.input_ids[1]) == 16 and split.input_ids[1][-1] == tokenizer.sep_token_id  # truncated pair
    batch = collate(split, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][0].sum() == 8
    assert (batch["input_ids"][0, 8:] == tokenizer.pad_token_id).all()
    assert collate(split, [0], tokenizer.pad_token_id)["input_ids"].shape == (1, 8)  # padded to its own batch
    lengths = np.random.default_rng(0).integers(3, 100, size=1000)
    batches = train_batch_indices(lengths, 32, seed=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert [b.tolist() for b in batches] == [b.tolist() for b in train_batch_indices(lengths, 32, seed=3)]
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < np.mean([np.ptp(lengths[b]) for b in train_batch_indices(lengths, 32, seed=3, bucket=False)]) / 3


def test_teacher_from_the_hub_source(setup, monkeypatch):
    from bornagain_kd.glue import data as glue_data

    tmp_path, overrides = setup
    rng = np.random.default_rng(1)

    def fake_hub(name, split):  # `datasets.load_dataset("glue", "rte", split=...)` rows
        assert name == "rte" and split in ("train", "validation", "test")
        n = {"train": 16, "validation": 8, "test": 4}[split]
        return [{"sentence1": _sentence(rng, "good"), "sentence2": _sentence(rng, "bad"),
                 "label": -1 if split == "test" else i % 2, "idx": i} for i in range(n)]

    monkeypatch.setattr(glue_data, "_load_hub_dataset", fake_hub)
    overrides = [*overrides, "glue.source=hub", "glue.data_dir=null", "glue.tasks=[RTE]", "train.epochs=1"]
    cli.glue_teachers_command(None, str(tmp_path / "hub"), False, overrides)
    run_dir = tmp_path / "hub" / "teachers" / "RTE"
    assert json.loads((run_dir / "results.json").read_text())["num_train_examples"] == 16
    assert [i for i, _ in read_submission(run_dir / "submission" / "RTE.tsv")] == [0, 1, 2, 3]


def test_sharded_prediction_equals_one_process(setup, monkeypatch):
    """Under torchrun each rank predicts every second length-sorted batch and the shares are gathered:
    the gathered outputs equal one process's, row for row. The gather is replayed in one process
    (rank 1's share first, then rank 0 receives both), so the test exercises the split and the scatter."""
    from bornagain_kd.engine.distributed import DistInfo
    from bornagain_kd.glue import evaluation

    tmp_path, overrides = setup
    cfg = load_config(GlueExperimentConfig, None, overrides)
    tokenizer = load_tokenizer(cfg.encoder.tokenizer_name)
    cpu = torch.device("cpu")
    for name in ("STS-B", "RTE"):  # a regression head and a classifier
        task = get_task(name)
        torch.manual_seed(0)
        model = build_model(cfg, [name])
        split = encode_examples(task, load_train_examples(cfg, name), tokenizer, cfg.max_seq_length)
        whole = predict_outputs(model, split, task, Predicting(cpu, batch_size=5))  # 24 rows: 5 batches
        shares = []
        # each call's share goes in front: rank 1 runs first, then rank 0 gathers [its own, rank 1's]
        monkeypatch.setattr(evaluation, "all_gather_objects", lambda mine: shares.insert(0, mine) or list(shares))
        predict_outputs(model, split, task, Predicting(cpu, batch_size=5), dist=DistInfo(rank=1, world_size=2))
        gathered = predict_outputs(model, split, task, Predicting(cpu, batch_size=5), dist=DistInfo(rank=0, world_size=2))
        rows = [sorted(int(i) for index, _ in share for i in index) for share in shares]
        assert [len(share) for share in shares] == [3, 2]  # batches 0, 2, 4 and 1, 3
        assert sorted(rows[0] + rows[1]) == list(range(24))  # disjoint, and every row once
        assert torch.allclose(gathered, whole, atol=1e-6)


def test_tokenisation_is_cached_on_disk_by_examples_tokenizer_and_length(tmp_path, monkeypatch):
    """A second encoding of the same examples reads the cache instead of calling the tokenizer; another maximum
    length or another text makes another file; the read-back split equals the tokenised one."""
    from bornagain_kd.glue.data import GlueExample
    from bornagain_kd.glue.tokenization import token_cache_path

    monkeypatch.setenv("BORNAGAIN_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = load_tokenizer(str(write_tiny_encoder(tmp_path / "enc")))
    task = get_task("RTE")
    examples = [GlueExample(f"RTE/train/{i}", i, "the dog " * (i + 1), "a cat runs", i % 2) for i in range(7)]
    first = encode_examples(task, examples, tokenizer, max_seq_length=16)
    assert token_cache_path(task, examples, tokenizer, 16).is_file()

    class Refusing:  # the same tokenizer, whose call fails: the second encoding must not tokenise
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenised again although the cache holds these examples")

    again = encode_examples(task, examples, Refusing(tokenizer), max_seq_length=16)
    assert again.ids == first.ids and torch.equal(again.labels, first.labels)
    assert all(np.array_equal(a, b) for a, b in zip(again.input_ids, first.input_ids))
    assert all(np.array_equal(a, b) for a, b in zip(again.token_type_ids, first.token_type_ids))
    with pytest.raises(AssertionError, match="tokenised again"):  # another truncation: not the cached tokens
        encode_examples(task, examples, Refusing(tokenizer), max_seq_length=12)
    changed = examples[:6] + [GlueExample("RTE/train/6", 6, "other words", "a cat runs", 0)]
    assert token_cache_path(task, changed, tokenizer, 16) != token_cache_path(task, examples, tokenizer, 16)
