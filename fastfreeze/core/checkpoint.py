"""Keeping training state safe: the best model, early stopping, NaN stops, and exact resume.

- `SaveModelCallback` keeps the best model by a monitored value (or one file per epoch) and loads the
  best back at the end of the fit.
- `EarlyStopping` ends a fit when the monitored value has stopped improving.
- `TerminateOnNaN` ends a fit cleanly at the first non-finite training loss, before that step.
- `CheckpointCallback` writes a resumable checkpoint after every epoch (`save_checkpoint`); `fit`,
  `fit_one_cycle` and `fine_tune` take `resume_from=` and go on where it stopped, with the same
  weights as a run that was never interrupted.

A checkpoint is `learn.state_dict()` (written by `learn.save_checkpoint`): the model, the optimizer
(moments and hyper-parameters), the GradScaler, the loop state (phase label, epochs done of how many,
training batch and optimizer step, `accum_steps`, the freeze state, the `fine_tune` phase and its base_lr),
the Recorder's history and smoothing state, the state of callbacks that keep one (an `EMA`'s average), the
torch/CUDA/NumPy/Python random states and the state of the training DataLoader's shuffling generator. Exact
resume also needs the same data in the same order: a DataLoader with `persistent_workers=True` keeps its
workers' random state out of reach, so random augmentation in workers is reproduced only for data that seeds
each item from its epoch and index (`ImageDataLoaders`, `seeds.py`), or with `num_workers=0` or
non-persistent workers; a resume that cannot be exact warns once (docs/reproducibility.md).

Files are written through `state.write_file` (a temporary name, then renamed; rank 0 only), so an interrupt
never leaves a half-written file, and read with `state.load_torch` (`torch.load(weights_only=True)`): no code
is unpickled, and a damaged file is an error naming it.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .callback import Callback, CancelFitException
from .loop import BaseLearner


# -------------------------------------------------------------------------------------------------
# resumable checkpoints
# -------------------------------------------------------------------------------------------------
class CheckpointCallback(Callback):
    """Write a resumable checkpoint (`learn.save_checkpoint(fname)`, by default `models/checkpoint.pth`)
    after every `every` epochs and after the last epoch of each fit. The file is overwritten each time.
    Resume with `learn.fit_one_cycle(..., resume_from=fname)` (or `fit`/`fine_tune`, with the same arguments)."""
    order = 61  # after the Recorder (50) has the epoch's row and the progress table (60) printed it
    learn: BaseLearner

    def __init__(self, fname: Union[str, Path] = "checkpoint", every: int = 1):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (epochs between checkpoints), got {every!r}")
        self.fname, self.every = fname, every

    def after_epoch(self) -> None:
        done = self.learn.epoch + 1
        if done % self.every == 0 or done == self.learn.n_epoch:
            self.learn.save_checkpoint(self.fname)


# -------------------------------------------------------------------------------------------------
# monitoring callbacks
# -------------------------------------------------------------------------------------------------
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
    The best is tracked per fit: in `fine_tune` each phase starts afresh."""

    def __init__(self, monitor: str = "valid_loss", comp: Optional[Comparison] = None, min_delta: float = 0.0,
                 fname: str = "model", every_epoch: bool = False, with_opt: bool = True, load_best: bool = True):
        super().__init__(monitor, comp, min_delta)
        self.fname, self.every_epoch, self.with_opt, self.load_best = fname, every_epoch, with_opt, load_best

    def before_fit(self) -> None:
        super().before_fit()
        self.saved_best = False

    def after_epoch(self) -> None:
        if self.every_epoch:
            self.learn.save(f"{self.fname}_{self.learn.epoch}", with_opt=self.with_opt)
            return
        super().after_epoch()
        if self.new_best:
            self.learn.save(self.fname, with_opt=self.with_opt)
            self.saved_best = True

    def after_fit(self) -> None:
        if self.load_best and not self.every_epoch and self.saved_best:
            self.learn.load(self.fname, with_opt=self.with_opt)


class EarlyStopping(TrackerCallback):
    """End the fit (`CancelFitException`) when `monitor` has not improved by more than `min_delta` for
    `patience` epochs in a row. In `fine_tune` it ends the current phase (each phase is its own fit)."""
    order = 62  # after SaveModelCallback and CheckpointCallback have saved the epoch

    def __init__(self, monitor: str = "valid_loss", comp: Optional[Comparison] = None, min_delta: float = 0.0,
                 patience: int = 1):
        super().__init__(monitor, comp, min_delta)
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int (epochs without improvement), got {patience!r}")
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


class TerminateOnNaN(Callback):
    """End the fit cleanly (`CancelFitException`, with a warning) at the first training batch whose loss is
    NaN or infinite, before that batch's step touches the parameters, on every device (BatchNorm running
    statistics have seen the batch's forward pass already).

    Without it, every learner's `DivergenceGuard` raises FloatingPointError on a non-finite loss: before the
    step on the CPU, and within `learn.divergence_guard.check_every` steps on a GPU (each check waits for the
    GPU), leaving finite weights (divergence.py). This callback checks every step everywhere instead and ends
    the fit without an error, which on a GPU costs one host-device synchronisation per step."""

    def after_loss(self) -> None:
        if self.learn.training and not bool(torch.isfinite(self.learn.loss.detach()).all()):
            self.stopped_at = (self.learn.epoch, self.learn.iter)
            warnings.warn(f"TerminateOnNaN: the training loss is {float(self.learn.loss.detach())} at epoch "
                          f"{self.learn.epoch}, batch {self.learn.iter}: the fit stops before this step")
            raise CancelFitException()
