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
