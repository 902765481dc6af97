"""`bornagain export RUN_DIR OUT_DIR`: a finished vision run as a folder to share (the Hugging Face hub's layout).

    OUT_DIR/
      model.safetensors        the weights (a plain state dict, safetensors metadata format=pt)
      config.json              what rebuilds the model: model name and every option (models.model_options),
                               num_classes, in_channels, the input size and normalisation, the classes, the data;
                               and the run's recorded config ("config"), which ban.teacher_run checks; no
                               path of this machine (no output_dir; data.root, ban.teacher_run: folder names)
      README.md                model card: YAML front matter (library_name, tags, datasets, metrics, model-index),
                               data, recipe, metrics, how to reuse it as a teacher
      results.json, metrics.jsonl, test_probs.safetensors
                               the run's own records, so the folder teaches exactly as the run directory did (a
                               BAN table's teacher row, its ensembles and paired tests read them)

RUN_DIR is a `train` run or one run of a `ban` sequence (gen0 the teacher, genK, baseline). GLUE teachers and BAM
students are not exported: their encoders are transformers models, shared with save_pretrained. The folder is
written beside OUT_DIR under a temporary name and renamed into place: nothing half-written is ever OUT_DIR (an
earlier export moved aside for it is put back when the rename fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bornagain_kd.config import config_to_dict, load_yaml, recorded_config
from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, file_mode, read_json, write_json
from bornagain_kd.models import create_model, model_options
from bornagain_kd.pipelines.ban import model_kwargs
from bornagain_kd.pipelines.model_card import model_card
from bornagain_kd.pipelines.teacher_source import EXPORT_FORMAT, read_export_config
from bornagain_kd.vision.config import VisionConfig
from bornagain_kd.vision.prepare import PreparedData, prepare_data

RECORDS = ("results.json", "metrics.jsonl", "test_probs.safetensors")  # copied as they are
_GLUE_KEYS = ("glue", "encoder", "bam")  # a GLUE / BAM config's sections


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_finished_run(run_dir: Path) -> tuple[VisionConfig, dict]:
    """(the recorded config, results.json) of a finished vision run; a UserError naming what it is otherwise."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: give the run directory to export (a `train` run, or a `ban` "
                        "run's gen0/, genK/)")
    if read_export_config(run_dir) is not None:
        raise UserError(f"{run_dir} is already an exported folder: share it as it is, or export its run directory")
    if (run_dir / "gen0").is_dir() or (run_dir / "seed-0").is_dir() or any(run_dir.glob("seed-*/gen0")):
        raise UserError(f"{run_dir} holds a whole `ban` sequence: export one of its runs, e.g. {run_dir / 'gen0'} "
                        "(the teacher) or its last generation")
    tree = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if tree is None or any(k in tree for k in _GLUE_KEYS):
        raise UserError(f"{run_dir} is not a vision run (no config.yaml of `bornagain ban` / `train`): export "
                        "shares image classifiers; GLUE teachers and BAM students are transformers models, shared "
                        "with their encoder's save_pretrained")
    if not (run_dir / "results.json").is_file() or not (run_dir / "model.safetensors").is_file():
        raise UserError(f"{run_dir} is not finished (no results.json / model.safetensors): finish it first "
                        "(the same command with --resume), then export it")
    return recorded_config(VisionConfig, tree), read_json(run_dir / "results.json")


def _builder_config(run_dir: Path, cfg: VisionConfig, results: dict) -> VisionConfig:
    """The config whose model options built this run's model: a `ban` generation's student of another
    architecture took ban.student_kwargs of its sequence's config (the folder above), not model.kwargs."""
    parent = run_dir.parent / "config.yaml"
    if "generation" in results and parent.is_file():
        return recorded_config(VisionConfig, load_yaml(parent))
    return cfg


def rebuild(settings: dict) -> torch.nn.Module:
    """The model config.json describes, freshly initialised (weights: load model.safetensors into it)."""
    model = settings["model"]
    return create_model(model["name"], model["num_classes"], in_channels=model["in_channels"], **model["options"])


