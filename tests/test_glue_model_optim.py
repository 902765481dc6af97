"""Encoder + task heads, layer-wise learning-rate groups, weight-decay exclusion, schedule, config."""

from __future__ import annotations

import json

import pytest
import torch

from bornagain_kd.config import load_config
from bornagain_kd.engine import run_log
from bornagain_kd.errors import UserError
from bornagain_kd.glue.config import GlueExperimentConfig
from bornagain_kd.glue.model import build_model
from bornagain_kd.glue.optim import (
    build_optimizer, build_scheduler, layerwise_lr_groups, parameter_depths, warmup_linear_decay,
)


def tiny_bert_dir(tmp_path, layers: int = 3):
    config = {
        "model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32, "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def tiny_cfg(encoder_dir, *extra: str) -> GlueExperimentConfig:
    return load_config(GlueExperimentConfig, None, [f"encoder.name_or_path={encoder_dir}",
                                                    "encoder.from_scratch=true", *extra])


def test_heads_output_logits_or_regression_and_pass_token_types(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(tiny_bert_dir(tmp_path)), ["MNLI", "STS-B", "CoLA"])
    ids = torch.randint(1, 50, (4, 7))
    mask = torch.ones_like(ids)
    model.eval()
    assert model(ids, mask, torch.zeros_like(ids), "MNLI").shape == (4, 3)
    assert model(ids, mask, torch.zeros_like(ids), "STS-B").shape == (4,)
    assert model(ids, mask, None, "CoLA").shape == (4, 2)
    # sentence-pair segment ids reach the encoder
    assert not torch.allclose(model(ids, mask, torch.ones_like(ids), "MNLI"), model(ids, mask, torch.zeros_like(ids), "MNLI"))
    assert model.heads["MNLI"].dropout.p == 0.1
    with pytest.raises(KeyError, match="no head for task 'RTE'"):
        model(ids, mask, None, "RTE")


def test_local_checkpoint_loads_its_weights(tmp_path):
    torch.manual_seed(0)
    scratch = build_model(tiny_cfg(tiny_bert_dir(tmp_path / "cfg")), ["RTE"])
    scratch.encoder.save_pretrained(tmp_path / "ckpt")
    cfg = load_config(GlueExperimentConfig, None, [f"encoder.name_or_path={tmp_path / 'ckpt'}"])
    loaded = build_model(cfg, ["RTE"])
    for (name, a), (_, b) in zip(scratch.encoder.state_dict().items(), loaded.encoder.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="from_scratch"):
        build_model(load_config(GlueExperimentConfig, None, [f"encoder.name_or_path={tmp_path / 'cfg'}"]), ["RTE"])
    with pytest.raises(UserError, match="encoder.name_or_path"):
        build_model(tiny_cfg(tmp_path / "missing"), ["RTE"])


def test_hugging_face_weight_bars_follow_train_progress(tmp_path, monkeypatch, capsys):
    """transformers 5 draws a bar per weight load; under torchrun every rank loads every teacher's encoder. The
    bar is drawn only where bornagain's own are (rank 0, train.progress on), and the setting is restored."""
    import transformers  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    torch.manual_seed(0)
    build_model(tiny_cfg(tiny_bert_dir(tmp_path / "cfg")), ["RTE"]).encoder.save_pretrained(tmp_path / "ckpt")
    seen = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(hf_logging.is_progress_bar_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    monkeypatch.delenv("BORNAGAIN_NO_PROGRESS", raising=False)
    monkeypatch.setattr(run_log, "stderr_is_terminal", lambda: True)  # bars are drawn on a terminal only
    hf_logging.enable_progress_bar()
    for progress in ("true", "false"):
        build_model(load_config(GlueExperimentConfig, None, [f"encoder.name_or_path={tmp_path / 'ckpt'}",
                                                             f"train.progress={progress}"]), ["RTE"])
    assert seen == [True, False] and hf_logging.is_progress_bar_enabled()


def test_from_scratch_size_overrides(tmp_path):
    cfg = tiny_cfg(tiny_bert_dir(tmp_path), "encoder.num_hidden_layers=1", "encoder.hidden_dropout=0.0")
    model = build_model(cfg, ["RTE"])
    assert model.encoder.config.num_hidden_layers == 1 and model.encoder.config.hidden_dropout_prob == 0.0
    with pytest.raises(UserError, match="from_scratch=true"):
        load_config(GlueExperimentConfig, None, ["encoder.num_hidden_layers=1"])


def test_layerwise_lr_decay_gives_each_parameter_its_depth_rate(tmp_path):
    model = build_model(tiny_cfg(tiny_bert_dir(tmp_path, layers=3)), ["CoLA", "STS-B"])
    L, lr, decay = 3, 1e-3, 0.9
    groups = layerwise_lr_groups(model, lr=lr, layerwise_lr_decay=decay, weight_decay=0.01)
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(rate) == len(named)  # every parameter in exactly one group

    def lr_of(name):
        return rate[id(named[name])][0]

    assert lr_of("encoder.embeddings.word_embeddings.weight") == pytest.approx(lr * decay ** (L + 2))
    assert lr_of("encoder.embeddings.LayerNorm.weight") == pytest.approx(lr * decay ** (L + 2))
    for i in range(L):  # layer i has depth i + 1
        assert lr_of(f"encoder.encoder.layer.{i}.attention.self.query.weight") == pytest.approx(lr * decay ** (L + 1 - i))
        assert lr_of(f"encoder.encoder.layer.{i}.output.dense.bias") == pytest.approx(lr * decay ** (L + 1 - i))
    assert lr_of("encoder.pooler.dense.weight") == pytest.approx(lr * decay)
    for head in ("CoLA", "STS-B"):  # every head gets the full rate
        assert lr_of(f"heads.{head}.out.weight") == pytest.approx(lr)
    depths = parameter_depths(model)
    assert depths["encoder.encoder.layer.2.intermediate.dense.weight"] == 3
    assert depths["heads.STS-B.out.bias"] == L + 2


def test_layernorm_and_biases_are_not_decayed(tmp_path):
    model = build_model(tiny_cfg(tiny_bert_dir(tmp_path)), ["RTE"])
    groups = layerwise_lr_groups(model, lr=1e-3, layerwise_lr_decay=0.9, weight_decay=0.01)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if name.endswith("bias") or "LayerNorm" in name else 0.01
        assert decay[id(p)] == expected, name
    assert any(v == 0.01 for v in decay.values()) and any(v == 0.0 for v in decay.values())


def test_warmup_then_linear_decay(tmp_path):
    model = build_model(tiny_cfg(tiny_bert_dir(tmp_path)), ["RTE"])
    cfg = tiny_cfg(tmp_path)
    optimizer = build_optimizer(model, cfg.optim, lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_fraction=0.1)  # 2 warmup steps
    head_lrs, ratios = [], []
    for _ in range(20):
        head_lrs.append(optimizer.param_groups[-1]["lr"])
        ratios.append(optimizer.param_groups[0]["lr"] / max(head_lrs[-1], 1e-30))
        optimizer.step()
        scheduler.step()
    assert head_lrs[:4] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3 * 17 / 18])
    assert head_lrs[-1] == pytest.approx(1e-3 / 18)
    assert warmup_linear_decay(20, total_steps=20, warmup_steps=2) == 0.0
    # the schedule keeps the layer-wise ratios: embeddings (depth 0) / heads = 0.9^(L + 2), L = 3
    assert ratios[1:] == pytest.approx([0.9 ** 5] * 19)


