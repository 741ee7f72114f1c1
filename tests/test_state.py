"""Training state: the state-dict check names everything that does not fit, files are written atomically and by
rank 0 only (stale temporaries removed, permissions from the umask), damaged files are named, random states come
back exactly, checkpoints are recognised by their format."""
import os
import random
import stat

import numpy as np
import pytest
import torch

import fastfreeze.utils.files
from fastfreeze import DataLoaders
from fastfreeze.utils.state_dicts import check_state_dict
from fastfreeze.utils.files import (load_torch, save_figure, save_torch, temporary_folder, temporary_name, write_file,
                                    write_files)
from fastfreeze.core.checkpoint import read_checkpoint, rng_states, set_rng_states
from helpers import blobs


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
    monkeypatch.setattr(fastfreeze.utils.files, "is_rank_zero", lambda: False)
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


def test_check_state_dict_not_strict_skips_missing_and_extra_keys_but_not_shapes():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_state_dict(expected, {"a": torch.ones(2), "extra": torch.ones(1)}, "f.pth", strict=False)  # fits enough
    with pytest.raises(ValueError, match=r"1 keys with a different shape: b: file \(4,\) vs model \(3,\)") as error:
        check_state_dict(expected, {"b": torch.ones(4), "extra": torch.ones(1)}, "f.pth", strict=False)
    assert "missing" not in str(error.value) and "does not have" not in str(error.value)


def test_a_stale_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.pth"
    temporary_name(target).write_bytes(b"left by a write that was killed")
    save_torch({"v": torch.ones(2)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]
    assert torch.equal(load_torch(target)["v"], torch.ones(2))


def test_an_interrupted_set_never_mixes_old_and_new_files_and_its_leftovers_go_next_time(tmp_path, monkeypatch):
    def fill_with(text):
        def fill(tmp):
            for name in ("weights.bin", "config.json"):
                (tmp / name).write_text(f"{text} {name}")
            return ["weights.bin", "config.json"]
        return fill
    folder = write_files(tmp_path / "export", fill_with("old"))
    real_replace, calls = os.replace, []

    def killed_after_the_first_rename(src, dst):
        if calls:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        write_files(folder, fill_with("new"))
    # the new weights are in, and the old config (which would describe them wrongly) is gone
    assert sorted(p.name for p in folder.iterdir()) == ["weights.bin"]
    assert (folder / "weights.bin").read_text() == "new weights.bin"
    monkeypatch.setattr(os, "replace", real_replace)
    temporary_folder(folder).mkdir()  # as a SIGKILL would leave it
    (temporary_folder(folder) / "weights.bin").write_text("half")
    write_files(folder, fill_with("newer"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [(folder / n).read_text() for n in ("weights.bin", "config.json")] == ["newer weights.bin",
                                                                                 "newer config.json"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    """safetensors writes its file 0600 whatever the umask; every file fastfreeze writes gets what open() would
    give it (0o666 & ~umask)."""
    def private(path):
        path.write_text("x")
        os.chmod(path, 0o600)
    old = os.umask(umask)
    try:
        write_file(tmp_path / "one", private)
        write_files(tmp_path / "set", lambda tmp: private(tmp / "f") or ["f"])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "one").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "set" / "f").stat().st_mode) == mode


def test_a_damaged_file_is_an_error_naming_it(tmp_path):
    file = save_torch({"v": torch.ones(100)}, tmp_path / "model.pth")
    file.write_bytes(file.read_bytes()[:200])  # cut short, as by an interrupted copy
    with pytest.raises(ValueError, match=r"cannot read .*model\.pth: it is damaged or incomplete .* Write it again"):
        load_torch(file)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read .*empty\.pth"):
        read_checkpoint(tmp_path / "empty.pth")


def test_save_figure_writes_the_format_of_the_suffix(tmp_path):
    import matplotlib.pyplot as plt
    figure = plt.figure()
    assert save_figure(figure, tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figure(figure, tmp_path / "b.svg").read_text().lstrip().startswith("<?xml")
    plt.close(figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.svg"]
