"""Every recipe in configs/ loads under its current keys, and the Table 2 rows are comparable."""

import warnings
from pathlib import Path

import pytest
import torch

from bornagain.config import load_config
from bornagain.glue.config import GlueExperimentConfig
from bornagain.vision.config import VisionConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


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
    from bornagain.pipelines.ban import build_model, generation_model_name

    class Data:  # what build_model reads of the prepared data
        num_classes, in_channels = 100, 3

    cfg = load_config(VisionConfig, path)
    baseline = load_config(VisionConfig, path.parent / "table2-baseline-wrn-28-10.yaml")
    with torch.device("meta"):
        student = build_model(cfg, generation_model_name(cfg, 1), Data)
        teacher = build_model(cfg, generation_model_name(cfg, 0), Data)
    assert _dropouts(student) == {baseline.model.dropout} == {0.3}
    assert _dropouts(teacher) == set()
