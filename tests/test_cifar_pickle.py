"""CIFAR pickles are read with a restricted unpickler: a crafted file is refused
before any of its code runs, while files in the official format still load."""

from __future__ import annotations

import os
import pickle
import pickletools
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest

from bornagain_kd.errors import UserError
from bornagain_kd.vision import load_cifar

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _rows(n: int, offset: int) -> np.ndarray:
    rows = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    rows[:, 0, 0, 0] = np.arange(offset, offset + n)
    rows[:, 2] = 5
    return rows.reshape(n, 3072)


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 the way Python 2's cPickle wrote the official files: str/bytes as
    py2 strings (BINSTRING), numpy's _reconstruct under its numpy-1.x module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dumps(obj, protocol) -> bytes:
    if protocol == "py2":
        import io

        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return pickle.dumps(obj, protocol=protocol)


def _globals(data: bytes) -> set[str]:
    """The globals a pickle names (GLOBAL opcodes; STACK_GLOBAL takes the two preceding strings)."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def write_cifar10(parent: Path, protocol=pickle.DEFAULT_PROTOCOL) -> Path:
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        batch = {b"batch_label": b"training batch", b"data": _rows(2, 10 * i), b"labels": [i, (i + 1) % 10],
                 b"filenames": [b"a.png", b"b.png"]}
        (d / f"data_batch_{i}").write_bytes(_dumps(batch, protocol))
    (d / "test_batch").write_bytes(_dumps({b"data": _rows(3, 100), b"labels": [9, 0, 1]}, protocol))
    meta = {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (d / "batches.meta").write_bytes(_dumps(meta, protocol))
    return d


def write_cifar100(parent: Path, protocol=pickle.DEFAULT_PROTOCOL) -> Path:
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    train = {b"data": _rows(4, 0), b"fine_labels": [99, 5, 0, 42], b"coarse_labels": [1, 1, 1, 1]}
    (d / "train").write_bytes(_dumps(train, protocol))
    (d / "test").write_bytes(_dumps({b"data": _rows(2, 50), b"fine_labels": [3, 98], b"coarse_labels": [2, 2]}, protocol))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    (d / "meta").write_bytes(_dumps(meta, protocol))
    return d


# ---------------------------------------------------------------- crafted files are refused


class _ExecPayload:
    """Unpickling this calls builtins.exec, which writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


class _SystemPayload:
    """Unpickling this calls os.system (posix.system), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _payloads(marker: Path):
    yield "exec", _ExecPayload(marker)
    if os.name == "posix":
        yield "os.system", _SystemPayload(marker)
    # The payload hidden inside an otherwise well-formed batch dict.
    yield "nested", {b"data": _rows(2, 0), b"labels": [0, 1], b"fine_labels": [0, 1], b"x": _ExecPayload(marker)}


def _check_payload_works(payload, marker: Path) -> None:
    """Sanity check of the test itself: a plain pickle.loads does run the payload."""
    pickle.loads(pickle.dumps(payload))
    assert marker.exists(), "the payload did not run under plain pickle; the test would prove nothing"
    marker.unlink()


@pytest.mark.parametrize(
    "dataset, crafted",
    [("cifar10", "data_batch_1"), ("cifar10", "test_batch"), ("cifar10", "batches.meta"), ("cifar100", "train")],
)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_crafted_pickle_is_refused_and_does_not_run(tmp_path, dataset, crafted, protocol):
    marker = tmp_path / "marker"
    for kind, payload in _payloads(marker):
        _check_payload_works(payload, marker)
        parent = tmp_path / kind
        directory = (write_cifar10 if dataset == "cifar10" else write_cifar100)(parent)
        (directory / crafted).write_bytes(pickle.dumps(payload, protocol=protocol))
        try:
            load_cifar(dataset, parent, download=False)
        except Exception as err:  # noqa: BLE001 - checked below, after the marker
            error = err
        else:
            error = None
        assert not marker.exists(), f"the {kind} payload in {crafted} ran"
        assert isinstance(error, UserError), f"expected a UserError, got {error!r}"
        message = str(error)
        assert "not an official CIFAR batch file" in message and str(directory / crafted) in message
        assert "download" in message and "delete" in message and "\n" not in message


def test_codecs_encode_is_limited_to_latin1(tmp_path):
    directory = write_cifar10(tmp_path)
    # _codecs.encode("abc", "rot13"): an allowed global called for something other than latin-1.
    crafted = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    assert pickle.loads(crafted) == "nop"  # plain pickle does call it
    (directory / "data_batch_2").write_bytes(crafted)
    with pytest.raises(UserError, match="corrupt"):
        load_cifar("cifar10", tmp_path, download=False)


def test_non_dict_pickle_is_refused(tmp_path):
    directory = write_cifar10(tmp_path)
    (directory / "data_batch_5").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="not an official CIFAR batch file"):
        load_cifar("cifar10", tmp_path, download=False)


# ---------------------------------------------------------------- valid files still load


def test_py2_style_file_names_only_the_official_globals():
    # The official files (cPickle, protocol 2, numpy 1.x) name exactly these globals.
    data = _dumps({b"batch_label": b"b", b"data": _rows(2, 0), b"labels": [1, 2]}, "py2")
    assert _globals(data) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}


@pytest.mark.parametrize("protocol", ["py2", 2, 3, 4, 5])
def test_official_format_cifar10_loads(tmp_path, protocol):
    write_cifar10(tmp_path, protocol)
    (train_x, train_y), (test_x, test_y), classes = load_cifar("cifar10", tmp_path, download=False)
    assert train_x.shape == (10, 3, 32, 32) and train_x.dtype == np.uint8 and test_x.shape == (3, 3, 32, 32)
    assert train_x[:, 0, 0, 0].tolist() == [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]
    assert (train_x[:, 2] == 5).all() and (train_x[:, 1] == 0).all()
    assert train_y.dtype == np.int64 and train_y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert test_y.tolist() == [9, 0, 1]
    assert classes == tuple(n.decode() for n in CIFAR10_NAMES)


@pytest.mark.parametrize("protocol", ["py2", 2, pickle.DEFAULT_PROTOCOL])
def test_official_format_cifar100_loads(tmp_path, protocol):
    write_cifar100(tmp_path, protocol)
    (train_x, train_y), (test_x, test_y), classes = load_cifar("cifar100", tmp_path, download=False)
    assert train_x.shape == (4, 3, 32, 32) and train_x[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert train_y.tolist() == [99, 5, 0, 42] and test_y.tolist() == [3, 98]
    assert test_x[:, 0, 0, 0].tolist() == [50, 51]
    assert len(classes) == 100 and classes[42] == "class42"
