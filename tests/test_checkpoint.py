import random

import numpy as np
import pytest
import torch

from bornagain_kd.engine.checkpoint import (load_checkpoint, load_weights, pack_state, read_checkpoint, save_checkpoint,
                                         save_weights, unpack_state)
from bornagain_kd.errors import UserError


def _trained_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.2 ** (e >= 1))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    sched.step()
    return model, opt, sched


def test_pack_unpack_keeps_types_and_int_keys():
    state = {0: {"buf": torch.arange(3.0)}, "groups": [{"params": [0, 1], "lr": 0.1}], "t": (1, "a", None),
             "np": np.arange(4, dtype=np.uint32), "flag": True}
    tensors, skeleton = pack_state(state)
    back = unpack_state(tensors, skeleton)
    assert list(back) == [0, "groups", "t", "np", "flag"]
    assert torch.equal(back[0]["buf"], torch.arange(3.0))
    assert back["t"] == (1, "a", None) and back["np"].dtype == np.uint32 and back["flag"] is True


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, opt, sched = _trained_pair()
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, scheduler=sched, extra={"epoch": 4})
    expected_draws = (random.random(), np.random.rand(), torch.rand(2))

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda e: 0.2 ** (e >= 1))
    extra = load_checkpoint(tmp_path / "c.safetensors", model=model2, optimizer=opt2, scheduler=sched2)
    assert extra == {"epoch": 4}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.02)
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt2.state_dict()["state"][k]["momentum_buffer"])
    assert sched2.last_epoch == sched.last_epoch
    draws = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1] and torch.equal(draws[2], expected_draws[2])


def test_no_temporary_files_are_left(tmp_path):
    model, opt, sched = _trained_pair()
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, scheduler=sched)
    save_weights(model, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "m.safetensors"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_clear_error(tmp_path, damage):
    model, opt, sched = _trained_pair()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model=model, optimizer=opt)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path, model=model)


def test_weights_file_is_plain_safetensors_and_checks_shapes(tmp_path):
    model, _, _ = _trained_pair()
    save_weights(model, tmp_path / "m.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    with pytest.raises(UserError, match="do not fit"):
        load_weights(other, tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_files_get_the_ordinary_umask_mode(tmp_path):
    import os
    import stat

    from bornagain_kd.files import file_mode, write_json

    model, opt, _ = _trained_pair()
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt)
    write_json(tmp_path / "r.json", {"a": 1})
    for name in ("c.safetensors", "r.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == file_mode()
