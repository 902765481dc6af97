"""Tokenisation, dynamic padding and length-bucketed batches.

Examples are tokenised once, unpadded (`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`,
truncated longest-first to `max_seq_length`). Each batch is padded only to its
own longest sequence. Training batches can be *bucketed*: shuffle, cut the order
into chunks of `bucket_batches` batches, sort each chunk by length, batch it, and
shuffle the batches, so a batch holds sequences of similar length and wastes
little padding while the order stays random (measured in the issue-5 report:
GLUE sentences vary 5-128 tokens, and padding to the longest in a random batch
costs about twice the tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bornagain_kd.errors import UserError
from bornagain_kd.files import atomic_write, exclusive_lock, user_cache_dir
from bornagain_kd.glue.data import GlueExample
from bornagain_kd.glue.locations import resolve_location
from bornagain_kd.glue.tasks import GlueTask


def load_tokenizer(name_or_path: str):
    """A (fast) Hugging Face tokenizer from a local directory, a hub name or a package folder
    (``package:NAME/folder``, glue/locations.py)."""
    import logging  # noqa: PLC0415

    from transformers import AutoTokenizer  # noqa: PLC0415  (heavy import)

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # offline retries would print warnings before our one-line error
    try:
        return AutoTokenizer.from_pretrained(resolve_location(name_or_path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a tokenizer from {name_or_path!r} ({e.__class__.__name__}: {str(e).splitlines()[0]});"
            " set encoder.tokenizer to a local tokenizer directory, or a hub name while online"
        ) from None
    finally:
        hub_log.setLevel(level)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, normaliser, special tokens).

    Two copies of the same tokenizer in different folders get the same fingerprint.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Calling the tokenizer records its last truncation/padding call here: not part of its identity.
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:  # slow tokenizers: the vocabulary and the special tokens define the ids
        text = repr(sorted(tokenizer.get_vocab().items())) + repr(tokenizer.all_special_tokens)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class EncodedSplit:
    """One split of one task, tokenised: unpadded token ids plus labels, in example order.

    `labels` holds class indices (int64) or regression targets already divided by
    `task.label_scale` (float32); NaN / -1 where the split has no labels (test).
    """

    task: str
    ids: list[str]
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def label_tensor(task: GlueTask, examples: list[GlueExample]) -> torch.Tensor:
    """Class indices (int64, -1 when missing) or scaled scores y / label_scale (float32, NaN when missing)."""
    if task.is_regression:
        return torch.tensor([float("nan") if e.label is None else e.label / task.label_scale
                             for e in examples], dtype=torch.float32)
    return torch.tensor([-1 if e.label is None else e.label for e in examples], dtype=torch.int64)


TOKEN_CACHE_FORMAT = "bornagain-glue-tokens-v1"


def token_cache_path(task: GlueTask, examples: list[GlueExample], tokenizer, max_seq_length: int) -> Path:
    """$BORNAGAIN_CACHE_DIR/glue-tokens/<task>-<key>.npz, the key a sha256 of the examples (ids and texts, in
    order: labels are not tokenised), the tokenizer's definition, the truncation and the task: any change makes
    another file."""
    fingerprint = getattr(tokenizer, "_bornagain_fingerprint", None)
    if fingerprint is None:  # the tokenizer's definition is hashed once per tokenizer object
        fingerprint = tokenizer_fingerprint(tokenizer)
        with contextlib.suppress(AttributeError):
            tokenizer._bornagain_fingerprint = fingerprint
    h = hashlib.sha256(f"{TOKEN_CACHE_FORMAT}\0{task.name}\0{task.is_pair}\0{fingerprint}\0{max_seq_length}".encode())
    for e in examples:
        h.update(json.dumps([e.id, e.text_a, e.text_b]).encode("utf-8"))
        h.update(b"\n")
    return user_cache_dir() / "glue-tokens" / f"{task.name}-{h.hexdigest()[:24]}.npz"


def _read_tokens(path: Path, count: int) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != TOKEN_CACHE_FORMAT or z["offsets"].shape != (count + 1,):
                return None
            offsets, ids, types = z["offsets"], z["input_ids"], z["token_type_ids"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing, damaged: tokenised again
        return None
    return ([ids[offsets[i]:offsets[i + 1]] for i in range(count)],
            [types[offsets[i]:offsets[i + 1]] for i in range(count)])


def _write_tokens(path: Path, input_ids: list[np.ndarray], token_type_ids: list[np.ndarray]) -> None:
    offsets = np.zeros(len(input_ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in input_ids], out=offsets[1:])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, format=np.array(TOKEN_CACHE_FORMAT), offsets=offsets,
                     input_ids=np.concatenate(input_ids) if input_ids else np.zeros(0, np.int32),
                     token_type_ids=np.concatenate(token_type_ids) if token_type_ids else np.zeros(0, np.int8))

    atomic_write(path, write)


def encode_examples(task: GlueTask, examples: list[GlueExample], tokenizer, max_seq_length: int,
                    chunk_size: int = 2048, *, cache: bool = True) -> EncodedSplit:
    """Tokenise single sentences or sentence pairs (longest-first truncation, no padding).

    With ``cache`` the token ids are kept on disk (``token_cache_path``): every teacher, seed and rank after the
    first reads them back instead of tokenising again (MNLI: 393k pairs); processes that start together take turns
    through a lock file, so one tokenises and the others read what it wrote."""
    if not cache or not examples:
        return _encode(task, examples, tokenizer, max_seq_length, chunk_size)
    path = token_cache_path(task, examples, tokenizer, max_seq_length)
    tokens = _read_tokens(path, len(examples))  # a whole file is only read: no lock, no write access needed
    if tokens is None:
        with contextlib.ExitStack() as turn:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                turn.enter_context(exclusive_lock(path.with_suffix(".lock")))
                tokens = _read_tokens(path, len(examples))  # written by a process that had the turn before
            except OSError:  # an unwritable cache folder: tokenise here, as without a cache
                pass
            if tokens is None:
                encoded = _encode(task, examples, tokenizer, max_seq_length, chunk_size)
                with contextlib.suppress(OSError):  # a full disk or quota: the tokens are kept all the same
                    _write_tokens(path, encoded.input_ids, encoded.token_type_ids)
                return encoded
    return EncodedSplit(task.name, [e.id for e in examples], tokens[0], tokens[1], label_tensor(task, examples))


def _encode(task: GlueTask, examples: list[GlueExample], tokenizer, max_seq_length: int,
            chunk_size: int) -> EncodedSplit:
    input_ids: list[np.ndarray] = []
    token_type_ids: list[np.ndarray] = []
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        text_a = [e.text_a for e in chunk]
        text_b = [e.text_b or "" for e in chunk] if task.is_pair else None
        enc = tokenizer(text_a, text_b, truncation=True, max_length=max_seq_length, padding=False,
                        return_token_type_ids=True, return_attention_mask=False)
        input_ids += [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
        token_type_ids += [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]]
    return EncodedSplit(task.name, [e.id for e in examples], input_ids, token_type_ids,
                        label_tensor(task, examples))


def collate(split: EncodedSplit, indices: np.ndarray | list[int], pad_token_id: int) -> dict:
    """Pad one batch to its longest sequence.

    Returns input_ids, attention_mask, token_type_ids (b, t) int64, labels (b,),
    and index (b,): positions in `split`, so callers can find ids or teacher outputs.
    """
    indices = np.asarray(indices, dtype=np.int64)
    width = max(len(split.input_ids[i]) for i in indices)
    input_ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)  # (b, t)
    token_types = np.zeros((len(indices), width), dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        n = len(split.input_ids[i])
        input_ids[row, :n] = split.input_ids[i]
        token_types[row, :n] = split.token_type_ids[i]
        mask[row, :n] = 1
    index = torch.from_numpy(indices)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.from_numpy(token_types),
        "labels": split.labels[index],
        "index": index,
    }


def sort_within_chunks(order: np.ndarray, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """``order`` cut into chunks of about ``chunk`` positions, each sorted (stably) by ``lengths[order]``:
    the bucketing step shared by the teachers' batches and the student's mixed ones (glue/sampling.py)."""
    if not len(order):
        return order
    return np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                           for part in np.array_split(order, max(1, -(-len(order) // chunk)))])


def train_batch_indices(lengths: np.ndarray, batch_size: int, *, seed: int, bucket: bool = True,
                        bucket_batches: int = 50) -> list[np.ndarray]:
    """One epoch of training batches (index arrays), random but reproducible from `seed`.

    Every example appears exactly once; the last batch may be smaller.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if bucket:
        order = sort_within_chunks(order, lengths, batch_size * bucket_batches)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batch_indices(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length (least padding); callers scatter results back by index."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def iterate_batches(split: EncodedSplit, batches: list[np.ndarray], pad_token_id: int,
                    device: torch.device | None = None) -> Iterator[dict]:
    """Collated batches, moved to `device` (non-blocking) when given."""
    for indices in batches:
        batch = collate(split, indices, pad_token_id)
        if device is not None and device.type != "cpu":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield batch


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the padded batch tokens that are padding (a measure of wasted compute)."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / max(1, padded)
