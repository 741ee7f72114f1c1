"""Keeping training state safe: the best model, early stopping, NaN stops, and exact resume.

- `SaveModelCallback` keeps the best model by a monitored value (or one file per epoch) and loads the
  best back at the end of the fit.
- `EarlyStopping` ends a fit when the monitored value has stopped improving.
- `TerminateOnNaN` ends a fit cleanly at the first non-finite training loss, before that step.
- `CheckpointCallback` writes a resumable checkpoint after every epoch (`save_checkpoint`); `fit`,
  `fit_one_cycle` and `fine_tune` take `resume_from=` and go on where it stopped, with the same
  weights as a run that was never interrupted.

A checkpoint holds the model, the optimizer (moments and hyper-parameters), the freeze state, where the
fit is (phase label, epochs done of how many, training step, the `fine_tune` phase and its base_lr), the
torch/CUDA/NumPy/Python random states, the state of the training DataLoader's shuffling generator and
the Recorder's history. Exact resume also needs the same data in the same order: a DataLoader with
`persistent_workers=True` keeps its workers' random state out of reach, so random augmentation in
workers is reproduced only with `num_workers=0` or non-persistent workers.

Files are written to a temporary name and renamed (`os.replace`), so an interrupt never leaves a
half-written file, and read with `torch.load(weights_only=True)`: no code is unpickled.
"""
from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

from .distributed import batches_per_epoch
from .callback import Callback, CancelFitException
from .data import loader_generators

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

CHECKPOINT_FORMAT = "fastfreeze-checkpoint"
CHECKPOINT_VERSION = 1
_HISTORY = ("losses", "smooth_losses", "lrs", "moms", "phases", "values")  # the Recorder's history lists
_SHOWN = 8


# -------------------------------------------------------------------------------------------------
# state dicts
# -------------------------------------------------------------------------------------------------
def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], source: str) -> None:
    """Raise a ValueError naming what does not fit when `given` (from `source`) cannot be loaded
    strictly into a model whose state dict is `expected`: missing keys, extra keys, other shapes."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}" for k in expected
              if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != expected[k].shape]
    not_tensors = [k for k in given if k in expected and not isinstance(given[k], torch.Tensor)]
    if not (missing or extra or shapes or not_tensors):
        return
    parts = [f"the weights in {source} do not fit this model:"]
    for title, items in (("missing from the file", missing), ("in the file but not in the model", extra),
                         ("with another shape", shapes), ("that are not tensors", not_tensors)):
        if items:
            more = f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            parts.append(f"  {len(items)} keys {title}: {', '.join(items[:_SHOWN])}{more}")
    parts.append("Were they saved from another architecture, head or number of classes? Build the learner exactly "
                 "as the one that saved them.")
    raise ValueError("\n".join(parts))


def _atomic_save(obj: Any, file: Path) -> Path:
    """`torch.save` to a temporary file next to `file`, then rename it over `file`."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, file)
    return file


# -------------------------------------------------------------------------------------------------
# random states
# -------------------------------------------------------------------------------------------------
def rng_states(learn: "Learner") -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python random states and the training DataLoader's generators,
    as tensors and plain types (loadable with `weights_only=True`)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
            "loaders": [g.get_state() for g in loader_generators(learn.dls.train)]}


