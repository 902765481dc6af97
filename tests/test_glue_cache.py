"""Teacher-prediction cache: round trip by example id, and refusal of anything that does not match."""

from __future__ import annotations

import pytest
import torch

from bornagain_kd.errors import UserError
from bornagain_kd.glue.cache import (
    dataset_fingerprint, file_fingerprint, load_teacher_predictions, prediction_fingerprint,
    save_teacher_predictions,
)
from bornagain_kd.glue.data import GlueExample

EXAMPLES = [GlueExample(f"RTE/train/{i}", i, f"premise {i}", f"hypothesis {i}", i % 2) for i in range(6)]


def fp(examples=EXAMPLES, tokenizer="tok-a", max_len=128):
    return dataset_fingerprint(examples, tokenizer_fingerprint=tokenizer, max_seq_length=max_len)


def test_round_trip_and_lookup_by_id(tmp_path):
    logits = torch.randn(6, 2)
    fingerprint = prediction_fingerprint(fp(), "teacher-1")
    path = tmp_path / "preds.safetensors"
    save_teacher_predictions(path, task="RTE", example_ids=[e.id for e in EXAMPLES], outputs=logits,
                             fingerprint=fingerprint)
    cache = load_teacher_predictions(path, task="RTE", expected_fingerprint=fingerprint,
                                     expected_ids=[e.id for e in reversed(EXAMPLES)])
    assert torch.equal(cache.outputs, logits)
    assert torch.equal(cache.lookup(["RTE/train/4", "RTE/train/0"]), logits[[4, 0]])
    with pytest.raises(UserError, match="no example 'RTE/train/99'"):
        cache.lookup(["RTE/train/99"])
    assert b"pickle" not in path.read_bytes()[:8] and path.read_bytes()[8:9] == b"{"  # safetensors header


def test_regression_outputs_round_trip(tmp_path):
    scores = torch.rand(6)
    path = tmp_path / "stsb.safetensors"
    save_teacher_predictions(path, task="STS-B", example_ids=[e.id for e in EXAMPLES], outputs=scores,
                             fingerprint="f")
    assert torch.equal(load_teacher_predictions(path, task="STS-B", expected_fingerprint="f").lookup(
        ["RTE/train/5"]), scores[[5]])


def test_refuses_mismatched_fingerprint_task_ids_and_corrupt_files(tmp_path):
    path = tmp_path / "preds.safetensors"
    good = prediction_fingerprint(fp(), "teacher-1")
    save_teacher_predictions(path, task="RTE", example_ids=[e.id for e in EXAMPLES], outputs=torch.zeros(6, 2),
                             fingerprint=good)
    with pytest.raises(UserError, match="do not match"):
        load_teacher_predictions(path, task="RTE", expected_fingerprint=prediction_fingerprint(fp(), "teacher-2"))
    with pytest.raises(UserError, match="for task 'RTE', not 'MRPC'"):
        load_teacher_predictions(path, task="MRPC", expected_fingerprint=good)
    with pytest.raises(UserError, match="different example ids"):
        load_teacher_predictions(path, task="RTE", expected_fingerprint=good, expected_ids=["RTE/train/0"])
    path.write_bytes(path.read_bytes()[:40])  # truncated by a crash
    with pytest.raises(UserError, match="corrupt"):
        load_teacher_predictions(path, task="RTE", expected_fingerprint=good)
    with pytest.raises(UserError, match="not found"):
        load_teacher_predictions(tmp_path / "nope", task="RTE", expected_fingerprint=good)


def test_dataset_fingerprint_sees_every_change():
    base = fp()
    assert base == fp(list(EXAMPLES))
    changed_label = [*EXAMPLES[:-1], GlueExample("RTE/train/5", 5, "premise 5", "hypothesis 5", 0)]
    changed_text = [*EXAMPLES[:-1], GlueExample("RTE/train/5", 5, "premise 5!", "hypothesis 5", 1)]
    assert len({base, fp(EXAMPLES[::-1]), fp(EXAMPLES[:-1]), fp(changed_label), fp(changed_text),
                fp(tokenizer="tok-b"), fp(max_len=64)}) == 7


def test_file_fingerprint(tmp_path):
    a = tmp_path / "w"
    a.write_bytes(b"weights")
    before = file_fingerprint(a)
    a.write_bytes(b"weights2")
    assert file_fingerprint(a) != before
    with pytest.raises(UserError, match="does not exist"):
        file_fingerprint(tmp_path / "missing")