def export_settings(run_dir: Path, cfg: VisionConfig, results: dict, data: PreparedData) -> dict:
    """config.json: what rebuilds the model, what it expects as input, what it was trained on."""
    name = results["model"]
    options = model_options(name, **model_kwargs(_builder_config(run_dir, cfg, results), name))
    c, h, w = data.train_images.shape[1:]
    return {
        "bornagain_format": EXPORT_FORMAT, "library_name": "bornagain",
        "model": {"name": name, "options": options, "num_classes": data.num_classes, "in_channels": int(c)},
        "input": {"channels": int(c), "height": int(h), "width": int(w), "mean": list(data.mean),
                  "std": list(data.std), "normalize": "x = (uint8 pixels / 255 - mean) / std, per channel"},
        "classes": list(data.classes),
        "data": {"dataset": results.get("dataset", data.name), **_shareable_data(config_to_dict(cfg.data)),
                 "split_seed": cfg.seed, "train_images": int(data.train_labels.shape[0]),
                 "val_images": int(data.val_labels.shape[0]), "test_images": int(data.test_labels.shape[0])},
        "source": {"run": results.get("run"), "generation": results.get("generation"),
                   "weights_sha256": _sha256(run_dir / "model.safetensors")},
        "config": _shareable_config(config_to_dict(cfg)),
    }


def _local_name(value: str | None) -> str | None:
    """A local path as its folder's name (this machine's layout is no one else's); a hub id stays."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path.name if path.is_absolute() or path.exists() or value.startswith((".", "~")) else value


def _shareable_data(data: dict) -> dict:
    return {**data, "root": _local_name(data.get("root"))}


def _shareable_config(tree: dict) -> dict:
    """The run's config without this machine's paths: no output_dir, data.root and ban.teacher_run as folder names.
    A teacher check reads neither (where data lie may differ; the test labels say which data it was)."""
    tree = {k: v for k, v in tree.items() if k != "output_dir"}
    tree["data"] = _shareable_data(tree["data"])
    if tree.get("ban", {}).get("teacher_run"):
        tree["ban"] = {**tree["ban"], "teacher_run": _local_name(tree["ban"]["teacher_run"])}
    return tree


def _check_out_dir(out_dir: Path, weights_sha256: str) -> None:
    """OUT_DIR is new, empty, or an earlier export of this same run (the same weights); anything else is refused."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    earlier = read_export_config(out_dir) if out_dir.is_dir() else None
    if earlier is None or earlier["source"].get("weights_sha256") != weights_sha256:
        what = "an export of another run" if earlier else "not empty"
        raise UserError(f"{out_dir} is {what}: export into a new or empty folder (or over an earlier export of "
                        "this same run)")


def _write(folder: Path, run_dir: Path, settings: dict, results: dict) -> None:
    state = load_file(str(run_dir / "model.safetensors"))  # tensors only: safetensors never unpickles
    model = rebuild(settings)
    try:
        model.load_state_dict(state, strict=True)  # config.json must rebuild exactly these weights
    except RuntimeError as e:
        raise UserError(f"{run_dir}: its weights do not fit the model its config describes ({str(e)[:200]}); "
                        "was the run directory edited by hand?") from None
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", file_mode())
    write_json(folder / "config.json", json.loads(json.dumps(settings, default=str)))
    atomic_write_text(folder / "README.md", model_card(settings, results))
    for name in RECORDS:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, folder / name)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an earlier export (or an empty folder) is moved aside first."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    try:
        os.replace(tmp, out_dir)
    except OSError as e:
        if old is not None:  # the earlier export goes back where it was
            os.replace(old / out_dir.name, out_dir)
            old.rmdir()
        raise UserError(f"the export could not be moved into {out_dir} ({e}); "
                        f"{'the earlier export there is kept' if old else 'nothing was written'}: check the folder's "
                        "permissions and free space, then export again") from None
    if old is not None:
        shutil.rmtree(old)


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write OUT_DIR from the finished run RUN_DIR (see the module docstring); returns its config.json."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg, results = read_finished_run(run_dir)
    _check_out_dir(out_dir, _sha256(run_dir / "model.safetensors"))
    try:
        data = prepare_data(cfg.data, cfg.seed)  # the input normalisation, classes and image size of the run
    except UserError as e:
        raise UserError(f"export reads the data {run_dir} was trained on, for its input normalisation: {e}") from None
    settings = export_settings(run_dir, cfg, results, data)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        _write(tmp, run_dir, settings, results)
        os.chmod(tmp, file_mode() | 0o111)  # mkdtemp makes 0700; an exported folder is as readable as any other
        _publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return settings


def load_exported(folder: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """(the model in eval mode with its weights, config.json) of an exported folder."""
    folder = Path(folder)
    settings = read_export_config(folder)
    if settings is None:
        raise UserError(f"{folder} is not a folder `bornagain export` wrote (no config.json with bornagain_format "
                        f"{EXPORT_FORMAT})")
    return rebuild_with_weights(folder, settings), settings


def rebuild_with_weights(folder: Path, settings: dict) -> torch.nn.Module:
    """The model ``settings`` (config.json's form) describe, with ``folder``'s model.safetensors, in eval mode
    (weights that do not fit raise load_state_dict's RuntimeError)."""
    model = rebuild(settings)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()
