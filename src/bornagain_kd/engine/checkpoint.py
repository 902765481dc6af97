"""Pickle-free checkpoints: one safetensors file holds every tensor, a JSON header the rest.

A checkpoint is the whole state of a run at an epoch boundary: model weights,
optimizer and scheduler state, the RNG states of python/numpy/torch, and an
``extra`` dict (epoch, step, metrics). Nested state is flattened by
``pack_state``: tensors go to the safetensors body under generated names, and
the structure (dicts with int or str keys, lists, tuples, numbers, strings)
goes to JSON in the file's metadata. Loading never unpickles anything.

Files are written atomically (tmp file, fsync, rename), so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bornagain_kd.files import atomic_write
from bornagain_kd.engine.rng import capture_rng_state, restore_rng_state
from bornagain_kd.errors import UserError

FORMAT = "bornagain-checkpoint-v1"


def pack_state(obj: Any, prefix: str = "s") -> tuple[dict[str, torch.Tensor], str]:
    """Split nested state into (tensors by name, JSON skeleton that refers to them)."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            name = f"{prefix}.{len(tensors)}"
            # clone: safetensors refuses tensors that share storage (tied weights)
            tensors[name] = v.detach().cpu().contiguous().clone()
            return {"T": name}
        if isinstance(v, np.ndarray):
            name = f"{prefix}.{len(tensors)}"
            tensors[name] = torch.from_numpy(np.ascontiguousarray(v).astype(np.int64 if v.dtype.kind in "ui" else v.dtype))
            return {"N": name, "dtype": str(v.dtype)}
        if isinstance(v, dict):
            return {"d": [[k, enc(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"t": [enc(x) for x in v]}
        if isinstance(v, list):
            return {"l": [enc(x) for x in v]}
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating,)):
            return float(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot store {type(v).__name__} in a checkpoint")

    return tensors, json.dumps(enc(obj))


def unpack_state(tensors: dict[str, torch.Tensor], skeleton: str) -> Any:
    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if "T" in v:
                return tensors[v["T"]]
            if "N" in v:
                return tensors[v["N"]].numpy().astype(v["dtype"])
            if "d" in v:
                return {k: dec(x) for k, x in v["d"]}
            if "t" in v:
                return tuple(dec(x) for x in v["t"])
            if "l" in v:
                return [dec(x) for x in v["l"]]
        return v

    return dec(json.loads(skeleton))


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A plain safetensors file (flat tensors + string metadata), written atomically."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel and torch.compile wrap the real module.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    extra: dict | None = None, with_rng: bool = True) -> None:
    """Write the whole training state to ``path`` (one safetensors file), atomically.
    ``with_rng=False``: the caller keeps RNG states in ``extra`` (the engine: one per rank)."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state() if with_rng else None,
        "extra": extra or {},
    }
    tensors, skeleton = pack_state(state)
    save_tensors(tensors, Path(path), {"format": FORMAT, "state": skeleton})


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file into its nested state; a damaged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError("not a bornagain checkpoint")
        return unpack_state(load_file(str(path)), meta["state"])
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise UserError(
            f"checkpoint '{path}' is corrupt or unreadable ({e.__class__.__name__}: {e}). "
            "Delete it to restart that stage from scratch, or rerun without --resume."
        ) from None


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> dict:
    """Restore model/optimizer/scheduler (and RNG) from ``path``; return its ``extra`` dict."""
    state = read_checkpoint(path)
    try:
        _unwrap(model).load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint '{path}' does not fit this model ({e}); was the config changed since the run started?") from None
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
        _match_parameter_layouts(optimizer)
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and state["rng"] is not None:
        restore_rng_state(state["rng"])
    return state["extra"]


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum, Adam's moments) its parameter's memory layout: a checkpoint
    holds them contiguous, and a channels_last parameter updated with a contiguous momentum buffer by the fused
    step trained differently after a resume than without one (measured: not identical)."""
    for param, slots in optimizer.state.items():
        for name, value in slots.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                slots[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)  # param's strides


def save_weights(model_or_state: torch.nn.Module | dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Final model weights as a plain safetensors file (loadable by any safetensors reader)."""
    state = _unwrap(model_or_state).state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_tensors(tensors, Path(path), {"format": "pt", **(metadata or {})})


def load_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = True) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise UserError(f"weights file '{path}' is corrupt or unreadable ({e.__class__.__name__}: {e})") from None
    try:
        _unwrap(model).load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise UserError(f"weights '{path}' do not fit this model: {e}") from None
    return model