def test_config_defaults_are_the_paper_teacher_settings():
    cfg = load_config(GlueExperimentConfig)
    assert (cfg.optim.lr, cfg.optim.layerwise_lr_decay, cfg.optim.weight_decay, cfg.optim.adam_eps) == (5e-5, 0.9, 0.01, 1e-6)
    assert (cfg.optim.warmup_fraction, cfg.optim.max_grad_norm, cfg.max_seq_length) == (0.1, 1.0, 128)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.encoder.head_dropout) == (3, 32, 0.1)
    assert load_config(GlueExperimentConfig, None, ["glue.tasks=[cola,STSB]"]).glue.tasks == ("CoLA", "STS-B")
    with pytest.raises(UserError, match="twice"):
        load_config(GlueExperimentConfig, None, ["glue.tasks=[CoLA,cola]"])


def test_pooling_choices_read_the_states_they_name(tmp_path):
    encoder_dir = tiny_bert_dir(tmp_path)
    ids = torch.randint(1, 50, (3, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # row 0: two padding positions
    ids[0, 4:] = 0
    types = torch.zeros_like(ids)
    models = {}
    for pooling in ("pooler", "cls", "mean"):
        torch.manual_seed(0)  # the same encoder weights under each pooling
        models[pooling] = build_model(tiny_cfg(encoder_dir, f"encoder.pooling={pooling}"), ["RTE"]).eval()
    states = models["pooler"].encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    mean = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)  # (b, hidden)
    assert torch.allclose(models["mean"].pooled(ids, mask, types), mean, atol=1e-6)
    assert torch.allclose(models["cls"].pooled(ids, mask, types), states[:, 0], atol=1e-6)
    assert not torch.allclose(models["pooler"].pooled(ids, mask, types), states[:, 0], atol=1e-3)
    # Padding beyond the mask does not move the mean.
    longer_ids = torch.cat([ids, torch.zeros(3, 2, dtype=ids.dtype)], 1)
    longer_mask = torch.cat([mask, torch.zeros(3, 2, dtype=mask.dtype)], 1)
    assert torch.allclose(models["mean"].pooled(longer_ids, longer_mask, torch.zeros_like(longer_ids)), mean, atol=1e-5)
    # The pooler is dropped where it is not read (no dead weights for the optimiser or DDP).
    assert any(n.startswith("encoder.pooler") for n, _ in models["pooler"].named_parameters())
    assert not any(n.startswith("encoder.pooler") for n, _ in models["mean"].named_parameters())
    with pytest.raises(UserError, match="encoder.pooling"):
        tiny_cfg(encoder_dir, "encoder.pooling=max")


def test_runs_recorded_before_a_key_existed_keep_working(tmp_path):
    """A settings record without encoder.pooling / bam.bucket_by_length was made with their defaults, whether it
    is today's settings.json or the teacher_settings.json / student_settings.json of a run made before it."""
    from bornagain_kd.engine.run import FORMAT, SETTINGS, check_settings
    from bornagain_kd.pipelines.bam import student_run_settings
    from bornagain_kd.pipelines.glue_teachers import teacher_run_settings

    cfg = tiny_cfg(tiny_bert_dir(tmp_path / "enc"))
    changed = tiny_cfg(tmp_path / "enc", "encoder.pooling=mean", "bam.bucket_by_length=true")
    runs = {"teacher": (lambda c: teacher_run_settings(c, "RTE"), "teacher_settings.json", "encoder.pooling"),
            "student": (lambda c: student_run_settings(c, "labels", 0, None), "student_settings.json",
                        "bam.bucket_by_length")}
    for kind, (settings_of, legacy, key) in runs.items():
        now = settings_of(cfg)
        old = json.loads(json.dumps(now.tree))
        old["encoder"].pop("pooling")
        old.get("bam", {}).pop("bucket_by_length", None)
        for name, record in ((SETTINGS, {"format": FORMAT, "kind": now.kind, "settings": old}), (legacy, old)):
            run_dir = tmp_path / kind / name
            run_dir.mkdir(parents=True)
            (run_dir / name).write_text(json.dumps(record))
            check_settings(run_dir, now)  # accepted
            with pytest.raises(UserError, match=key.replace(".", r"\.")):
                check_settings(run_dir, settings_of(changed))


def test_the_settings_files_keep_their_layout():
    """The settings records of teachers and students are read back by later runs: the keys that may differ are
    declared on the config fields now, and the files keep the layout runs were recorded with (the keys of a
    default config's files, as written before that declaration)."""
    from bornagain_kd.engine.settings import flatten
    from bornagain_kd.pipelines.bam import student_settings
    from bornagain_kd.pipelines.glue_teachers import teacher_settings

    cfg = load_config(GlueExperimentConfig, None, [])
    shared = {f"encoder.{k}" for k in ("attention_dropout", "from_scratch", "head_dropout", "hidden_dropout",
                                       "hidden_size", "intermediate_size", "name_or_path", "num_attention_heads",
                                       "num_hidden_layers", "pooling", "tokenizer")}
    shared |= {f"optim.{k}" for k in ("adam_beta1", "adam_beta2", "adam_eps", "layerwise_lr_decay", "lr",
                                      "max_grad_norm", "warmup_fraction", "weight_decay")}
    shared |= {"glue.data_dir", "glue.max_train_examples", "glue.source", "max_seq_length", "precision", "seed"}
    # the engine's weight averaging shapes what every run learns: teachers and students record it
    shared |= {f"train.{k}" for k in ("weight_averaging", "ema_decay", "ema_every_steps", "ema_warmup_power")}
    assert set(flatten(teacher_settings(cfg, "RTE"))) == shared | {
        "task", "train.batch_size", "train.bucket_by_length", "train.epochs",
        "train.sync_batchnorm"}  # the teachers' train section, which shapes a data-parallel step with batch norms
    assert set(flatten(student_settings(cfg, "labels", 0, None))) == shared | {
        "arm", "data_seed", "glue.tasks", *(f"bam.{k}" for k in (
            "batch_size", "both_orders", "bucket_by_length", "distill_weight", "epochs", "lr",
            "task_weight_exponent", "teacher_per_seed"))}
    assert teacher_settings(cfg, "RTE")["precision"] == cfg.train.precision
