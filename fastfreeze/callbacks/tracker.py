"""Callbacks that follow a monitored value: `SaveModelCallback` keeps the best model by it (or one file per epoch)
and loads the best back at the end of the fit; `EarlyStopping` ends a fit when it has stopped improving."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from ..core.callback import Callback, CancelFitException
from ..utils.checks import check_int
from ..utils.files import WriteError
from ..utils.state_dicts import to_cpu_copy

Comparison = Callable[[float, float], bool]


class TrackerCallback(Callback):
    """Follows `monitor` (a column of the Recorder's epoch table: 'valid_loss', 'train_loss' or a metric
    name) and tells, after each epoch, whether it improved on the best value of this fit by more than
    `min_delta`. `comp(a, b)` is True when a is better than b; default: lower is better for names
    containing 'loss' or 'error', higher otherwise."""
    order = 61

    def __init__(self, monitor: str = "valid_loss", comp: Optional[Comparison] = None, min_delta: float = 0.0):
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor, self.min_delta = monitor, float(min_delta)
        lower = "loss" in monitor or "error" in monitor
        self.comp: Comparison = comp if comp is not None else (np.less if lower else np.greater)
        self.lower_is_better = bool(self.comp(0.0, 1.0))

    def before_fit(self) -> None:
        self.best = math.inf if self.lower_is_better else -math.inf
        self.best_epoch: Optional[int] = None
        self.new_best = False

    def after_epoch(self) -> None:
        row = self.learn.recorder.values[-1]
        if self.monitor not in row:
            names = [k for k in row if k not in ("phase", "epoch", "time", "step")]
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which is not in the results "
                             f"({', '.join(names)}): pass monitor= one of them")
        value = float(row[self.monitor])
        shift = self.min_delta if self.lower_is_better else -self.min_delta
        self.new_best = bool(self.comp(value + shift, self.best))  # NaN never improves
        if self.new_best:
            self.best, self.best_epoch = value, self.learn.epoch


class SaveModelCallback(TrackerCallback):
    """Save the model whenever `monitor` improves (`learn.save(fname)`: `models/{fname}.pth`, written
    atomically), or after every epoch as `{fname}_{epoch}` with `every_epoch=True`. With `load_best`
    (default) the best model is loaded back at the end of the fit, also after an interrupt.
    The best is tracked per fit: in `fine_tune` each phase starts afresh.
    A save the disk or the folder refuses (full, not writable: `utils.files.WriteError`) is a warning, and
    training goes on; the best model that could not be written is kept in memory (a copy on the CPU), and
    `load_best` loads it from there."""

    def __init__(self, monitor: str = "valid_loss", comp: Optional[Comparison] = None, min_delta: float = 0.0,
                 fname: str = "model", every_epoch: bool = False, with_opt: bool = True, load_best: bool = True):
        super().__init__(monitor, comp, min_delta)
        self.fname, self.every_epoch, self.with_opt, self.load_best = fname, every_epoch, with_opt, load_best

    def before_fit(self) -> None:
        super().before_fit()
        self.saved_best = False
        self.unsaved_best: Optional[dict[str, Any]] = None  # the best state when its file could not be written

    def after_epoch(self) -> None:
        if self.every_epoch:
            self._save(f"{self.fname}_{self.learn.epoch}", f"the model after epoch {self.learn.epoch}")
            return
        super().after_epoch()
        if self.new_best:
            saved = self._save(self.fname, f"the best model so far ({self.monitor} {self.best:g} at epoch "
                                           f"{self.best_epoch})")
            self.saved_best = True
            self.unsaved_best = None if saved else self._state_copy()

    def _save(self, name: str, what: str) -> bool:
        """`learn.save(name)`; a write the disk or the folder refuses is a warning (training goes on). True if
        written."""
        try:
            self.learn.save(name, with_opt=self.with_opt)
            return True
        except WriteError as e:
            kept = " It is kept in memory and loaded back at the end of the fit." if self.load_best and \
                not self.every_epoch else ""
            warnings.warn(f"{what} was not saved; training goes on.{kept} {e}", stacklevel=3)
            return False

    def _state_copy(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": to_cpu_copy(self.learn.model.state_dict())}
        if self.with_opt:
            state["opt"] = to_cpu_copy(self.learn.opt.state_dict())
        return state

    def after_fit(self) -> None:
        if not (self.load_best and not self.every_epoch and self.saved_best):
            return
        if self.unsaved_best is None:
            self.learn.load(self.fname, with_opt=self.with_opt)
            return
        self.learn.model.load_state_dict(self.unsaved_best["model"])
        if "opt" in self.unsaved_best:
            self.learn.opt.load_state_dict(self.unsaved_best["opt"])
        self.unsaved_best = None


class EarlyStopping(TrackerCallback):
    """End the fit (`CancelFitException`) when `monitor` has not improved by more than `min_delta` for
    `patience` epochs in a row. In `fine_tune` it ends the current phase (each phase is its own fit)."""
    order = 62  # after SaveModelCallback and CheckpointCallback have saved the epoch

    def __init__(self, monitor: str = "valid_loss", comp: Optional[Comparison] = None, min_delta: float = 0.0,
                 patience: int = 1):
        super().__init__(monitor, comp, min_delta)
        check_int(patience, "patience", unit="epochs without improvement")
        self.patience = patience

    def before_fit(self) -> None:
        super().before_fit()
        self.wait = 0
        self.stopped_epoch: Optional[int] = None

    def after_epoch(self) -> None:
        super().after_epoch()
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.learn.epoch
            print(f"No improvement of {self.monitor} since epoch {self.best_epoch}: early stopping")
            raise CancelFitException()
