"""The README.md model card of an exported run (pipelines/export.py), in the Hugging Face hub's format: YAML front
matter (library_name, tags, datasets, metrics, model-index) and a body on the data, the recipe, the metrics and how
to reuse the model as a BAN teacher. Written with pyyaml, a core dependency, so exporting needs no extra; the hub's
own parser (huggingface_hub.ModelCard) reads it back in tests/test_export.py.
"""

from __future__ import annotations

import shlex

import yaml

from bornagain_kd.config import config_to_dict, keys_that_may_differ
from bornagain_kd.engine.settings import flatten
from bornagain_kd.vision.config import VisionConfig

# The hub's ids of the datasets bornagain reads from elsewhere (the same images and labels)
HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100"}


def hub_dataset(data: dict) -> str | None:
    """The hub id of the training data, where it has one."""
    if data["name"] == "hf" and not str(data["root"]).startswith((".", "/", "~")) and str(data["root"]).count("/") == 1:
        return str(data["root"])
    return HUB_DATASETS.get(data["name"])


def front_matter(settings: dict, results: dict) -> dict:
    model, data = settings["model"], settings["data"]
    hub = hub_dataset(data)
    metrics = [{"type": "accuracy", "name": "Test accuracy (%)", "value": results["test_accuracy"]}]
    if results.get("test_nll") is not None:
        metrics.append({"type": "nll", "name": "Test NLL", "value": results["test_nll"]})
    if results.get("test_ece") is not None:
        metrics.append({"type": "ece", "name": "Test ECE (%)", "value": results["test_ece"]})
    return {
        "library_name": "bornagain",
        "pipeline_tag": "image-classification",
        "tags": ["bornagain", "image-classification", "knowledge-distillation", "born-again-networks",
                 model["name"].split(":")[-1]],
        **({"datasets": [hub]} if hub else {}),
        "metrics": ["accuracy"],
        "model-index": [{"name": model["name"], "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": data["dataset"], "type": hub or data["name"], "split": data.get("test_split", "test")},
            "metrics": metrics}]}],
    }


def _what(settings: dict, results: dict) -> str:
    source = settings["source"]
    if source.get("generation"):
        return (f"generation {source['generation']} of a born-again sequence (loss {results.get('loss')}, taught by "
                f"generation {source['generation'] - 1})")
    if source.get("generation") == 0:
        return "the teacher (generation 0) of a born-again sequence, trained from its labels"
    return f"a classifier trained from its labels (`bornagain {'train' if source.get('run') == 'train' else 'ban'}`)"


def teacher_command(settings: dict) -> str:
    """The `bornagain ban` line that reuses this model as generation 0: every key of the seed, data, model and
    schedule (train.*) that differs from the defaults, as ban.teacher_run checks them, and data.root to find the data."""
    ours, defaults = flatten(settings["config"]), flatten(config_to_dict(VisionConfig()))
    free = set(keys_that_may_differ(VisionConfig, "teacher")) - {"data.root"}
    keys = [k for k in ours if k.split(".")[0] in ("seed", "data", "model", "train") and k not in free
            and (k == "model.name" or ours[k] != defaults.get(k))]
    values = [f"{k}={yaml.safe_dump(ours[k], default_flow_style=True).strip().removesuffix('...').strip()}"
              for k in keys]
    return " ".join(["bornagain ban --output runs/students ban.teacher_run=hf://OWNER/NAME",
                     *(shlex.quote(v) for v in values)])


def body(settings: dict, results: dict) -> str:
    model, data, inp = settings["model"], settings["data"], settings["input"]
    fmt = lambda v, unit="": "n/a" if v is None else f"{v:.2f}{unit}"
    lines = [
        f"# {model['name']} on {data['dataset']}", "",
        f"A {model['name']} ({results.get('params', 0):,} parameters), {_what(settings, results)}, with "
        "bornagain (Born-Again Networks, Furlanello et al. 2018).", "",
        "## Data", "",
        f"- {data['dataset']}: {model['num_classes']} classes, images {inp['channels']}x{inp['height']}x"
        f"{inp['width']} (c, h, w)",
        f"- trained on {data['train_images']} images; {data['val_images']} held out for validation "
        f"(data.val_size={data['val_size']}, split seed {data['split_seed']}); tested on {data['test_images']}",
        f"- input: uint8 pixels, then (x / 255 - mean) / std per channel; mean {[round(m, 4) for m in inp['mean']]}, "
        f"std {[round(s, 4) for s in inp['std']]} (of the training images)", "",
        "## Metrics", "",
        "| test accuracy | test error | test NLL | test ECE | val accuracy | epochs |", "|---|---|---|---|---|---|",
        f"| {fmt(results.get('test_accuracy'), '%')} | {fmt(results.get('test_error'), '%')} | "
        f"{fmt(results.get('test_nll'))} | {fmt(results.get('test_ece'), '%')} | "
        f"{fmt(results.get('val_accuracy'), '%')} | {results.get('epochs')} |", "",
        "## Reuse it as a teacher", "",
        "Born-again students of this model, on the same data and split: bornagain checks the data, the split seed, "
        "the model options and, unless `ban.teacher_run_other_schedule=true`, the schedule (train.*) against this "
        "folder's config.json before training. The keys below are those that differ from bornagain's defaults; "
        "add the students' own (ban.*):", "",
        "```bash", teacher_command(settings), "```", "",
        "`ban.teacher_run` also takes this folder's local path. In Python: `model, config = "
        "bornagain_kd.api.load_exported(folder)` rebuilds the model from config.json (eval mode).", "",
        "## Recipe", "",
        "The run's whole recorded config (`bornagain ban --config recipe.yaml` with it retrains the model):", "",
        "```yaml", yaml.safe_dump(settings["config"], sort_keys=False).rstrip(), "```", "",
    ]
    return "\n".join(lines)


def model_card(settings: dict, results: dict) -> str:
    """README.md: front matter, then the body."""
    return "---\n" + yaml.safe_dump(front_matter(settings, results), sort_keys=False) + "---\n\n" + body(settings,
                                                                                                          results)
