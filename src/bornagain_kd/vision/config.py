"""Configuration of image-classification runs (`bornagain train`, `bornagain ban`).

Every field is a YAML key; sections are dotted (`train.lr`, `ban.generations`).
The defaults are the embedded digits demo; `configs/` holds the paper's recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bornagain_kd.config import MECHANICS, TrainingConfig, config_to_dict, keys_that_may_differ, may_differ
from bornagain_kd.distill.ban_losses import LOSS_PRESETS, STUDENT_LOSSES, ResolvedLoss, resolve_loss
from bornagain_kd.engine.run import RunSettings
from bornagain_kd.errors import UserError

# Whether a key may differ when a run continues (--resume), when runs are pooled over seeds, or when a finished
# run is reused as a teacher is declared on the key: field(metadata=may_differ(...)), read by
# config.keys_that_may_differ. Keys that say how a run ran (logging, threads, checkpoint cadence, compilation,
# teacher folding: rounding only) may differ on every occasion (MECHANICS).


@dataclass(frozen=True)
class DataConfig:
    name: Literal["digits", "cifar10", "cifar100", "imagefolder", "tensors", "hf"] = "digits"
    """digits (scikit-learn, embedded) | cifar10 | cifar100 (python-pickle dirs) | imagefolder |
    tensors (one .safetensors / .npz file, or a folder of .npy files, of uint8 images and int labels: vision/tensors.py) |
    hf (a Hugging Face dataset: a hub id, or a save_to_disk / parquet / image folder; pip install "bornagain-kd[hf]")."""
    root: str | None = field(default=None, metadata=may_differ("teacher"))  # where the data are, not which
    """Dataset directory (CIFAR: downloaded here when missing; imagefolder: holds train/ and test/), the
    file (or folder of .npy files) of a tensors dataset, or (hf) a hub id such as uoft-cs/cifar100 or a local datasets folder."""
    download: bool = field(default=True, metadata=may_differ("teacher"))
    """Download the official CIFAR archive (MD5-checked) when `root` lacks it."""
    val_size: int | float = 0.1
    """Validation split held out from the training set: a fraction (0-1) or a count (>= 1). Stratified, seeded."""
    augment: bool = True
    """Random crop after zero padding (4 px at 32x32) and, where valid, horizontal flip."""
    crop_padding: int | None = None
    """Padding of the random crop in pixels (zeros or reflected: data.pad_mode); null: one eighth of the image
    height (4 at 32x32, 1 at 8x8); 0: no crop."""
    hflip: bool | None = None
    """Random horizontal flips; null: the dataset's default (off for digits, on for the others)."""
    flip_mode: Literal["random", "alternate"] = "random"
    """random: each image flipped with probability 1/2 in every epoch; alternate: at random in the first epoch,
    then each image the other way round from the epoch before (airbench's alternating flip: every image is seen
    both ways every two epochs)."""
    pad_mode: Literal["zeros", "reflect"] = "zeros"
    """How the random crop pads the image: zeros (the Wide-ResNet protocol's) or reflect (the fast recipes')."""
    image_size: int | None = None
    """imagefolder and hf: resize every image once, as the decoded cache is written (shorter side to N, then the
    centre N x N square), so images of mixed sizes can train; null: the images as they are (all of one size)."""
    augment_style: Literal["auto", "crop", "rrc"] = "auto"
    """crop: a random crop after padding (data.crop_padding) and a flip, the CIFAR protocol; rrc: a random-resized
    crop (an area fraction in data.rrc_scale, aspect ratio 3/4 to 4/3, resampled bilinearly to the image size) and a
    flip, per batch on the device (timm's and torchvision's ImageNet training augmentation); auto: crop for images
    up to 64 pixels a side (CIFAR, downsampled ImageNet), rrc above."""
    rrc_scale: tuple[float, ...] = (0.08, 1.0)
    """rrc only: the range of the crop's area as a fraction of the image's (timm's default 0.08 to 1)."""
    layout: Literal["auto", "nchw", "nhwc"] = field(default="auto", metadata=may_differ("teacher"))
    """tensors only: where the channels of the image arrays are (auto: the axis of size 1, 3 or 4)."""
    train_subset: int | None = None
    """Train on a seeded stratified subset of this many training images (quick experiments)."""
    train_split: str = "train"
    """hf only: the split trained on (the validation split is held out from it, data.val_size)."""
    test_split: str = "test"
    """hf only: the split tested on once at the end (`validation` where a dataset's test labels are hidden)."""
    image_column: str | None = None
    """hf only: the column holding the images; null: the one Image feature, else `img` or `image`."""
    label_column: str | None = None
    """hf only: the column holding the labels; null: the one ClassLabel feature, else `label` or `fine_label`."""

    def __post_init__(self):
        if self.val_size < 0:
            raise UserError(f"data.val_size={self.val_size} must be >= 0 (a fraction below 1 or a count)")
        if self.name in ("imagefolder",) and not self.root:
            raise UserError("data.name=imagefolder needs data.root=DIR (a folder with train/<class>/ and test/<class>/)")
        if self.name == "hf" and not self.root:
            raise UserError("data.name=hf needs data.root=DATASET (a hub id such as uoft-cs/cifar100, or a folder "
                            "written by save_to_disk, of parquet files or of images)")
        if self.name == "tensors" and not self.root:
            raise UserError("data.name=tensors needs data.root=FILE (a .safetensors or .npz file with train_images, "
                            "train_labels, test_images, test_labels, or a folder of those .npy files)")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise UserError(f"data.crop_padding={self.crop_padding} must be >= 0 (0: no crop; null: the default)")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"data.image_size={self.image_size} must be a positive number of pixels (or null)")
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise UserError(f"data.rrc_scale={list(self.rrc_scale)} must be [low, high] with 0 < low <= high <= 1")
        if self.train_subset is not None and self.train_subset < 2:
            raise UserError(f"data.train_subset={self.train_subset} must be at least 2 (or null for all)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet-8"
    """A registered model name: see `bornagain models` (densenet-bc-L-k, wrn-d-w, preresnet-d, resnet-d, match-*);
    or your own factory by import path, `mypkg.nets:build_net` or `path/to/nets.py:build_net`, called as
    build_net(num_classes=..., in_channels=..., **model.kwargs) (models/imported.py)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model (`model.kwargs.width=64`): any your factory takes, or a zoo family's
    options. They apply to model.name, and to students of the same architecture."""
    dropout: float | None = None
    """Dropout for families that take it (WRN default 0.3); null keeps the family's default."""
    teacher: str | None = None
    """Match families only: the DenseNet-BC teacher whose block shapes the student matches."""


@dataclass(frozen=True)
class TrainConfig(TrainingConfig):
    """The shared training keys (config.TrainingConfig) with their vision defaults, and SGD's schedule."""

    epochs: int = 10
    """Passes over the training set, for the teacher and for every generation alike."""
    batch_size: int = 64
    """The global batch: under torchrun it is split over the ranks."""
    eval_batch_size: int = field(default=512, metadata=may_differ("teacher"))
    """Images per batch when predicting the validation and test sets."""
    lr: float = 0.1
    """SGD's peak learning rate (the paper's 0.1 at batch 128)."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = True
    """Nesterov momentum (the Wide-ResNet CIFAR protocol's)."""
    weight_decay: float = 5e-4
    """L2 weight decay of SGD (applied to every parameter, as in the Wide-ResNet protocol)."""
    schedule: Literal["step", "cosine", "triangle"] = "step"
    """step: lr x gamma at each milestone (fractions of the epochs); cosine: to 0 over the run; triangle: the
    one-cycle schedule of the fast CIFAR recipes, per step, linear from lr x train.triangle[0] up to lr at the
    fraction train.triangle[1] of the run, then down to lr x train.triangle[2]."""
    triangle: tuple[float, ...] = (0.2, 0.23, 0.07)
    """The triangle schedule's (start factor, where the peak is as a fraction of the run, end factor); airbench94's
    values."""
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    """Step-schedule milestones as fractions of `epochs` (WRN CIFAR protocol: epochs 60/120/160 of 200)."""
    gamma: float = 0.2
    """Step schedule: the lr is multiplied by this at each milestone."""
    warmup_epochs: int = 0
    """Linear lr warm-up from 0 over this many epochs (every run; students may add ban.student_warmup_epochs)."""
    channels_last: bool | Literal["auto"] = field(default="auto", metadata=may_differ("teacher"))
    """Keep images and convolution weights in NHWC memory order (faster convolutions on CPU and GPU). auto: on
    (every image model here is convolutional); the run records the value chosen."""
    label_smoothing: float = 0.0
    """Smooth the labels of every run's label loss (teachers, students, controls), a CE against (1 - eps) one-hot +
    eps / classes; 0: off. Szegedy and others (2016). The logged label_loss stays the plain CE, so train_loss
    differs from it. A teacher trained with it gets a warning when it teaches: Mueller and others (2019) found that
    label-smoothed teachers distil worse."""
    tta: Literal["off", "flip", "flip-shift"] = "off"
    """Test-time augmentation of every prediction a run reports (validation, test, ensembles): flip averages the
    logits of each image and its mirror image; flip-shift averages that with the same for the image shifted one
    pixel up-left and down-right (reflect padding; airbench94's level 2). Training batches are never
    augmented this way (a teacher sees the student's batch)."""
    norm_lr_scale: float = 1.0
    """Learning-rate multiplier of the normalisation layers' parameters, whose weight decay is divided by it so
    they decay as fast per step as the other weights (airbench94's bias scaler: 64)."""
    norm_weight_decay: float | None = None
    """Weight decay of the normalisation layers' parameters, given at the base lr (divided by train.norm_lr_scale
    like train.weight_decay); null: train.weight_decay. As torchvision references' --norm-weight-decay."""
    last_batch: Literal["auto", "fill", "drop", "short"] = field(default="auto", metadata=may_differ("teacher"))
    """The last batch of an epoch when the batch size does not divide the training set: fill (topped up with the
    first images of the epoch's order, which are then seen twice: every batch has one shape, so a compiled model
    never compiles again), drop (left out; other images each epoch), short (a smaller last batch, as runs made
    before this key had). auto: fill for a new run, the recorded value for a run continued or reused. A
    ban.teacher_run may differ (it only shapes which images fill an epoch's last batch)."""

    def __post_init__(self):
        super().__post_init__()
        if self.lr <= 0:
            raise UserError(f"train.lr={self.lr} must be positive")
        if len(self.triangle) != 3 or not 0 <= self.triangle[1] <= 1 or min(self.triangle) < 0:
            raise UserError(f"train.triangle={list(self.triangle)} must be [start factor, peak position (a fraction "
                            "of the run, 0-1), end factor], e.g. [0.2, 0.23, 0.07]")
        if self.schedule == "triangle" and self.warmup_epochs:
            raise UserError(f"train.warmup_epochs={self.warmup_epochs} with train.schedule=triangle: the triangle rises "
                            "from train.triangle[0] to its peak on its own; set train.warmup_epochs=0 (or move the peak "
                            "with train.triangle)")
        if self.norm_weight_decay is not None and self.norm_weight_decay < 0:
            raise UserError(f"train.norm_weight_decay={self.norm_weight_decay} must be >= 0 (null: train.weight_decay)")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"train.label_smoothing={self.label_smoothing} must be in [0, 1) (0.1 is usual; 0: off)")
        if self.norm_lr_scale <= 0:
            raise UserError(f"train.norm_lr_scale={self.norm_lr_scale} must be positive (1: the same lr as the rest)")
        if not all(0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise UserError(f"train.milestones={list(self.milestones)} must be increasing fractions between 0 and 1")


@dataclass(frozen=True)
class BanConfig:
    generations: int = 2
    """Students trained after the teacher (generation 0)."""
    loss: str = "ban+l"
    """A declared preset (distill/ban_losses.py): ban+l (Eq. 2: labels + teacher), ban (teacher only),
    cwtm (label CE weighted by the teacher's confidence), dkpp (teacher with non-argmax probabilities permuted)."""
    label_weight: float | None = None
    """Weight of CE(labels, student); null takes the preset's value."""
    teacher_weight: float | None = None
    """Weight of T^2 KL(teacher || student); null takes the preset's value."""
    temperature: float | None = None
    """Softmax temperature T of the teacher term (KL scaled by T^2); null takes the preset's value (1)."""
    ensembles: tuple[int, ...] = (2, 3)
    """Ens*k averages the probabilities of the last k students; a k larger than the sequence has members is
    skipped, and `bornagain ban` says so on its first lines (the default [2, 3] with 2 generations: Ens*2 only)."""
    include_teacher_in_ensembles: bool = False
    """Count the teacher (generation 0) as a member of the Ens*k windows (the paper's Ens*k: students only; All
    always averages every generation, the teacher included)."""
    student_model: str | None = None
    """Architecture of generations >= 1; null = the teacher's model.name."""
    student_kwargs: dict[str, Any] | None = None
    """Keyword arguments of a `ban.student_model` of another architecture (null: none)."""
    student_teacher_name: str | None = None
    """For Match students: the DenseNet-BC name they match (default: the teacher's model.name)."""
    share_stem_and_head: bool = False
    """Copy the teacher's stem conv and classifier into each student (cross-architecture BAN)."""
    train_shared_layers: bool = False
    """Let the shared stem/classifier train (default: frozen)."""
    student_baseline: bool = False
    """Also train the student architecture from labels alone (Table 2's Baseline column)."""
    student_warmup_epochs: float = 0.0
    """Linear lr warm-up of every student (generations >= 1), per step over this many epochs."""
    normalize_loss_weights: bool = True
    """Divide label_weight and teacher_weight by their sum (BAN+L: 0.5 / 0.5 instead of the paper's 1 / 1).
    On by default: with a confident teacher the KL term is about as large as the label term, and the
    paper's summed loss doubles the gradient at the recipe's lr (students that start far behind their
    teacher; see docs/ban.md). false gives the paper's Eq. 2 exactly."""
    teacher_precision: Literal["auto", "fp32", "bf16"] | None = None
    """Precision of the frozen teacher's forward pass; null: the students' train.precision; auto: bf16 where this
    hardware runs it natively, even for fp32 students (recorded, kept on --resume)."""
    teacher_compile: bool | Literal["auto", "student"] = field(default="auto", metadata=may_differ(*MECHANICS))
    """true, false or auto: torch.compile the frozen teacher's forward pass with frozen weights; auto: with a
    compiled student, beside an eager one where the teacher's own measurements pay its compilation back, never with
    train.compile=false. Frozen weights: prepacked once, convolution + bias + ReLU fused. Where the student stays
    eager (a run too short to pay its compilation back), this machine's measurements of the teacher's forward pass
    decide whether the run pays the teacher's shorter compilation back. Recorded, kept on --resume. student: a
    plain torch.compile exactly where the student is compiled, no frozen weights (how a run recorded before this key
    compiled its teacher, kept when it resumes, so it continues bit for bit)."""
    prepare_teacher: bool = field(default=True, metadata=may_differ(*MECHANICS))
    """Fold the frozen teacher's batch norms into its convolutions (models/fold.py) before it teaches:
    the same outputs up to float rounding, fewer operations."""
    teacher_run_other_schedule: bool = False
    """Accept a `ban.teacher_run` trained with another schedule (train.*) than this run; its data, split seed
    and dropout must still match."""
    teacher_run: str | None = None
    """Use a finished run directory (a `gen0/` or `train` run of model.name on the same data) as generation 0
    instead of training the teacher again: several Table 2 students can share one DenseNet teacher. A folder
    `bornagain export` wrote serves too, local or from the Hugging Face hub as hf://OWNER/NAME[@REVISION]. `{seed}` in
    the path is replaced by the run's seed, which lets `ban.seeds` reuse one teacher per seed
    (ban.teacher_run=runs/x/seed-{seed}/gen0: another loss over the same teachers)."""
    controls: tuple[Literal["independent", "label_smoothing", "longer", "doubled_label"], ...] = field(
        default=(), metadata=may_differ("resume"))
    """The baselines a reviewer asks for, trained beside the sequence into OUTPUT/controls/ (pipelines/
    ban_controls.py): "independent" -- K independently trained copies of the teacher (gen0 and K - 1 more seeds,
    the same schedule) averaged as Ind*K beside each Ens*K: as many networks as Ens*K, one training fewer; "label_smoothing"
    -- a student of the students' architecture trained from labels with label smoothing, no teacher; "longer" -- the
    teacher's architecture and recipe trained for twice train.epochs (teacher and student together: the same
    compute as BAN-1), labels only, from the teacher's seed; "doubled_label" -- BAN-1 without its teacher:
    the same seed (initialisation, order, augmentation; with ban.share_stem_and_head its first and last layers start
    fresh, not from the teacher's), the label term weighted by the students' label + teacher weights (the paper's
    1 / 1: twice the label loss; normalised weights: plain CE). Adding controls to a finished sequence (--resume)
    trains only the controls."""
    label_smoothing: tuple[float, ...] = field(default=(0.1,), metadata=may_differ("resume"))
    """The label_smoothing control's epsilon: one value is given; several are each trained and the one with the
    lowest validation error is reported (the test set chooses nothing)."""
    seeds: tuple[int, ...] | None = field(default=None, metadata=may_differ("pool"))
    """Run the whole sequence once per seed into OUTPUT/seed-<s>/ (each a normal run with seed=s) and write
    mean +- std, paired tests and McNemar tests over the seeds at OUTPUT/ (pipelines/ban.py run_seeds);
    null: one sequence with the top-level `seed`, in OUTPUT/ itself."""

    def __post_init__(self):
        if self.seeds is not None:
            check_seeds(self.seeds, teacher_run=self.teacher_run)
        if self.loss not in STUDENT_LOSSES:
            raise UserError(f"config key 'ban.loss': {self.loss!r} is not one of {', '.join(map(repr, STUDENT_LOSSES))}")
        ignored = [k for k in LOSS_PRESETS[self.loss].ignores if getattr(self, k) is not None]
        if ignored:
            raise UserError(f"ban.loss={self.loss} does not use {' or '.join('ban.' + k for k in ignored)} (its loss is "
                            f"the {LOSS_PRESETS[self.loss].teacher_term}, with no teacher distribution term): "
                            "remove the setting, or choose ban.loss=ban+l")
        if self.generations < 0:
            raise UserError(f"ban.generations={self.generations} must be >= 0")
        if any(k < 1 for k in self.ensembles):
            raise UserError(f"ban.ensembles={list(self.ensembles)}: window sizes must be >= 1")
        if self.student_warmup_epochs < 0:
            raise UserError(f"ban.student_warmup_epochs={self.student_warmup_epochs} must be >= 0")
        if self.temperature is not None and self.temperature <= 0:
            raise UserError(f"ban.temperature={self.temperature} must be positive")
        check_controls(self)

    def student_loss(self) -> ResolvedLoss:
        """The students' loss: the preset with this section's weights (resolved once per run)."""
        return resolve_loss(self.loss, label_weight=self.label_weight, teacher_weight=self.teacher_weight,
                            temperature=self.temperature, normalize=self.normalize_loss_weights)

    def weights(self) -> tuple[float, float, float]:
        """(label_weight, teacher_weight, temperature) after applying the preset."""
        loss = self.student_loss()
        return loss.label_weight, loss.teacher_weight, loss.temperature


def independent_sizes(ban: "BanConfig") -> list[int]:
    """The K of each Ens*K the sequence has (2 <= K <= generations): the Ind*K the independent control gives."""
    return [k for k in ban.ensembles if 2 <= k <= ban.generations]


def check_controls(ban: "BanConfig") -> None:
    if len(set(ban.controls)) != len(ban.controls):
        raise UserError(f"ban.controls={list(ban.controls)} names a control twice")
    if not ban.label_smoothing or any(not 0 < e < 1 for e in ban.label_smoothing):
        raise UserError(f"ban.label_smoothing={list(ban.label_smoothing)}: give one or more values between 0 and 1 "
                        "(one: used as given; several: chosen on the validation split)")
    if "longer" in ban.controls and ban.teacher_run_other_schedule:
        raise UserError("ban.controls=[longer] trains the teacher's recipe for twice this run's train.epochs, but "
                        "ban.teacher_run_other_schedule=true says the teacher had another schedule: drop one of them")
    if "independent" in ban.controls:
        if ban.student_model is not None:
            raise UserError("ban.controls=[independent] sets BAN ensembles beside independently trained copies of the "
                            "same architecture; with another student architecture (ban.student_model) use "
                            "ban.student_baseline instead")
        if not independent_sizes(ban):
            raise UserError(f"ban.controls=[independent] is set beside the ensembles Ens*K, but ban.ensembles="
                            f"{list(ban.ensembles)} has no K between 2 and ban.generations={ban.generations}")


SEED_FIELD = "{seed}"  # in ban.teacher_run: replaced by the run's seed


def teacher_run_dir(cfg: "VisionConfig") -> str | None:
    """The finished run a sequence reuses as its teacher: ``ban.teacher_run`` with ``{seed}`` filled in from the
    run's own seed (the config keeps the path as written, so the seeds of one experiment record the same value
    and pool)."""
    path = cfg.ban.teacher_run
    return None if path is None else path.replace(SEED_FIELD, str(cfg.seed))


def check_seeds(seeds: tuple[int, ...], *, teacher_run: str | None) -> None:
    """ban.seeds: at least one, no repeats, and no single reused teacher (each seed trains its own)."""
    if not seeds:
        raise UserError("ban.seeds=[] is empty: give one or more seeds (ban.seeds=[0,1,2]) or null for `seed` alone")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"ban.seeds={list(seeds)} repeats a seed: each seed runs once")
    if teacher_run is not None and SEED_FIELD not in teacher_run:
        raise UserError(f"ban.seeds with ban.teacher_run={teacher_run}: one reused teacher has one seed, so the seeds "
                        f"would not be independent repetitions; put {SEED_FIELD} in the path for a teacher per seed "
                        f"(ban.teacher_run=runs/x/seed-{SEED_FIELD}/gen0), or unset ban.teacher_run")


@dataclass(frozen=True)
class VisionConfig:
    ADDED_KEYS: ClassVar[dict[str, object]] = {
        # Keys added after runs were recorded, with the value in force before each existed (not today's default):
        # a run recorded without one resumes, pools and serves as a teacher with that value (engine/settings.py).
        "ban.teacher_run": None,
        "train.checkpoint_every_steps": 0,
        "ban.student_warmup_epochs": 0.0,
        "ban.normalize_loss_weights": False,  # BAN+L trained with the weights 1 / 1 (Eq. 2) before this key
        "train.compile": False,
        "train.compile_mode": "default",
        "ban.teacher_precision": None,  # the students' precision
        "ban.prepare_teacher": False,  # the frozen teacher ran with its batch norms unfolded
        "ban.teacher_compile": "student",  # a plain compile where the student was compiled (no frozen weights)
        "ban.teacher_run_other_schedule": False,
        "ban.seeds": None,
        "data.crop_padding": None,
        "data.hflip": None,
        "data.layout": "auto",
        "data.image_size": None,
        # auto: the padded crop every run used, for images up to 64 px (CIFAR, digits: the same augmentation); a
        # run recorded before on larger images resumes with the random-resized crop (CHANGELOG)
        "data.augment_style": "auto",
        "data.rrc_scale": [0.08, 1.0],
        "model.kwargs": {},
        "ban.student_kwargs": None,
        "ban.controls": [],
        "ban.label_smoothing": [0.1],
        "data.train_split": "train",  # hf only: no run read a Hugging Face dataset before these keys
        "data.test_split": "test",
        "data.image_column": None,
        "data.label_column": None,
        "train.last_batch": "short",  # an epoch's last batch was smaller before this key
        # the fast-training options: none of them existed, so a recorded run had them off
        "train.sync_batchnorm": False,  # each process normalised over its own slice
        "train.dist_timeout": None,  # PyTorch's default timeout
        "train.weight_averaging": "off",
        "train.ema_decay": 0.999,
        "train.ema_every_steps": 1,
        "train.ema_warmup_power": 0.0,
        "train.triangle": [0.2, 0.23, 0.07],
        "train.label_smoothing": 0.0,
        "train.tta": "off",
        "train.norm_lr_scale": 1.0,
        "train.norm_weight_decay": None,
        "data.flip_mode": "random",
        "data.pad_mode": "zeros",
    }

    seed: int = field(default=0, metadata=may_differ("pool"))
    """Seeds the split, the subset, every initialisation and the augmentation (a generation's seed derives
    from it)."""
    output_dir: str = field(default="runs/default", metadata=may_differ("resume", "pool"))
    """The run directory (--output overrides it)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ban: BanConfig = field(default_factory=BanConfig)

    def __post_init__(self):
        if "label_smoothing" in self.ban.controls and len(self.ban.label_smoothing) > 1 and not self.data.val_size:
            raise UserError(f"ban.label_smoothing={list(self.ban.label_smoothing)} is chosen on the validation "
                            "split, but data.val_size=0 holds none out: give one value, or a data.val_size")


def vision_settings(cfg: "VisionConfig") -> RunSettings:
    """What defines a vision run (a `ban` sequence, a seed of a sweep, a generation, a `train` run) for its
    settings record (engine/run.py): the whole config, with the keys declared may_differ("resume") free to
    change when it continues."""
    return RunSettings("vision", config_to_dict(cfg), ignore=keys_that_may_differ(VisionConfig, "resume"),
                       added=VisionConfig.ADDED_KEYS)
