"""Training state: the state-dict check names everything that does not fit, files are written atomically and by
rank 0 only, random states come back exactly, checkpoints are recognised by their format."""
import random

import numpy as np
import pytest
import torch

import fastfreeze.state
from fastfreeze import DataLoaders
from fastfreeze.state import (check_state_dict, read_checkpoint, rng_states, save_torch, set_rng_states, write_file,
                              write_files)
from conftest import blobs


def test_check_state_dict_lists_missing_extra_reshaped_and_non_tensor_keys():
    expected = {f"w{i}": torch.zeros(2) for i in range(13)}
    given = {"w0": torch.zeros(3), "w1": "text", "extra": torch.zeros(1)}
    with pytest.raises(ValueError) as error:
        check_state_dict(expected, given, "file.pth", hint="Try again.")
    message = str(error.value)
    assert message.startswith("the weights in file.pth do not fit this model:")
    assert "11 keys of the model missing from the file: w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, ... and 1 more" \
        in message
    assert "1 keys in the file that the model does not have: extra" in message
    assert "1 keys with a different shape: w0: file (3,) vs model (2,)" in message
    assert "1 values in the file that are not tensors: w1" in message and message.endswith("Try again.")
    check_state_dict(expected, dict(expected), "file.pth")  # everything fits: no error


def test_write_file_replaces_the_target_only_once_the_content_is_complete(tmp_path):
    target = tmp_path / "sub" / "model.pth"
    save_torch({"v": torch.ones(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(2))

    def fails_half_way(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(target, fails_half_way)
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(2))  # the old file, intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pth"]  # no temporary left behind


def test_write_files_puts_the_files_in_place_and_cleans_up(tmp_path):
    def fill(tmp):
        for name in ("config.json", "weights.bin"):
            (tmp / name).write_text(name)
        return ["weights.bin", "config.json"]

    folder = write_files(tmp_path / "export", fill)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the temporary folder is gone


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fastfreeze.state, "is_rank_zero", lambda: False)
    assert save_torch({"v": 1}, tmp_path / "a.pth") == tmp_path / "a.pth"
    assert write_files(tmp_path / "export", lambda tmp: (tmp / "x").write_text("x") or ["x"]) == tmp_path / "export"
    assert list(tmp_path.iterdir()) == []


def test_random_states_come_back_exactly():
    dls = DataLoaders.from_tensors(*blobs(16), bs=4, seed=0)
    states = rng_states(dls.train)
    draws = (torch.rand(3), np.random.rand(3), random.random(), [xb for xb, _ in dls.train][0])
    set_rng_states(dls.train, states)
    again = (torch.rand(3), np.random.rand(3), random.random(), [xb for xb, _ in dls.train][0])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    assert torch.equal(draws[3], again[3])  # the loader shuffles the same way


def test_read_checkpoint_refuses_other_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="is not a fastfreeze checkpoint"):
        read_checkpoint(tmp_path / "plain.pth")
    torch.save({"format": "fastfreeze-checkpoint", "version": 1}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="format version 1; this fastfreeze reads version 3"):
        read_checkpoint(tmp_path / "old.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pth")
