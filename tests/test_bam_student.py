"""The multi-task student's loss: one encoder pass, each example through its own task's head only."""

import numpy as np
import pytest
import torch
from torch import nn

from bornagain_kd.distill.bam_targets import classification_target, soft_cross_entropy, squared_error
from bornagain_kd.glue.model import MultiTaskModel, TaskHead
from bornagain_kd.pipelines.bam_student import StudentData, mixed_batch, student_loss
from bornagain_kd.glue.tokenization import EncodedSplit

transformers = pytest.importorskip("transformers")


def tiny_model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    heads = nn.ModuleDict({
        "CoLA": TaskHead(16, 2, regression=False),
        "STS-B": TaskHead(16, 1, regression=True),
        "RTE": TaskHead(16, 2, regression=False),
    })
    return MultiTaskModel(transformers.BertModel(config), heads)


def fake_split(task: str, n: int, regression: bool, seed: int) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    input_ids, token_types = [], []
    for _ in range(n):
        length = int(rng.integers(4, 12))
        input_ids.append(np.concatenate([[1], rng.integers(5, 50, length - 2), [2]]).astype(np.int32))
        token_types.append(np.zeros(length, dtype=np.int8))
    labels = torch.tensor(rng.random(n), dtype=torch.float32) if regression else torch.tensor(rng.integers(0, 2, n))
    return EncodedSplit(task, [f"{task}/train/{i}" for i in range(n)], input_ids, token_types, labels)


def fake_data() -> StudentData:
    train = {"CoLA": fake_split("CoLA", 20, False, 0), "STS-B": fake_split("STS-B", 12, True, 1),
             "RTE": fake_split("RTE", 8, False, 2)}
    teacher = {"CoLA": torch.randn(20, 2), "STS-B": torch.rand(12), "RTE": torch.randn(8, 2)}
    return StudentData(tasks=tuple(train), train=train, dev={}, teacher_outputs=teacher, label_means={"STS-B": 0.5})


TRIPLES = [("CoLA", 3, False), ("STS-B", 5, False), ("CoLA", 7, False), ("STS-B", 0, False), ("CoLA", 19, False)]


def test_mixed_batch_groups_rows_by_task():
    data = fake_data()
    batch = mixed_batch(data, TRIPLES, pad_token_id=0, teacher_outputs=data.teacher_outputs)
    assert batch["input_ids"].shape[0] == 5
    assert set(batch["tasks"]) == {"CoLA", "STS-B"}
    cola = batch["tasks"]["CoLA"]
    assert cola["rows"].tolist() == [0, 2, 4]
    assert torch.equal(cola["labels"], data.train["CoLA"].labels[[3, 7, 19]])
    assert torch.equal(cola["teacher"], data.teacher_outputs["CoLA"][[3, 7, 19]])
    # The padded row holds the example's own tokens.
    row = data.train["STS-B"].input_ids[5]
    assert batch["input_ids"][1, : len(row)].tolist() == row.tolist()
    assert batch["attention_mask"][1].sum() == len(row)


def test_swapped_examples_use_the_swapped_tokens_and_the_original_label_and_teacher():
    data = fake_data()
    data.swapped["STS-B"] = fake_split("STS-B", 12, True, 9)  # stands in for the sentence-swapped encoding
    batch = mixed_batch(data, [("STS-B", 4, True), ("STS-B", 4, False)], pad_token_id=0,
                        teacher_outputs=data.teacher_outputs)
    swapped_row = data.swapped["STS-B"].input_ids[4]
    assert batch["input_ids"][0, : len(swapped_row)].tolist() == swapped_row.tolist()
    part = batch["tasks"]["STS-B"]
    assert part["labels"][0] == part["labels"][1] == data.train["STS-B"].labels[4]
    assert part["teacher"][0] == part["teacher"][1] == data.teacher_outputs["STS-B"][4]


@pytest.mark.parametrize("arm", ["annealed", "labels", "smoothing-annealed", "fixed"])
def test_absent_task_head_gets_no_gradient(arm):
    data, model = fake_data(), tiny_model()
    batch = mixed_batch(data, TRIPLES, pad_token_id=0, teacher_outputs=data.teacher_outputs)  # no RTE example
    parts = student_loss(model, batch, arm=arm, annealing=0.3, distill_weight=0.5, label_means=data.label_means)
    parts["loss"].backward()
    for p in model.heads["RTE"].parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for task in ("CoLA", "STS-B"):
        assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.heads[task].parameters())
    assert parts["count"] == {"CoLA": 3, "STS-B": 2}


def test_each_example_loss_uses_only_its_own_head():
    """The mixed-batch loss equals the mean of per-example losses computed one task at a time."""
    data, model = fake_data(), tiny_model()
    model.eval()  # no dropout: outputs are deterministic
    batch = mixed_batch(data, TRIPLES, pad_token_id=0, teacher_outputs=data.teacher_outputs)
    parts = student_loss(model, batch, arm="annealed", annealing=0.5, distill_weight=0.5)
    expected = []
    for task, row, _ in TRIPLES:
        split = data.train[task]
        ids = torch.tensor(split.input_ids[row], dtype=torch.int64)[None]
        out = model(ids, torch.ones_like(ids), torch.zeros_like(ids), task=task)
        label, teacher = split.labels[[row]], data.teacher_outputs[task][[row]]
        if task == "STS-B":
            expected.append(squared_error(out, 0.5 * label + 0.5 * teacher))
        else:
            expected.append(soft_cross_entropy(out, classification_target("annealed", label, teacher, 2, 0.5, 0.5)))
    torch.testing.assert_close(parts["loss"], torch.cat(expected).mean(), rtol=1e-4, atol=1e-5)
    # Changing the head of a task absent from the batch changes nothing.
    with torch.no_grad():
        model.heads["RTE"].out.weight.add_(1.0)
    again = student_loss(model, batch, arm="annealed", annealing=0.5, distill_weight=0.5)
    torch.testing.assert_close(again["loss"], parts["loss"])


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(run_dir, *, resume=False):
    from bornagain_kd.glue.bam_config import BamConfig
    from bornagain_kd.glue.config import OptimConfig
    from bornagain_kd.pipelines.bam_student import StudentSetup, train_student

    from bornagain_kd.glue.config import NlpTrainConfig

    bam = BamConfig(batch_size=4, epochs=2.0)
    train_cfg = NlpTrainConfig(checkpoint_every_steps=3, progress=False, trackers=())
    setup = StudentSetup(arm="annealed", seed=0, bam=bam, optim_cfg=OptimConfig(lr=1e-3), train_cfg=train_cfg,
                         device=torch.device("cpu"), pad_token_id=0)
    return train_student(tiny_model(), fake_data(), setup, run_dir=run_dir, resume=resume)


def test_interrupted_student_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file

    import bornagain_kd.pipelines.bam_student as student

    _train(tmp_path / "straight")
    real_lambda = student.annealing_lambda

    def killed_at_step_7(step, total):
        if step == 7:
            raise KeyboardInterrupt("simulated kill")
        return real_lambda(step, total)

    monkeypatch.setattr(student, "annealing_lambda", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "dev_metrics.json").exists()
    monkeypatch.setattr(student, "annealing_lambda", real_lambda)
    _train(tmp_path / "resumed", resume=True)  # continues from the step-6 checkpoint

    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "lambda" in json.loads(line)]
    assert steps == list(range(20))  # 40 examples / batch 4 = 10 steps per epoch, 2 epochs, each logged once
