import pytest

from bornagain_kd.config import config_to_dict, load_config, save_config
from bornagain_kd.errors import UserError
from bornagain_kd.vision.config import VisionConfig


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
    from bornagain_kd.config import TrainingConfig
    from bornagain_kd.glue.config import GlueExperimentConfig

    shared = {f.name for f in __import__("dataclasses").fields(TrainingConfig)}
    assert {"epochs", "batch_size", "eval_batch_size", "precision", "device", "checkpoint_every_steps",
            "num_threads", "progress", "trackers"} <= shared
    for cls in (VisionConfig, GlueExperimentConfig):
        cfg = load_config(cls, None, ["train.checkpoint_every_steps=7", "train.precision=bf16"])
        assert isinstance(cfg.train, TrainingConfig)
        assert (cfg.train.checkpoint_every_steps, cfg.train.precision) == (7, "bf16")
        with pytest.raises(UserError, match="train.num_threads=0"):  # one validation for both
            load_config(cls, None, ["train.num_threads=0"])
    assert load_config(GlueExperimentConfig).train.epochs == 3  # each pipeline keeps its own defaults
    assert load_config(VisionConfig).train.epochs == 10


def test_renamed_glue_keys_still_work_with_a_warning(tmp_path):
    from bornagain_kd.errors import RenamedKeyWarning
    from bornagain_kd.glue.config import GlueExperimentConfig

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
    from bornagain_kd.engine.settings import changed_keys
    from bornagain_kd.glue.config import GlueExperimentConfig

    saved = {"teacher": {"epochs": 3, "batch_size": 32}, "precision": "fp32"}
    now = {"train": {"epochs": 3, "batch_size": 32}, "precision": "fp32"}
    assert changed_keys(saved, now, renamed=GlueExperimentConfig.RENAMED_KEYS) == []
    now["train"]["epochs"] = 4
    assert changed_keys(saved, now, renamed=GlueExperimentConfig.RENAMED_KEYS) == ["train.epochs"]


def test_loss_presets_and_target_arms_are_declared_once():
    from bornagain_kd.distill.bam_targets import TARGET_ARMS, target_arm
    from bornagain_kd.distill.ban_losses import LOSS_PRESETS, STUDENT_LOSSES, resolve_loss
    from bornagain_kd.glue.config import GlueExperimentConfig

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


# The keys of the first config a `bornagain ban` run recorded (the project's first release): every key added since
# must say in ADDED_KEYS what was in force before it existed.
FIRST_RECORDED_VISION_KEYS = (
    "ban.ensembles ban.generations ban.include_teacher_in_ensembles ban.label_weight ban.loss ban.share_stem_and_head "
    "ban.student_baseline ban.student_model ban.student_teacher_name ban.teacher_weight ban.temperature "
    "ban.train_shared_layers data.augment data.download data.name data.root data.train_subset data.val_size "
    "model.dropout model.name model.teacher output_dir seed train.batch_size train.channels_last train.device "
    "train.epochs train.eval_batch_size train.gamma train.lr train.milestones train.momentum train.nesterov "
    "train.num_threads train.precision train.progress train.schedule train.tensorboard train.warmup_epochs "
    "train.weight_decay").split()
FIRST_RECORDED_GLUE_KEYS = (
    "bam.batch_size bam.both_orders bam.checkpoint_every_steps bam.distill_weight bam.epochs bam.eval_batch_size "
    "bam.lr bam.paired_test bam.seeds bam.targets bam.task_weight_exponent bam.teacher_per_seed "
    "encoder.attention_dropout encoder.from_scratch encoder.head_dropout encoder.hidden_dropout encoder.hidden_size "
    "encoder.intermediate_size encoder.name_or_path encoder.num_attention_heads encoder.num_hidden_layers "
    "encoder.tokenizer glue.data_dir glue.max_train_examples glue.source glue.tasks max_seq_length optim.adam_beta1 "
    "optim.adam_beta2 optim.adam_eps optim.layerwise_lr_decay optim.lr optim.max_grad_norm optim.warmup_fraction "
    "optim.weight_decay output_dir seed teacher.batch_size teacher.bucket_by_length teacher.checkpoint_every_steps "
    "teacher.epochs teacher.eval_batch_size teacher.log_every_steps train.device train.num_threads train.precision "
    "train.progress").split()


