"""Logs of a fit on disk, so runs can be compared afterwards (docs/progress.md):

- `CSVLogger(fname)`: the Recorder's per-epoch table as a CSV file, one row per epoch of every fit (phase,
  epoch, step, train_loss, valid_loss, each metric, each layer group's lr at the epoch's last step, time),
  rewritten whole after every epoch through `utils.files.write_file` (never half-written); a write the disk
  or the folder refuses (full, not writable: `utils.files.WriteError`) is a warning, and training goes on (the
  file keeps the rows of its last write; the next epoch's write tries again with every row);
- `TensorBoardCallback(log_dir)`: TensorBoard event files with, per training step, the loss, the smoothed loss
  and each group's lr, and per epoch the losses and metrics. The per-step values are written at the end of
  each epoch, from the Recorder, which reads them back from the device once per epoch (no synchronisation
  per step). Needs `tensorboard` (`pip install 'fastfreeze[tensorboard]'`).

Both write on rank 0 only in a distributed run (the values they write are already reduced over the ranks)
and leave `lr_find` sweeps out.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from ..core.callback import Callback
from ..core.loop import BaseLearner
from ..utils.files import WriteError, write_file
from ..utils.ranks import is_rank_zero


def epoch_rows(learn: BaseLearner) -> list[dict[str, Any]]:
    """The Recorder's per-epoch rows, each with the lr of every layer group at the epoch's last step
    (`lr_0`, ..., head last; nan for an epoch without a training step)."""
    recorder = learn.recorder
    rows = []
    for row in recorder.values:
        step = row.get("step", 0)
        lrs = recorder.lrs[step - 1] if 0 < step <= len(recorder.lrs) else [math.nan] * learn.n_groups
        time = row.get("time")
        out = {k: v for k, v in row.items() if k != "time"}
        out.update({f"lr_{g}": lr for g, lr in enumerate(lrs)})
        out["time"] = time
        rows.append(out)
    return rows


class CSVLogger(Callback):
    """Write the history's per-epoch table to `fname` (relative to `learn.path`) after every epoch: the rows
    of all fits of this learner so far (module docstring). Read it back with `csv.DictReader` or
    `pandas.read_csv`. A write the disk refuses during a fit is a warning, and the fit goes on (module docstring);
    `write()` called by hand raises the `WriteError`."""
    order = 61  # after the Recorder (50) has the epoch's row
    learn: BaseLearner

    def __init__(self, fname: Union[str, Path] = "history.csv"):
        self.fname = Path(fname)

    @property
    def path(self) -> Path:
        return self.learn.path / self.fname

    def after_epoch(self) -> None:
        if self.learn.phase == "lr_find":
            return
        try:
            self.write()
        except WriteError as e:  # the disk is full or the folder not writable: the fit itself can go on
            kept = ("it keeps the rows of its last write" if self.path.exists() else "no history file is on disk yet")
            warnings.warn(f"the history after epoch {self.learn.epoch + 1} of {self.learn.phase!r} was not written to "
                          f"{self.path}; training goes on, {kept}, and the next epoch's write tries again with every "
                          f"row. {e}", stacklevel=2)

    def write(self) -> Path:
        """Write the table now; returns the file."""
        rows = epoch_rows(self.learn)
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]

        def fill(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        return write_file(self.path, fill, what="the training history (CSVLogger)")


class TensorBoardCallback(Callback):
    """Write TensorBoard event files to `log_dir` (default `learn.path/'runs'`), rank 0 only (module docstring).

    Tags: per step `train/loss`, `train/smooth_loss`, `lr/group_<g>` (step = training steps recorded on this
    learner); per epoch `epoch/train_loss`, `valid/loss` and `valid/<metric>` at the step the epoch ended.
    Steps recorded before the callback's first fit are not written (they are in the Recorder)."""
    order = 61
    learn: BaseLearner

    def __init__(self, log_dir: Optional[Union[str, Path]] = None):
        self.log_dir = log_dir
        self.writer: Any = None
        self.next_step: Optional[int] = None  # the first recorded step not written yet
        self.next_row = 0

    def before_fit(self) -> None:
        if self.learn.phase == "lr_find" or not is_rank_zero():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"TensorBoardCallback needs the tensorboard package ({e}): pip install tensorboard "
                              "(or pip install 'fastfreeze[tensorboard]')") from None
        recorder = self.learn.recorder
        if self.next_step is None:  # the first fit: start after what the Recorder holds already
            self.next_step, self.next_row = len(recorder.losses), len(recorder.values)
        log_dir = self.learn.path / "runs" if self.log_dir is None else Path(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def after_epoch(self) -> None:
        self._write()

    def after_fit(self) -> None:
        if self.writer is None:
            return
        try:
            self._write()
        finally:
            self.writer.close()
            self.writer = None

    def _write(self) -> None:
        if self.writer is None:
            return
        recorder = self.learn.recorder
        recorder.flush()
        for step in range(self.next_step, len(recorder.losses)):
            self.writer.add_scalar("train/loss", recorder.losses[step], step)
            self.writer.add_scalar("train/smooth_loss", recorder.smooth_losses[step], step)
            for g, lr in enumerate(recorder.lrs[step]):
                self.writer.add_scalar(f"lr/group_{g}", lr, step)
        self.next_step = len(recorder.losses)
        for row in recorder.values[self.next_row:]:
            for name in recorder.metric_names:
                value = row.get(name)
                if isinstance(value, float) and not math.isnan(value):
                    tag = "epoch/train_loss" if name == "train_loss" else f"valid/{name.removeprefix('valid_')}"
                    self.writer.add_scalar(tag, value, row["step"])
        self.next_row = len(recorder.values)
        self.writer.flush()
