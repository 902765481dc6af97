"""Index splits and batch order for datasets held in memory as tensors.

The engine keeps a whole split as one tensor and indexes it; these functions
only produce the indices: a stratified, seeded train/validation hold-out (the
test set never selects anything, so monitoring uses a split of the training
set) and the per-epoch batch order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from bornagain_kd.errors import UserError


def _validation_count(val_size: float | int, n: int) -> int:
    """The number of held-out examples that `val_size` asks for out of `n`."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise UserError(
            f"val_size={val_size!r} is not a number: give a fraction in (0, 1) "
            "such as 0.1, a whole number of examples such as 5000, or 0 for no validation split"
        )
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 <= val_size < 1.0:
            raise UserError(
                f"val_size={val_size} is a float outside [0, 1): give a fraction such as 0.1, "
                "a whole number of examples as an integer such as 5000, or 0 for no validation split"
            )
        # sklearn's rule for a fractional test_size: ceil(fraction * n).
        return math.ceil(float(val_size) * n)
    count = int(val_size)
    if not 0 <= count < n:
        raise UserError(
            f"val_size={val_size} must be at least 0 and smaller than the {n} training examples: "
            "lower it, or pass a fraction in (0, 1) such as 0.1"
        )
    return count


def train_val_split(labels: torch.Tensor, val_size: float | int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices into (train_idx, val_idx), stratified by label.

    `val_size` is a fraction in (0, 1) (ceil(val_size * n) examples held out),
    a whole count, or 0 for an empty validation split. Each class keeps its
    share in both parts (sklearn's stratified `train_test_split`), and the same
    `seed` gives the same split on every machine. Both index tensors are int64
    and sorted, so the split does not depend on anything but labels and seed.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {tuple(labels.shape)}")
    n = labels.shape[0]
    count = _validation_count(val_size, n)
    all_idx = np.arange(n)
    if count == 0:
        return torch.from_numpy(all_idx).long(), torch.empty(0, dtype=torch.long)
    y = labels.cpu().numpy()
    num_classes = len(np.unique(y))
    if count < num_classes:
        raise UserError(
            f"val_size={val_size} holds out {count} examples, fewer than the {num_classes} classes, "
            "so the split cannot be stratified: hold out at least one example per class (a larger val_size) or use 0"
        )
    if n - count < num_classes:
        raise UserError(
            f"val_size={val_size} leaves {n - count} training examples for {num_classes} classes: "
            "lower val_size so every class keeps at least one training example"
        )
    try:
        train_idx, val_idx = train_test_split(all_idx, test_size=count, random_state=seed, stratify=y)
    except ValueError as err:  # e.g. a class with a single example cannot be stratified
        raise UserError(
            f"cannot make a stratified validation split of {n} examples with val_size={val_size}: {err} "
            "Use val_size=0, or make sure every class has at least 2 training examples"
        ) from None
    return torch.from_numpy(np.sort(train_idx)).long(), torch.from_numpy(np.sort(val_idx)).long()


def iterate_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool = False,
    last: str = "short",
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors of at most `batch_size` that cover range(n) once.

    With `shuffle`, the order is one `torch.randperm(n, generator=generator)`,
    so the generator alone fixes the epoch's order. The final batch, when
    `batch_size` does not divide `n`: `last="short"` keeps it smaller,
    `"drop"` (or `drop_last`) skips it (e.g. to keep BatchNorm away from a batch
    of one), `"fill"` tops it up with the first indices of the order (seen twice),
    so that every batch has `batch_size` indices. With `0 < n < batch_size` the
    one batch holds all `n` under every setting, `"drop"` and `drop_last` too: a
    training set smaller than one batch still trains, one step an epoch (dropping
    it would train nothing). `n == 0` yields no batch.
    """
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs an explicit torch.Generator so the order is reproducible")
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    else:
        order = torch.arange(n)
    if last not in ("short", "drop", "fill"):
        raise ValueError(f"last={last!r} is not one of short, drop, fill")
    if n < batch_size:
        if n:
            yield order
        return
    rest = n % batch_size
    stop = n - rest if drop_last or last == "drop" else n
    for start in range(0, stop, batch_size):
        batch = order[start : start + batch_size]
        if last == "fill" and batch.shape[0] < batch_size:
            batch = torch.cat([batch, order[: batch_size - batch.shape[0]]])  # (batch_size,)
        yield batch