def set_rng_states(learn: "Learner", states: dict[str, Any]) -> None:
    """Put back what `rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    generators = loader_generators(learn.dls.train)
    if len(generators) != len(states["loaders"]):
        raise ValueError(f"the training DataLoader draws its order from {len(generators)} generator(s), but the "
                         f"checkpoint recorded {len(states['loaders'])}: resume with the same kind of DataLoaders")
    for g, state in zip(generators, states["loaders"]):
        g.set_state(state)


# -------------------------------------------------------------------------------------------------
# checkpoints
# -------------------------------------------------------------------------------------------------
def save_checkpoint(learn: "Learner", file: Union[str, Path]) -> Path:
    """Write everything needed to resume the current fit exactly (see the module docstring).

    The current epoch counts as done: call it in `after_epoch` (as `CheckpointCallback` does) or
    between fits, not after an interrupt in the middle of an epoch.
    """
    epochs_done = min(learn.epoch + 1, learn.n_epoch)
    n_batches = batches_per_epoch(learn.dls.train)  # this process's share under DDP
    scaler = getattr(learn, "scaler", None)
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": learn.model.state_dict(),
        "opt": learn.opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "fit": {"phase": learn.phase, "n_epoch": learn.n_epoch, "epochs_done": epochs_done,
                "n_batches": n_batches, "train_iter": epochs_done * n_batches, "n_fits": learn._n_fits,
                "n_groups": learn.n_groups, "frozen_groups": learn.frozen_groups,
                "recalibrated_for": learn._recalibrated_for},
        "fine_tune": dict(learn.fine_tune_state) if learn.fine_tune_state else None,
        "rng": rng_states(learn),
        "recorder": {name: list(getattr(learn.recorder, name)) for name in _HISTORY},
    }
    return _atomic_save(state, Path(file))


def read_checkpoint(file: Union[str, Path]) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (on the CPU, `weights_only=True`) and check its format."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}: check the name, or `learn.path`/`model_dir` "
                                "(CheckpointCallback writes models/checkpoint.pth by default)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a fastfreeze checkpoint (written by learn.save_checkpoint or "
                         "CheckpointCallback); a file written by learn.save loads with learn.load")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{file} is a checkpoint of format version {state.get('version')!r}; this fastfreeze "
                         f"reads version {CHECKPOINT_VERSION}")
    return state


def resume(learn: "Learner", file: Union[str, Path], n_epoch: int) -> int:
    """Restore the state a checkpoint recorded into `learn` for a fit of `n_epoch` epochs (the same
    fit that wrote it); return the number of epochs already done (the fit's `start_epoch`)."""
    state = read_checkpoint(file)
    fit = state["fit"]
    if fit["n_epoch"] != n_epoch:
        raise ValueError(f"{file} was written during a fit of {fit['n_epoch']} epochs ({fit['phase']!r}), not "
                         f"{n_epoch}: resume with the same call and arguments, or use learn.load({str(file)!r}) "
                         "to load its weights and optimizer only")
    if fit["n_groups"] != learn.n_groups:
        raise ValueError(f"{file} was written by a learner with {fit['n_groups']} layer groups; this one has "
                         f"{learn.n_groups}: build the learner as before")
    if fit["n_batches"] != batches_per_epoch(learn.dls.train):
        raise ValueError(f"{file} was written with {fit['n_batches']} training batches per epoch; the data now "
                         f"gives {batches_per_epoch(learn.dls.train)}: resume on the same data and batch size")
    if learn.fine_tune_state is not None and learn.frozen_groups != fit["frozen_groups"]:
        raise ValueError(f"{file} was written with {fit['frozen_groups']} frozen layer groups, but this fine_tune "
                         f"phase freezes {learn.frozen_groups}: resume with the same strategy and arguments")
    check_state_dict(learn.model.state_dict(), state["model"], str(file))
    learn.model.load_state_dict(state["model"])
    learn.freeze_to(fit["frozen_groups"])
    learn.opt.load_state_dict(state["opt"])  # after freeze_to, which may reset the optimizer state
    learn._recalibrated_for = fit["recalibrated_for"]
    if state["scaler"] is not None and getattr(learn, "scaler", None) is not None:
        learn.scaler.load_state_dict(state["scaler"])
    learn.phase, learn._n_fits = fit["phase"], fit["n_fits"]
    for name in _HISTORY:
        setattr(learn.recorder, name, list(state["recorder"][name]))
    set_rng_states(learn, state["rng"])
    return fit["epochs_done"]


class CheckpointCallback(Callback):
    """Write a resumable checkpoint (`learn.save_checkpoint(fname)`, by default `models/checkpoint.pth`)
    after every `every` epochs and after the last epoch of each fit. The file is overwritten each time.
    Resume with `learn.fit_one_cycle(..., resume_from=fname)` (or `fit`/`fine_tune`, with the same arguments)."""
    order = 61  # after the Recorder (50) has the epoch's row and the progress table (60) printed it

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

    The Learner itself raises FloatingPointError on a non-finite loss: before the step on the CPU, and
    within `Learner.finite_check_every` steps on a GPU (each check waits for the GPU). This callback checks
    every step everywhere instead, which on a GPU costs one host-device synchronisation per step."""

    def after_loss(self) -> None:
        if self.learn.training and not bool(torch.isfinite(self.learn.loss.detach()).all()):
            self.stopped_at = (self.learn.epoch, self.learn.iter)
            warnings.warn(f"TerminateOnNaN: the training loss is {float(self.learn.loss.detach())} at epoch "
                          f"{self.learn.epoch}, batch {self.learn.iter}: the fit stops before this step")
            raise CancelFitException()
