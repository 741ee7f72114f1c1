"""CSV and TensorBoard logs, read back (csv, tensorboard's event reader) against the Recorder and the schedule."""
import csv
import errno
import math
import warnings

import pytest

import fastfreeze.callbacks.loggers
import fastfreeze.utils.files
from fastfreeze import DataLoaders, Learner, accuracy
from fastfreeze.callbacks.loggers import CSVLogger, TensorBoardCallback
from helpers import blobs, mlp2, one_cycle_oracle


def make(tmp_path, cbs):
    dls = DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0)  # 5 batches per epoch
    return Learner(mlp2(), dls, metrics=accuracy, path=tmp_path, cbs=cbs, progress=False)


def test_csv_holds_one_row_per_epoch_with_each_groups_lr(tmp_path):
    learn = make(tmp_path, CSVLogger())
    learn.fit_one_cycle(2, slice(1e-3, 1e-2))
    learn.fit(1, lr=3e-3, phase="constant")
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["phase", "epoch", "train_loss", "valid_loss", "accuracy", "step", "lr_0", "lr_1", "time"]
    assert [(r["phase"], r["epoch"], r["step"]) for r in rows] == [("fit 1", "0", "5"), ("fit 1", "1", "10"),
                                                                  ("constant", "0", "15")]
    for row, held in zip(rows, learn.recorder.values):
        for name in ("train_loss", "valid_loss", "accuracy", "time"):
            assert float(row[name]) == held[name]  # written in full precision
    # the lr at each epoch's last step: the one-cycle over 10 steps at steps 5 and 10, then the constant lr
    for g, peak in enumerate([1e-3, 1e-2]):
        lrs = one_cycle_oracle(10, peak)[0]
        assert [float(r[f"lr_{g}"]) for r in rows] == pytest.approx([lrs[4], lrs[9], 3e-3], rel=1e-9)
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_logger_on_a_full_disk_warns_and_the_fit_goes_on(tmp_path, monkeypatch):
    """The disk fills up after the first epoch's write: the next two writes warn, the fit ends its 3 epochs, the file
    keeps its one row; once there is space again, the next write holds every row."""
    learn = make(tmp_path, CSVLogger())
    history = tmp_path / "history.csv"
    real_writerows = csv.DictWriter.writerows

    def full_after_one_row(writer, rows):
        rows = list(rows)
        if len(rows) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writerows(writer, rows)
    monkeypatch.setattr(csv.DictWriter, "writerows", full_after_one_row)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        learn.fit(3, 1e-2)
    said = [str(w.message) for w in record if "was not written" in str(w.message)]
    assert len(said) == 2 and len(learn.recorder.values) == 3  # epochs 1 and 2 refused; all 3 trained
    assert said[0].startswith(f"the history after epoch 2 of 'fit 1' was not written to {history}; training goes on, "
                              "it keeps the rows of its last write, and the next epoch's write tries again with every "
                              f"row. could not write the training history (CSVLogger) {history}: the disk is full")
    with open(history, newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]  # the last good write, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]  # no temporary file left
    monkeypatch.undo()
    learn.fit(1, 1e-2, phase="after")
    with open(history, newline="") as f:
        assert [(r["phase"], r["epoch"]) for r in csv.DictReader(f)] == [("fit 1", "0"), ("fit 1", "1"),
                                                                         ("fit 1", "2"), ("after", "0")]


def test_tensorboard_events_read_back_as_the_recorder_holds_them(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoardCallback needs tensorboard (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    learn = make(tmp_path, TensorBoardCallback())
    learn.fit_one_cycle(2, slice(1e-3, 1e-2))
    learn.fit(1, lr=3e-3)
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()

    def read(tag):
        found = events.Scalars(tag)
        return [e.step for e in found], [e.value for e in found]
    rec = learn.recorder
    steps, losses = read("train/loss")
    assert steps == list(range(15))
    assert losses == pytest.approx(rec.losses, rel=1e-6)  # event files hold float32
    assert read("train/smooth_loss")[1] == pytest.approx(rec.smooth_losses, rel=1e-6)
    for g, peak in enumerate([1e-3, 1e-2]):
        assert read(f"lr/group_{g}")[1] == pytest.approx(list(one_cycle_oracle(10, peak)[0]) + [3e-3] * 5, rel=1e-6)
    assert read("valid/loss") == ([5, 10, 15], pytest.approx([r["valid_loss"] for r in rec.values], rel=1e-6))
    assert read("valid/accuracy")[1] == pytest.approx([r["accuracy"] for r in rec.values], rel=1e-6)
    assert read("epoch/train_loss")[1] == pytest.approx([r["train_loss"] for r in rec.values], rel=1e-6)


def test_only_rank_zero_writes_and_lr_find_is_left_out(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="TensorBoardCallback needs tensorboard (pip install tensorboard)")
    learn = make(tmp_path, [CSVLogger(), TensorBoardCallback()])
    learn.lr_find(num_it=10)
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "runs").exists()
    monkeypatch.setattr(fastfreeze.callbacks.loggers, "is_rank_zero", lambda: False)
    monkeypatch.setattr(fastfreeze.utils.files, "is_rank_zero", lambda: False)  # write_file's own check
    learn.fit(1)
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "runs").exists()
    assert len(learn.recorder.values) == 1 and math.isfinite(learn.recorder.values[0]["valid_loss"])


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    learn = make(tmp_path, TensorBoardCallback())
    with pytest.raises(ImportError, match="TensorBoardCallback needs the tensorboard package"):
        learn.fit(1)


def test_whole_set_metrics_and_accumulated_batches_are_logged(tmp_path):
    """A whole-set metric (F1Score, computed once per validation) gets its CSV column and TensorBoard tag, equal
    to scikit-learn's macro F1 of the model's validation predictions; under accumulation (2 batches a step) every
    batch's loss is in the event file and the CSV step column counts batches."""
    pytest.importorskip("tensorboard", reason="TensorBoardCallback needs tensorboard (pip install tensorboard)")
    from sklearn.metrics import f1_score
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from fastfreeze import F1Score
    dls = DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0)
    learn = Learner(mlp2(), dls, metrics=[accuracy, F1Score()], path=tmp_path,
                    cbs=[CSVLogger(), TensorBoardCallback()], progress=False)
    learn.fit(1, lr=1e-2, accum_steps=2)
    xv, yv = dls.valid.dataset.tensors
    learn.model.eval()
    expected = f1_score(yv.numpy(), learn.model(xv).argmax(1).numpy(), average="macro")
    with open(tmp_path / "history.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["f1_score"]) == pytest.approx(expected, abs=1e-12) and row["step"] == "5"
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    assert [e.value for e in events.Scalars("valid/f1_score")] == pytest.approx([expected], rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5))  # 5 batches, 3 optimizer steps
    assert learn.step_iter == 3