def _dotted_fields(cls, prefix=""):
    import dataclasses

    out = []
    for f in dataclasses.fields(cls):
        kind = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(kind):
            out += _dotted_fields(type(kind), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_key_added_since_the_first_release_records_its_value_of_then():
    """A key a recorded run lacks takes the value in force before the key existed, so each added key must be
    listed; an unlisted one would count as changed and refuse every older run."""
    from bornagain_kd.engine.settings import flatten
    from bornagain_kd.glue.config import GlueExperimentConfig
    from bornagain_kd.pipelines.bam import student_settings
    from bornagain_kd.pipelines.glue_teachers import teacher_settings

    from bornagain_kd.engine.settings import SHARED_RENAMED_KEYS  # renamed, not added: read under the new name

    first = {SHARED_RENAMED_KEYS.get(k, k) for k in FIRST_RECORDED_VISION_KEYS}
    added = [k for k in _dotted_fields(VisionConfig) if k not in first]
    assert "ban.normalize_loss_weights" in added
    assert sorted(k for k in added if k not in VisionConfig.ADDED_KEYS) == []
    assert set(VisionConfig.ADDED_KEYS) <= set(_dotted_fields(VisionConfig))
    # GLUE runs record the settings of a teacher or student (a subset of the config, under today's names)
    cfg = GlueExperimentConfig()
    first = {GlueExperimentConfig.RENAMED_KEYS.get(k, k) for k in FIRST_RECORDED_GLUE_KEYS}
    settings = set(flatten(teacher_settings(cfg, "RTE"))) | set(flatten(student_settings(cfg, "labels", 0, None)))
    added = [k for k in _dotted_fields(GlueExperimentConfig) if k not in first and k in settings]
    assert sorted(k for k in added if k not in GlueExperimentConfig.ADDED_KEYS) == []


def test_a_run_made_before_a_key_existed_resumes_with_the_value_of_then(tmp_path):
    """A config.yaml without keys added later is read with the values in force when it was made, not today's
    defaults: a BAN+L run made before ban.normalize_loss_weights trained with the weights 1 / 1, so continuing
    it with today's default (0.5 / 0.5) is refused, naming the key and both values; with the value of then it
    resumes. A key whose value of then is today's default (train.compile) needs nothing."""
    import yaml

    from bornagain_kd.pipelines.ban import check_output_dir

    cfg = load_config(VisionConfig, None, [f"output_dir={tmp_path}"])
    old = config_to_dict(cfg)
    del old["ban"]["normalize_loss_weights"], old["ban"]["prepare_teacher"], old["train"]["compile"]
    del old["train"]["last_batch"]
    old["train"] |= {"precision": "fp32", "channels_last": False}  # a record holds values, never `auto`
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(UserError, match=r"ban.normalize_loss_weights \(recorded False, now True\)"):
        check_output_dir(tmp_path, cfg, resume=True)
    then = load_config(VisionConfig, None, ["ban.normalize_loss_weights=false"])  # (prepare_teacher: rounding only)
    check_output_dir(tmp_path, then, resume=True)
    assert then.ban.weights() == (1.0, 1.0, 1.0)


def test_recorded_config_fills_added_keys_with_their_value_of_then():
    from bornagain_kd.config import recorded_config

    old = config_to_dict(load_config(VisionConfig, None, ["model.kwargs.width=8"]))
    del old["ban"]["normalize_loss_weights"], old["data"]["layout"]
    cfg = recorded_config(VisionConfig, old)
    assert cfg.ban.normalize_loss_weights is False and cfg.data.layout == "auto"
    assert cfg.model.kwargs == {"width": 8}
    del old["model"]["kwargs"]
    assert recorded_config(VisionConfig, old).model.kwargs == {}


def test_a_setting_the_loss_preset_ignores_is_refused():
    with pytest.raises(UserError, match="ban.loss=cwtm does not use ban.teacher_weight or ban.temperature"):
        load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.teacher_weight=2", "ban.temperature=3"])
    with pytest.raises(UserError, match="ban.temperature"):
        load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.temperature=3"])
    assert load_config(VisionConfig, None, ["ban.loss=cwtm", "ban.label_weight=0.7"]).ban.weights()[0] == 1.0
    assert load_config(VisionConfig, None, ["ban.loss=dkpp", "ban.temperature=3"]).ban.weights()[2] == 3.0


def test_which_keys_may_differ_is_declared_on_the_key():
    """may_differ() on a field is the one declaration every settings check reads: resume, pooling over seeds,
    a reused teacher (tests of each check exercise them end to end)."""
    from dataclasses import dataclass, field

    from bornagain_kd.config import keys_that_may_differ, may_differ

    @dataclass(frozen=True)
    class Inner:
        threads: int = field(default=1, metadata=may_differ("resume", "pool", "teacher"))
        lr: float = 0.1

    @dataclass(frozen=True)
    class Outer:
        seed: int = field(default=0, metadata=may_differ("pool"))
        train: Inner = field(default_factory=Inner)

    assert keys_that_may_differ(Outer, "pool") == ("seed", "train.threads")
    assert keys_that_may_differ(Outer, "resume") == ("train.threads",)
    with pytest.raises(ValueError, match="unknown occasion"):
        keys_that_may_differ(Outer, "sometimes")
    with pytest.raises(ValueError, match="unknown occasions"):
        may_differ("never")
    # the vision config: what a run learned from never may differ; how it ran always may
    vision = {o: set(keys_that_may_differ(VisionConfig, o)) for o in ("resume", "pool", "teacher")}
    assert all("train.num_threads" in keys for keys in vision.values())
    assert not any(k in keys for keys in vision.values() for k in ("train.lr", "model.name", "ban.loss", "data.name"))
    assert "seed" in vision["pool"] and "seed" not in vision["teacher"] | vision["resume"]
    # the sets the hand-kept lists held before the keys declared them (RUN_MECHANICS and its companions)
    mechanics = {"train.progress", "train.trackers", "train.num_threads", "train.checkpoint_every_steps",
                 "train.compile", "train.compile_mode", "ban.prepare_teacher", "ban.teacher_compile", "train.dist_timeout"}
    assert vision["resume"] == mechanics | {"output_dir", "ban.controls", "ban.label_smoothing"}
    assert vision["pool"] == mechanics | {"seed", "output_dir", "ban.seeds", "train.device"}
    assert vision["teacher"] == mechanics | {"train.device", "train.eval_batch_size", "train.precision",
                                             "train.channels_last", "train.last_batch", "data.root", "data.download",
                                             "data.layout"}
