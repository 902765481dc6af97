import pytest

from bornagain.config import config_to_dict, load_config, save_config
from bornagain.errors import UserError
from bornagain.vision.config import VisionConfig


def test_defaults_and_overrides_are_typed():
    cfg = load_config(VisionConfig, None, ["train.lr=0.05", "ban.ensembles=[2,3,4]", "train.precision=bf16",
                                          "data.val_size=500", "seed=3", "model.dropout=null"])
    assert cfg.train.lr == 0.05 and isinstance(cfg.train.lr, float)
    assert cfg.ban.ensembles == (2, 3, 4)
    assert cfg.train.precision == "bf16"
    assert cfg.data.val_size == 500 and isinstance(cfg.data.val_size, int)
    assert cfg.seed == 3 and cfg.model.dropout is None


def test_int_given_for_float_is_accepted_and_converted():
    cfg = load_config(VisionConfig, None, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("seed: 5\ntrain:\n  epochs: 7\n  lr: 0.2\nban:\n  loss: ban\n")
    cfg = load_config(VisionConfig, path, ["train.lr=0.3"])
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr, cfg.ban.loss) == (5, 7, 0.3, "ban")


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(UserError) as e:
        load_config(VisionConfig, None, ["train.learning_rate=0.1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "train.lr" in msg and "train.epochs" in msg


def test_bad_values_say_which_and_why():
    with pytest.raises(UserError, match="train.precision.*fp16"):
        load_config(VisionConfig, None, ["train.precision=fp16"])
    with pytest.raises(UserError, match="train.epochs"):
        load_config(VisionConfig, None, ["train.epochs=abc"])
    with pytest.raises(UserError, match="train.epochs=0"):
        load_config(VisionConfig, None, ["train.epochs=0"])
    with pytest.raises(UserError, match="key=value"):
        load_config(VisionConfig, None, ["train.epochs"])
    with pytest.raises(UserError, match="nested"):
        load_config(VisionConfig, None, ["train=nested"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(VisionConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(VisionConfig, bad)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(VisionConfig, None, ["ban.ensembles=[2]", "train.milestones=[0.5,0.75]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(VisionConfig, tmp_path / "c.yaml") == cfg
    assert config_to_dict(cfg)["ban"]["ensembles"] == [2]


def test_exponent_floats_without_a_dot_are_floats():
    # YAML 1.1 reads 5e-5 as a string; a float field still takes it
    cfg = load_config(VisionConfig, None, ["train.lr=5e-5", "train.weight_decay=1e-4"])
    assert cfg.train.lr == 5e-5 and cfg.train.weight_decay == 1e-4
    with pytest.raises(UserError, match="train.lr"):
        load_config(VisionConfig, None, ["train.lr=fast"])


def test_every_pipeline_trains_from_one_shared_section():
    from bornagain.config import TrainingConfig
    from bornagain.glue.config import GlueExperimentConfig

    shared = {f.name for f in __import__("dataclasses").fields(TrainingConfig)}
    assert {"epochs", "batch_size", "eval_batch_size", "precision", "device", "checkpoint_every_steps",
            "num_threads", "progress", "tensorboard"} <= shared
    for cls in (VisionConfig, GlueExperimentConfig):
        cfg = load_config(cls, None, ["train.checkpoint_every_steps=7", "train.precision=bf16"])
        assert isinstance(cfg.train, TrainingConfig)
        assert (cfg.train.checkpoint_every_steps, cfg.train.precision) == (7, "bf16")
        with pytest.raises(UserError, match="train.num_threads=0"):  # one validation for both
            load_config(cls, None, ["train.num_threads=0"])
    assert load_config(GlueExperimentConfig).train.epochs == 3  # each pipeline keeps its own defaults
    assert load_config(VisionConfig).train.epochs == 10


def test_renamed_glue_keys_still_work_with_a_warning(tmp_path):
    from bornagain.errors import RenamedKeyWarning
    from bornagain.glue.config import GlueExperimentConfig

    old = tmp_path / "old.yaml"
    old.write_text("teacher:\n  epochs: 2\n  batch_size: 8\nbam:\n  checkpoint_every_steps: 5\n  lr: 0.001\n")
    with pytest.warns(RenamedKeyWarning) as record:
        cfg = load_config(GlueExperimentConfig, old)
    assert sorted(str(w.message).split("'")[1] for w in record) == [
        "bam.checkpoint_every_steps", "teacher.batch_size", "teacher.epochs"]
    assert "'teacher.epochs' is now 'train.epochs'" in str(record[0].message)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.checkpoint_every_steps, cfg.bam.lr) == (2, 8, 5, 0.001)
    with pytest.warns(RenamedKeyWarning):  # an override wins over the file, under either name
        assert load_config(GlueExperimentConfig, old, ["teacher.epochs=4"]).train.epochs == 4
    with pytest.warns(RenamedKeyWarning):
        assert load_config(GlueExperimentConfig, old, ["train.epochs=5"]).train.epochs == 5
    both = tmp_path / "both.yaml"
    both.write_text("teacher:\n  epochs: 2\ntrain:\n  epochs: 3\n")
    with pytest.warns(RenamedKeyWarning), pytest.raises(UserError, match="'teacher.epochs'.*'train.epochs'"):
        load_config(GlueExperimentConfig, both)


def test_runs_recorded_under_old_key_names_still_resume():
    from bornagain.engine.settings import changed_keys
    from bornagain.glue.config import GlueExperimentConfig

    saved = {"teacher": {"epochs": 3, "batch_size": 32}, "precision": "fp32"}
    now = {"train": {"epochs": 3, "batch_size": 32}, "precision": "fp32"}
    assert changed_keys(saved, now, renamed=GlueExperimentConfig.RENAMED_KEYS) == []
    now["train"]["epochs"] = 4
    assert changed_keys(saved, now, renamed=GlueExperimentConfig.RENAMED_KEYS) == ["train.epochs"]


def test_loss_presets_and_target_arms_are_declared_once():
    from bornagain.distill.bam_targets import TARGET_ARMS, target_arm
    from bornagain.distill.ban_losses import LOSS_PRESETS, STUDENT_LOSSES, resolve_loss
    from bornagain.glue.config import GlueExperimentConfig

    assert set(STUDENT_LOSSES) == {"ban+l", "ban", "cwtm", "dkpp"} and not LOSS_PRESETS["ce"].needs_teacher
    with pytest.raises(UserError, match="ban.loss.*'kd'"):
        load_config(VisionConfig, None, ["ban.loss=kd"])
    with pytest.raises(UserError, match="ban.loss.*'ce'"):  # the labels-only loss teaches nothing
        load_config(VisionConfig, None, ["ban.loss=ce"])
    loss = resolve_loss("ban+l", normalize=True)
    assert (loss.label_weight, loss.teacher_weight, loss.temperature) == (0.5, 0.5, 1.0)
    assert load_config(VisionConfig, None, ["ban.normalize_loss_weights=false"]).ban.weights() == (1.0, 1.0, 1.0)
    assert {a.name for a in TARGET_ARMS.values() if a.needs_teacher} == {"annealed", "fixed"}
    assert target_arm("fixed").label_weight(0.3, 0.5) == 0.5 and target_arm("annealed").label_weight(0.3, 0.5) == 0.3
    with pytest.raises(UserError, match="unknown bam.targets arm 'soft'"):
        target_arm("soft")
    cfg = load_config(GlueExperimentConfig, None, ["bam.targets=[labels]"])
    assert not cfg.bam.needs_teachers


def test_a_run_made_before_a_key_existed_still_resumes(tmp_path):
    """A config.yaml without keys added later (here ban.prepare_teacher, train.compile) resumes as if it
    had their defaults; one that differs from them is refused, naming the key."""
    import yaml

    from bornagain.pipelines.ban import check_output_dir

    cfg = load_config(VisionConfig, None, [f"output_dir={tmp_path}"])
    old = config_to_dict(cfg)
    del old["ban"]["prepare_teacher"], old["train"]["compile"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    check_output_dir(tmp_path, cfg, resume=True)
    with pytest.raises(UserError, match="ban.prepare_teacher"):
        check_output_dir(tmp_path, load_config(VisionConfig, None, ["ban.prepare_teacher=false"]), resume=True)


def test_a_setting_the_loss_preset_ignores_is_refused():
    with pytest.raises(UserError, match="ban.loss=cwtm does not use ban.teacher_weight or ban.temperature"):
        load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.teacher_weight=2", "ban.temperature=3"])
    with pytest.raises(UserError, match="ban.temperature"):
        load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.temperature=3"])
    assert load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.label_weight=0.7"]).ban.weights()[0] == 1.0
    assert load_config(VisionConfig, None, ["ban.loss=dkpp", "ban.temperature=3"]).ban.weights()[2] == 3.0
