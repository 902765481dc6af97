"""`bornagain predict RUN_OR_EXPORT IMAGES --output preds.csv`: a trained network, or a born-again ensemble,
applied to new images.

RUN_OR_EXPORT is
    a finished `train` run, or one run of a `ban` sequence (gen0/, genK/, baseline/)
    a folder `bornagain export` wrote (its config.json says the input size, normalisation and classes)
    a `ban` output with --ensemble NAME (Ens*2, All, ...: the names in its results.json): the members' class
    probabilities averaged, as the table's ensemble columns average their test probabilities

Preprocessing is the run's evaluation: (uint8 / 255 - the training split's mean) / std per channel, the run's
precision, layout and test-time augmentation (train.tta), in batches of train.eval_batch_size. So the images of
the run's own test set get the probabilities its test_probs.safetensors holds, on the kind of device it was
evaluated on (another device, or a compiled run's kernels, round differently: the last digits may differ). A run directory's normalisation
and classes come from its training data (read again, as `bornagain export` does); an exported folder carries
them. Images of another size or channel count, or labelled with classes the model does not have, are refused.

The CSV: one row per image: image (file, or #row), prediction (class name), label (where the images have
labels), then p_<class> for every class.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bornagain_kd.engine.device import resolve_device
from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write_text, read_json
from bornagain_kd.pipelines.export import export_settings, read_finished_run, rebuild_with_weights
from bornagain_kd.pipelines.teacher_source import local_teacher, read_export_config
from bornagain_kd.reports.ensembles import average_probabilities, generation_dir
from bornagain_kd.vision.batches import BatchPipeline, predict_logits
from bornagain_kd.vision.new_images import NewImages, read_new_images


@dataclass
class Member:
    """One network ready to predict: the model (eval mode, its weights) and how its inputs are made."""

    name: str
    model: torch.nn.Module
    settings: dict  # the export's config.json: model, input (channels, height, width, mean, std), classes, config

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.settings["classes"])

    def probabilities(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(n, c, h, w) uint8 -> (n, classes) float32 softmax, as the run computed its test probabilities."""
        train = self.settings["config"]["train"]
        channels_last = train.get("channels_last") is True
        pipe = BatchPipeline(tuple(self.settings["input"]["mean"]), tuple(self.settings["input"]["std"]), device,
                             channels_last=channels_last)
        model = self.model.to(device)
        if channels_last:  # as the run held its model (pipelines/classifier.py): the same convolution kernels
            model = model.to(memory_format=torch.channels_last)
        return predict_logits(model, images, pipe, batch_size=int(train["eval_batch_size"]),
                              precision=train["precision"], tta=train.get("tta", "off")).softmax(1)


def _load(folder: Path, settings: dict) -> Member:
    try:
        model = rebuild_with_weights(folder, settings)
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"{folder}: its weights do not load into the model its config describes ({str(e)[:200]}); "
                        "is the folder complete and unedited?") from None
    return Member(str(folder), model, settings)


def load_member(folder: Path, data_cache: dict | None = None) -> Member:
    """An exported folder, or a finished vision run directory (its training data read for the normalisation)."""
    exported = read_export_config(folder)
    if exported is not None:
        return _load(folder, exported)
    cfg, results = read_finished_run(folder)  # a clear error for a sequence, a GLUE run, an unfinished run
    from bornagain_kd.vision.prepare import prepare_data  # noqa: PLC0415

    key = (repr(cfg.data), cfg.seed)
    cache = {} if data_cache is None else data_cache
    if key not in cache:
        try:  # read where the run read them, never downloaded here: predict only reads
            cache[key] = prepare_data(dataclasses.replace(cfg.data, download=False), cfg.seed)
        except UserError as e:
            raise UserError(f"predict reads the data {folder} was trained on, for its input normalisation and "
                            f"classes: {e} (or predict from a folder `bornagain export` wrote, which carries them)"
                            ) from None
    return _load(folder, export_settings(folder, cfg, results, cache[key]))


def _image_size(folder: Path) -> int | None:
    """The run's data.image_size: image files are resized to it as its training images were (None: as they are,
    or where the folder cannot say: loading it names the problem)."""
    exported = read_export_config(folder)
    try:
        size = (exported.get("data", {}).get("image_size") if exported is not None
                else read_finished_run(folder)[0].data.image_size)
    except UserError:
        return None
    return int(size) if size else None


def ensemble_members(run_dir: Path, name: str) -> list[Path]:
    """The run folders of ensemble ``name`` of the `ban` output ``run_dir`` (its results.json's members)."""
    path = run_dir / "results.json"
    if not path.is_file() or "generations" not in (results := read_json(path)):
        seeds = sorted(p.name for p in run_dir.glob("seed-*"))
        hint = f"; it holds one sequence per seed: give one of them, e.g. {run_dir / seeds[0]}" if seeds else ""
        raise UserError(f"--ensemble needs a finished `bornagain ban` output, and {run_dir} is not one{hint}")
    ensembles = {e["name"]: e["members"] for e in results.get("ensembles", [])}
    if name not in ensembles:
        raise UserError(f"{run_dir} has no ensemble {name!r}; its ensembles are "
                        f"{', '.join(ensembles) or 'none (one generation)'}")
    rows = {g["generation"]: g for g in results["generations"]}
    folders = []
    for g in ensembles[name]:
        folder = generation_dir(run_dir, rows[g])
        if rows[g].get("teacher_run"):  # a reused teacher, recorded as its sequence was given it
            folder = local_teacher(str(folder))  # an hf:// teacher: the hub's cached copy
            if not folder.is_dir():
                raise UserError(f"{run_dir}'s teacher {folder} (ban.teacher_run, a path from the folder its sequence "
                                "ran in) is not found from here: run predict from that folder")
        folders.append(folder)
    return folders


