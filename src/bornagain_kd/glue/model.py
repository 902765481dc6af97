"""A shared Hugging Face encoder with one small head per GLUE task.

    h = pooled_output(encoder(x))             # (b, hidden): BERT's pooler, tanh(W h_[CLS] + b),
                                              # or h_[CLS], or the masked mean of the last states
                                              # (`encoder.pooling`: pooler | cls | mean)
    classification:  z = W_task dropout(h)    # (b, num_labels) logits for softmax
    regression:      y = w_task . dropout(h)  # (b,) STS-B score on the [0, 1] scale

A single-task teacher is a `MultiTaskModel` with one head, the BAM student the
same class with several; both use `build_model(cfg, tasks)`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bornagain_kd.engine.distributed import current
from bornagain_kd.engine.run_log import bars_shown
from bornagain_kd.errors import UserError
from bornagain_kd.glue.locations import resolve_location
from bornagain_kd.glue.tasks import get_task


class TaskHead(nn.Module):
    """Dropout on the pooled output, then one linear layer (num_labels outputs, 1 for regression)."""

    def __init__(self, hidden_size: int, num_labels: int, *, regression: bool, dropout: float = 0.1,
                 initializer_range: float = 0.02):
        super().__init__()
        self.regression = regression
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1 if regression else num_labels)
        # BERT's initialisation for new layers: N(0, 0.02^2) weights, zero bias.
        nn.init.normal_(self.out.weight, std=initializer_range)
        nn.init.zeros_(self.out.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.out(self.dropout(pooled))  # (b, num_labels)
        return out.squeeze(-1) if self.regression else out  # regression: (b,)


class MultiTaskModel(nn.Module):
    """`encoder` (a Hugging Face `PreTrainedModel`) shared by the task `heads` (keyed by task name)."""

    def __init__(self, encoder: nn.Module, heads: nn.ModuleDict, pooling: str = "pooler"):
        super().__init__()
        if pooling not in ("pooler", "cls", "mean"):
            raise UserError(f"encoder.pooling={pooling!r}: choose pooler, cls or mean")
        self.encoder = encoder
        self.heads = heads
        self.pooling = pooling
        if pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
            # Unused, it would only be trained by weight decay and trip DistributedDataParallel.
            encoder.pooler = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence representation (b, hidden) by ``self.pooling``: the pooler output (else the first
        token's state), the first token's state, or the mean of the states of the unmasked tokens."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs)
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (b, t, 1)
            return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, hidden)
        pooled = getattr(out, "pooler_output", None) if self.pooling == "pooler" else None
        if pooled is None:  # `cls`, or encoders without a pooler (ELECTRA, DistilBERT): the [CLS] state
            pooled = out.last_hidden_state[:, 0]  # (b, hidden)
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None, task: str | dict[str, torch.Tensor]):
        """Logits (b, num_labels) of `task`, or its regression output (b,).

        A mixed-task batch passes ``task={name: rows}`` (rows: positions in the batch) and gets
        ``{name: head_name(pooled[rows])}``: one encoder pass, each example through its own head,
        and one forward call, as DistributedDataParallel needs.
        """
        if isinstance(task, dict):
            pooled = self.pooled(input_ids, attention_mask, token_type_ids)  # (b, hidden)
            return {name: self.heads[name](pooled[rows]) for name, rows in task.items()}
        if task not in self.heads:
            raise KeyError(f"this model has no head for task {task!r}; it has {list(self.heads)}")
        return self.heads[task](self.pooled(input_ids, attention_mask, token_type_ids))


def _encoder_config(encoder_cfg):
    from transformers import AutoConfig  # noqa: PLC0415  (heavy import, only when building)

    try:
        config = AutoConfig.from_pretrained(resolve_location(encoder_cfg.name_or_path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load the encoder config from encoder.name_or_path={encoder_cfg.name_or_path!r}"
            f" ({e.__class__.__name__}: {str(e).splitlines()[0]}); give a local checkpoint directory"
            " with a config.json, or a hub name while online"
        ) from None
    for key, value in encoder_cfg.size_overrides().items():
        setattr(config, key, value)
    if encoder_cfg.hidden_dropout is not None:
        config.hidden_dropout_prob = encoder_cfg.hidden_dropout
    if encoder_cfg.attention_dropout is not None:
        config.attention_probs_dropout_prob = encoder_cfg.attention_dropout
    return config


@contextlib.contextmanager
def _hf_progress(enabled: bool):
    """Hugging Face's own bars (transformers 5 draws one per weight load) only where ours are drawn: on rank 0
    with train.progress on; under torchrun every rank loads every teacher's and student's weights."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def build_encoder(encoder_cfg, *, progress: bool = True) -> nn.Module:
    """A Hugging Face encoder: pretrained weights, or random ones (`encoder.from_scratch=true`).
    `progress`: let transformers draw its weight-loading bar."""
    from transformers import AutoModel  # noqa: PLC0415

    config = _encoder_config(encoder_cfg)
    if encoder_cfg.from_scratch:
        # The caller seeds torch first, so the random initialisation is reproducible.
        return AutoModel.from_config(config)
    try:
        with _hf_progress(progress):
            return AutoModel.from_pretrained(resolve_location(encoder_cfg.name_or_path), config=config)
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load encoder weights from encoder.name_or_path={encoder_cfg.name_or_path!r}"
            f" ({e.__class__.__name__}: {str(e).splitlines()[0]}); point it at a checkpoint with weights,"
            " or set encoder.from_scratch=true to start from random weights"
        ) from None


def build_model(cfg, tasks: list[str] | tuple[str, ...]) -> MultiTaskModel:
    """The encoder of `cfg.encoder` plus one head per task (dropout `cfg.encoder.head_dropout`)."""
    encoder = build_encoder(cfg.encoder, progress=bars_shown(cfg.train.progress and current().is_main))
    hidden = encoder.config.hidden_size
    init_range = getattr(encoder.config, "initializer_range", 0.02)
    heads = nn.ModuleDict()
    for name in tasks:
        task = get_task(name)
        heads[task.name] = TaskHead(hidden, task.num_labels, regression=task.is_regression,
                                    dropout=cfg.encoder.head_dropout, initializer_range=init_range)
    return MultiTaskModel(encoder, heads, pooling=cfg.encoder.pooling)


def num_encoder_layers(model: MultiTaskModel) -> int:
    """L, the number of transformer layers of the encoder."""
    config = model.encoder.config
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(config, key):
            return int(getattr(config, key))
    raise UserError(f"cannot tell the number of layers of encoder {type(model.encoder).__name__}")
