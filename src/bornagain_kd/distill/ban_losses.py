"""Born-again distillation losses (BAN paper, Furlanello et al. 2018): plain functions of logits, and their declared presets.

All teacher terms compare *distributions*: the teacher's logits are turned into
probabilities at temperature T and the student is pulled towards them with

    KL(p_teacher || p_student) = sum_j p_t,j * (log p_t,j - log p_s,j)

averaged over the batch (``reduction="batchmean"``) and multiplied by T^2, so the
gradient scale does not change with T (Hinton et al. 2015). The reported
``kd_loss`` is this KL (not the cross-entropy to the teacher, which is larger by
the teacher's entropy, a constant for the student).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from bornagain_kd.errors import UserError


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student/T)), batch mean. (b, c), (b, c) -> scalar."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)  # (b, c)
    # kl_div takes log-probabilities as input and probabilities as target; xlogy makes 0*log 0 = 0.
    kl = F.kl_div(log_p_student, teacher_probs.float(), reduction="batchmean")
    return kl * temperature**2


def born_again_loss_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    label_weight: float = 1.0,
    teacher_weight: float = 1.0,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """BAN loss and its parts (Eq. 2 of the paper, weighted):

        loss = label_weight * CE(y, softmax(z_s)) + teacher_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))

    Returns ``{"loss", "label_loss", "kd_loss"}`` (the parts unweighted).
    ``teacher_logits`` may be None only when ``teacher_weight`` is 0 (generation 0).
    ``label_smoothing`` eps: the label term is CE against (1 - eps) one-hot + eps / C (train.label_smoothing);
    the reported label_loss stays the plain CE, comparable between runs.
    """
    _check_logits(student_logits, teacher_logits, labels)
    label_loss, label_term = smoothed_ce(student_logits, labels, label_smoothing)
    if teacher_logits is None:
        if teacher_weight != 0:
            raise ValueError("born_again_loss needs teacher_logits when teacher_weight != 0")
        kd = torch.zeros((), device=student_logits.device)
    else:
        teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=1)
        kd = kd_kl(student_logits, teacher_probs, temperature)
    loss = label_weight * label_term + teacher_weight * kd
    return {"loss": loss, "label_loss": label_loss.detach(), "kd_loss": kd.detach()}


def smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(plain CE, the CE trained on): the second with labels smoothed by ``label_smoothing`` (the first when 0)."""
    plain = F.cross_entropy(logits.float(), labels, reduction=reduction)
    if not label_smoothing:
        return plain, plain
    return plain, F.cross_entropy(logits.float(), labels, reduction=reduction, label_smoothing=label_smoothing)


def born_again_loss(student_logits, teacher_logits, labels, *, label_weight=1.0, teacher_weight=1.0, temperature=1.0):
    """Scalar BAN loss; see :func:`born_again_loss_parts`."""
    return born_again_loss_parts(
        student_logits, teacher_logits, labels,
        label_weight=label_weight, teacher_weight=teacher_weight, temperature=temperature,
    )["loss"]


def cwtm_loss_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    *, label_weight: float = 1.0, across_ranks: Callable | None = None,
                    label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """Confidence-Weighted by Teacher Max: label CE with per-example weights

        w_s = max_j p_t(j|x_s) / sum_u max_j p_t(j|x_u)     (weights sum to 1 over the *global* batch)

    so loss = label_weight * sum_s w_s * CE(y_s, softmax(z_s)). No teacher distribution term.

    Computed as a mean over this batch's examples, mean_s (c_s / c_bar) CE_s with c_bar the mean confidence
    of the global batch: the same number in one process, and under torchrun (each rank a slice, the engine
    weighting each rank's mean by its share of the global batch, engine/distributed.py rank_share) the
    weighted mean over the global batch, not over each rank's slice. ``across_ranks`` sums a tensor over the
    ranks (the caller's process group; None: this batch is the whole batch).
    """
    _check_logits(student_logits, teacher_logits, labels)
    confidence = F.softmax(teacher_logits.float(), dim=1).max(dim=1).values  # (b,)
    totals = torch.stack([confidence.sum(), confidence.new_tensor(float(confidence.shape[0]))])  # (2,): sum c, b
    if across_ranks is not None:
        totals = across_ranks(totals.detach())
    weights = confidence / (totals[0] / totals[1])  # (b,): c_s / c_bar, mean 1 over the global batch
    per_example, trained = smoothed_ce(student_logits, labels, label_smoothing, reduction="none")  # (b,), (b,)
    weighted = (weights * trained).mean()
    return {"loss": label_weight * weighted, "label_loss": per_example.mean().detach(), "kd_loss": weighted.detach()}