def _is_ban_output(folder: Path) -> bool:
    """A whole `ban` output (its generations in results.json, or gen*/ / seed-*/ folders), not one run."""
    results = folder / "results.json"
    if results.is_file() and "generations" in read_json(results):
        return True
    return (folder / "gen0").is_dir() or (folder / "gen1").is_dir() or any(folder.glob("seed-*"))


def _gray_if_needed(images: NewImages, member: Member) -> NewImages:
    """Image files decode to RGB (as training decodes them); a one-channel model takes gray files' one channel
    (R = G = B), not colour ones (refused by _check_inputs)."""
    x = images.images
    if member.settings["input"]["channels"] == 1 and x.shape[1] == 3 and (x[:, :1] == x[:, 1:]).all():
        return dataclasses.replace(images, images=np.ascontiguousarray(x[:, :1]))
    return images


def _check_inputs(images: NewImages, member: Member, source: str) -> None:
    c, h, w = images.images.shape[1:]
    want = member.settings["input"]
    if (c, h, w) != (want["channels"], want["height"], want["width"]):
        raise UserError(f"{source}: the images are {c}x{h}x{w} (channels x height x width) but {member.name} was "
                        f"trained on {want['channels']}x{want['height']}x{want['width']}: give images of that size "
                        "and channel count (predict does not resize)")


def _labels_in_model_classes(images: NewImages, classes: tuple[str, ...], source: str) -> np.ndarray | None:
    """The images' labels as the model's class indices; refused where the images name classes it lacks."""
    if images.labels is None:
        return None
    if images.classes is None:  # numbers: they must be the model's
        if images.labels.size and images.labels.max() >= len(classes):
            raise UserError(f"{source}: labels run to {int(images.labels.max())} but the model has {len(classes)} "
                            "classes (0..{}): are these images of the data it was trained on?".format(len(classes) - 1))
        return images.labels
    unknown = sorted(set(images.classes) - set(classes))
    if unknown:
        raise UserError(f"{source}: class folder(s) {', '.join(unknown[:5])} are not classes of the model (its "
                        f"classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}): name the "
                        "folders after its classes, or give the images without class folders")
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[images.classes[y]] for y in images.labels], dtype=np.int64)


def to_csv(images: NewImages, probs: torch.Tensor, classes: tuple[str, ...], labels: np.ndarray | None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "prediction", *(["label"] if labels is not None else []),
                     *(f"p_{c}" for c in classes)])
    predicted = probs.argmax(1).tolist()
    for i, name in enumerate(images.names):
        label = [classes[int(labels[i])]] if labels is not None else []
        writer.writerow([name, classes[predicted[i]], *label, *(f"{p:.6g}" for p in probs[i].tolist())])
    return out.getvalue()


def predict(source: str | os.PathLike, images_source: str | os.PathLike, *, ensemble: str | None = None,
            split: str = "test", layout: str = "auto", image_column: str | None = None,
            device: str = "auto") -> tuple[NewImages, torch.Tensor, tuple[str, ...], np.ndarray | None]:
    """(the images, their class probabilities (n, classes) float64 for an ensemble / float32, the classes, the labels
    as class indices or None)."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source} is not a folder: give a finished run directory, a `ban` generation (gen1/), a "
                        "folder `bornagain export` wrote, or a `ban` output with --ensemble")
    if not ensemble and _is_ban_output(source):
        raise UserError(f"{source} is a whole `ban` output: give one of its runs (e.g. {source / 'gen1'}), or "
                        "--ensemble NAME for one of its ensembles (the names in its table: Ens*2, All, ...)")
    dev = resolve_device(device)  # auto, cpu, cuda[:N]; cuda without a GPU is refused here
    folders = ensemble_members(source, ensemble) if ensemble else [source]
    images = read_new_images(images_source, split=split, layout=layout, image_column=image_column,
                             size=_image_size(folders[0]))  # errors first
    if images.images.shape[0] == 0:
        raise UserError(f"{images_source} holds no images: nothing to predict")
    cache: dict = {}
    members = [load_member(f, cache) for f in folders]
    classes = members[0].classes
    images = _gray_if_needed(images, members[0])
    for m in members:
        _check_inputs(images, m, str(images_source))
        if m.classes != classes:
            raise UserError(f"the ensemble's members disagree on their classes ({m.name}): they are not one sequence")
    labels = _labels_in_model_classes(images, classes, str(images_source))
    x = torch.from_numpy(images.images)
    probs = [m.probabilities(x, dev) for m in members]
    return images, (average_probabilities(probs) if ensemble else probs[0]), classes, labels


def predict_command(source: str, images_source: str, output: str, **options) -> str:
    """`bornagain predict`: writes the CSV (atomically) and returns the line to print."""
    if Path(output).is_dir():
        raise UserError(f"--output {output} is a folder: give the CSV file to write, e.g. {Path(output) / 'preds.csv'}")
    if not Path(output).parent.is_dir():
        raise UserError(f"--output {output}: its folder {Path(output).parent} does not exist; make it first")
    images, probs, classes, labels = predict(source, images_source, **options)
    atomic_write_text(output, to_csv(images, probs, classes, labels))
    what = f"ensemble {options['ensemble']} of {source}" if options.get("ensemble") else str(source)
    line = f"{len(images.names)} image(s) predicted by {what} -> {output}"
    if labels is not None and len(labels):
        accuracy = 100.0 * (probs.argmax(1).numpy() == labels).mean()
        line += f"; accuracy {accuracy:.2f}% against their labels"
    return line

