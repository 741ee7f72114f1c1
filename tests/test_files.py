"""A full disk, a folder without write permission or a read-only file system while saving (learn.save, checkpoints,
SaveModelCallback, learn.export): a `WriteError` in words (what could not be written, that the previous file is
kept, what to do) instead of torch's "unexpected pos" or safetensors' "No space left on device", the previous
file kept byte for byte, and a fit whose periodic checkpoint fails goes on with a warning. The writers are
replaced by ones that raise what torch and safetensors raise on a full disk (docs/errors.md, "Export and saving")."""
import errno
import warnings

import pytest
import torch

from fastfreeze import Callback, Learner, SaveModelCallback
from fastfreeze.core.checkpoint import CheckpointCallback, read_checkpoint
from fastfreeze.inference.export_format import CONFIG_FILE, WEIGHTS_FILE
from fastfreeze.inference.predictor import load_learner
from fastfreeze.utils.files import WriteError
from helpers import mlp2, snapshot

TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # torch.save, ENOSPC


def _raising(error):
    def save(*args, **kwargs):
        raise error
    return save


@pytest.mark.parametrize("error,reason", [
    (TORCH_FULL, "the disk is full (no space left on device)"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (no space left on device)"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied: this process may not write in"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system holding {folder} is read-only"),
])
def test_learn_save_that_the_disk_refuses_keeps_the_previous_file_and_says_what_to_do(dls_5_batches, tmp_path,
                                                                                       monkeypatch, error, reason):
    learn = Learner(mlp2(), dls_5_batches, progress=False, path=tmp_path)
    file = learn.save("model")
    before = file.read_bytes()
    learn.fit(1, 1e-2)  # other weights now
    monkeypatch.setattr(torch, "save", _raising(error))
    with pytest.raises(WriteError) as info:
        learn.save("model")
    message = str(info.value)
    code = getattr(error, "errno", errno.ENOSPC)  # torch's "unexpected pos" is its short write on a full disk
    assert isinstance(info.value, OSError) and info.value.errno == code
    assert message.startswith(f"could not write the model state (learn.save) to {file}: "
                              + reason.format(folder=file.parent))
    assert "The previous model.pth is kept, unchanged" in message
    fix = {errno.EACCES: "Save to a folder you can write to", errno.EROFS: "Save to a folder on a writable disk"}
    assert fix.get(code, f"Free space on the disk holding {file.parent}") in message
    assert file.read_bytes() == before and sorted(p.name for p in file.parent.iterdir()) == ["model.pth"]
    with pytest.raises(WriteError, match=rf"Nothing was written at {tmp_path / 'models' / 'other.pth'}"):
        learn.save("other")


def test_an_error_that_is_not_the_disks_is_not_reworded(dls_5_batches, tmp_path, monkeypatch):
    learn = Learner(mlp2(), dls_5_batches, progress=False, path=tmp_path)
    monkeypatch.setattr(torch, "save", _raising(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="^something else$"):
        learn.save("model")


class FailSaves(Callback):
    """From epoch `first` (0-based) on, torch.save raises what it raises on a full disk."""
    order = 55  # before the checkpoint (61)

    def __init__(self, monkeypatch, first):
        self.monkeypatch, self.first = monkeypatch, first

    def before_epoch(self):
        if self.learn.epoch == self.first:
            self.monkeypatch.setattr(torch, "save", _raising(TORCH_FULL))


def test_a_checkpoint_the_full_disk_refuses_during_fit_warns_and_training_goes_on(dls_5_batches, tmp_path,
                                                                                  monkeypatch):
    learn = Learner(mlp2(), dls_5_batches, progress=False, path=tmp_path)
    with pytest.warns(UserWarning) as record:
        learn.fit(3, 1e-2, cbs=[FailSaves(monkeypatch, first=1), CheckpointCallback()])
    assert [row["epoch"] for row in learn.recorder.values] == [0, 1, 2]  # all three epochs trained
    messages = [str(w.message) for w in record if "checkpoint" in str(w.message)]
    assert len(messages) == 2  # after epochs 2 and 3
    assert messages[0].startswith("the checkpoint after epoch 2 of 'fit 1' was not written; training goes on, and a "
                                  "resume would start from the previous checkpoint, which is kept. could not write "
                                  f"the checkpoint {tmp_path / 'models' / 'checkpoint.pth'}: the disk is full")
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "models" / "checkpoint.pth")["loop"]["start_epoch"] == 1  # epoch 1's, whole


class RecordWeights(Callback):
    order = 70

    def __init__(self):
        self.weights = []

    def after_epoch(self):
        self.weights.append(snapshot(self.learn.model.parameters()))


def test_save_model_callback_on_a_full_disk_keeps_the_best_in_memory_and_loads_it_back(dls_5_batches, tmp_path,
                                                                                       monkeypatch):
    learn = Learner(mlp2(), dls_5_batches, progress=False, path=tmp_path)
    weights = RecordWeights()
    monkeypatch.setattr(torch, "save", _raising(OSError(errno.ENOSPC, "No space left on device")))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        learn.fit(3, 0.3, cbs=[SaveModelCallback(), weights])  # lr 0.3: the validation loss is lowest after epoch 1
    losses = [row["valid_loss"] for row in learn.recorder.values]
    best = min(range(3), key=losses.__getitem__)
    assert best < 2, losses  # else the last weights would pass for the best
    assert all(torch.equal(a, b) for a, b in zip(snapshot(learn.model.parameters()), weights.weights[best]))
    saves = [str(w.message) for w in record if "was not saved" in str(w.message)]
    assert saves and saves[0].startswith(f"the best model so far (valid_loss {losses[0]:g} at epoch 0) was not saved; "
                                         "training goes on. It is kept in memory and loaded back at the end of the fit.")
    assert not (tmp_path / "models" / "model.pth").exists()


def test_an_export_the_full_disk_refuses_leaves_the_previous_export_loadable(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError
    from fastfreeze import vision_learner
    from helpers import array_dls
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False, path=tmp_path)
    folder = learn.export("export")
    config, weights = (folder / CONFIG_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes()
    learn.fit(1, 1e-2)
    monkeypatch.setattr(safetensors.torch, "save_file", _raising(SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')))
    with pytest.raises(WriteError, match=rf"^could not write the export to {folder}: the disk is full .*{folder} is "
                                         r"left as it was \(a previous one there is kept, unchanged\)\. Free space"):
        learn.export("export")
    assert (folder / CONFIG_FILE).read_bytes() == config and (folder / WEIGHTS_FILE).read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left
    monkeypatch.undo()
    assert load_learner(folder).n_out == 3