def label_smoothing_loss(epsilon: float) -> Callable[..., dict]:
    """The label-smoothing control: CE against (1 - epsilon) * one-hot + epsilon / C (Szegedy et al. 2016), no
    teacher. Yuan et al. (2020) found it matches self-distillation on CIFAR-100. The logged label_loss is the
    plain CE (comparable with every other run's); kd_loss is 0."""

    def parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor) -> dict:
        _check_logits(student_logits, None, labels)
        label_loss, loss = smoothed_ce(student_logits, labels, epsilon)
        return {"loss": loss, "label_loss": label_loss.detach(), "kd_loss": torch.zeros((), device=loss.device)}

    return parts


def permute_non_argmax(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """DKPP's target: keep each row's argmax probability in place, randomly permute the rest
    among the non-argmax classes. (b, c) -> (b, c), rows still sum to 1."""
    b, c = probs.shape
    top = probs.argmax(dim=1, keepdim=True)  # (b, 1)
    keys = torch.rand(b, c, generator=generator, device="cpu").to(probs.device)
    keys.scatter_(1, top, -1.0)  # the argmax sorts first, the others in random order
    destination = keys.argsort(dim=1)  # (b, c): [argmax, random non-argmax order]
    ordered = torch.arange(c, device=probs.device, dtype=torch.float).expand(b, c).clone()
    ordered.scatter_(1, top, -1.0)
    source = ordered.argsort(dim=1)  # (b, c): [argmax, non-argmax in index order]
    out = torch.empty_like(probs)
    out.scatter_(1, destination, probs.gather(1, source))
    return out


def dkpp_loss_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                    label_weight: float = 0.0, teacher_weight: float = 1.0, temperature: float = 1.0,
                    generator: torch.Generator | None = None, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """Dark Knowledge with Permuted Predictions: the teacher term of BAN with the teacher's
    non-argmax probabilities permuted per example (see :func:`permute_non_argmax`)."""
    _check_logits(student_logits, teacher_logits, labels)
    teacher_probs = permute_non_argmax(F.softmax(teacher_logits.float() / temperature, dim=1), generator)
    kd = kd_kl(student_logits, teacher_probs, temperature)
    label_loss, label_term = smoothed_ce(student_logits, labels, label_smoothing)
    return {"loss": label_weight * label_term + teacher_weight * kd,
            "label_loss": label_loss.detach(), "kd_loss": kd.detach()}


def _check_logits(student_logits, teacher_logits, labels) -> None:
    if student_logits.dim() != 2:
        raise ValueError(f"student logits must be (batch, classes), got {tuple(student_logits.shape)}")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise UserError(
            f"teacher outputs {tuple(teacher_logits.shape)} but student outputs {tuple(student_logits.shape)}: "
            "teacher and student must predict the same number of classes on the same dataset"
        )


# --- the declared presets -------------------------------------------------------------------------------------------

LossParts = Callable[..., dict]
"""(student_logits, teacher_logits or None, labels, *, label_weight, teacher_weight, temperature)
-> {"loss", "label_loss", "kd_loss"}."""


def _cwtm_parts(student_logits, teacher_logits, labels, *, label_weight, teacher_weight, temperature,
                across_ranks=None, label_smoothing=0.0):
    return cwtm_loss_parts(student_logits, teacher_logits, labels, label_weight=label_weight,
                           across_ranks=across_ranks, label_smoothing=label_smoothing)


def _dkpp_parts(student_logits, teacher_logits, labels, *, label_weight, teacher_weight, temperature,
                label_smoothing=0.0):
    # generator=None: the permutation draws from torch's global RNG, which checkpoints restore
    return dkpp_loss_parts(student_logits, teacher_logits, labels, label_weight=label_weight,
                           teacher_weight=teacher_weight, temperature=temperature, label_smoothing=label_smoothing)


@dataclass(frozen=True)
class LossPreset:
    """One declared born-again loss (a value of `ban.loss`, or "ce" for teachers and baselines)."""

    name: str
    needs_teacher: bool
    label_weight: float  # default weight of CE(y, student)
    teacher_weight: float  # default weight of the teacher term
    teacher_term: str  # what the reported kd_loss is
    parts: LossParts
    ignores: tuple[str, ...] = ()  # weights this preset's loss does not read (setting one is refused)
    global_statistic: bool = False  # normalises by a statistic of the whole global batch: takes across_ranks


LOSS_PRESETS: dict[str, LossPreset] = {p.name: p for p in (
    LossPreset("ce", False, 1.0, 0.0, "none (labels only)", born_again_loss_parts),
    LossPreset("ban+l", True, 1.0, 1.0, "T^2 * KL(teacher || student), batch mean", born_again_loss_parts),  # Eq. 2
    LossPreset("ban", True, 0.0, 1.0, "T^2 * KL(teacher || student), batch mean", born_again_loss_parts),
    LossPreset("cwtm", True, 1.0, 0.0, "label CE weighted by the teacher's max probability", _cwtm_parts,
               ignores=("teacher_weight", "temperature"), global_statistic=True),
    LossPreset("dkpp", True, 0.0, 1.0, "T^2 * KL(permuted teacher || student), batch mean", _dkpp_parts),
)}
STUDENT_LOSSES = tuple(name for name, p in LOSS_PRESETS.items() if p.needs_teacher)
"""The values `ban.loss` accepts: the presets that learn from a teacher."""


@dataclass(frozen=True)
class ResolvedLoss:
    """A preset with its weights fixed; call it like the preset's parts function, without the weights."""

    preset: LossPreset
    label_weight: float
    teacher_weight: float
    temperature: float
    label_smoothing: float = 0.0  # of the label term (train.label_smoothing)

    @property
    def needs_global_batch(self) -> bool:
        """Under torchrun, call with ``across_ranks`` (its normalisation is over the global batch)."""
        return self.preset.global_statistic

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                 labels: torch.Tensor, *, across_ranks: Callable | None = None) -> dict[str, torch.Tensor]:
        """``across_ranks``: sums a tensor over the data-parallel ranks (None: one process), for the presets
        whose batch normalisation needs the global batch; the others are per-example means, which the engine
        weights by each rank's share of the global batch."""
        extra = {"across_ranks": across_ranks} if self.preset.global_statistic else {}
        if self.label_smoothing:
            extra["label_smoothing"] = self.label_smoothing
        return self.preset.parts(student_logits, teacher_logits, labels, label_weight=self.label_weight,
                                 teacher_weight=self.teacher_weight, temperature=self.temperature, **extra)


def resolve_loss(name: str, *, label_weight: float | None = None, teacher_weight: float | None = None,
                 temperature: float | None = None, normalize: bool = False) -> ResolvedLoss:
    """The preset ``name`` with the given weights (None: the preset's); ``normalize`` divides the
    two weights by their sum. Done once per run, before training."""
    if name not in LOSS_PRESETS:
        raise UserError(f"unknown loss {name!r}; choose from {', '.join(STUDENT_LOSSES)}")
    preset = LOSS_PRESETS[name]
    lw = preset.label_weight if label_weight is None else label_weight
    tw = preset.teacher_weight if teacher_weight is None else teacher_weight
    if normalize and lw + tw > 0:
        lw, tw = lw / (lw + tw), tw / (lw + tw)
    return ResolvedLoss(preset, lw, tw, 1.0 if temperature is None else temperature)
