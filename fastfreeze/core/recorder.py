"""What a fit leaves behind: the `Recorder`, the history of every fit, phase by phase (what it shows while it
runs is the `ProgressCallback`, progress.py)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any, Optional, Union

import torch

from ..utils.files import save_figure
from .callback import Callback
from .metrics import Gather, Metric, accumulated_value, as_metric, metric_name
from .optim import momentum_of

Number = Union[float, torch.Tensor]
# sums a list of floats over the processes of a distributed run (same list length on every process)
SumAcrossRanks = Callable[[list[float]], list[float]]


class DebiasedEMA:
    """The smoothed loss of the Recorder and of `lr_find`: an exponential moving average with weight `beta`
    on the past, divided by `1 - beta**count` so the first values are not pulled towards 0:

        avg_t = beta * avg_{t-1} + (1 - beta) * x_t      (avg_0 = 0)
        smoothed_t = avg_t / (1 - beta**t)

    Works on floats and on tensors (kept on their device: no synchronisation)."""

    def __init__(self, beta: float = 0.98):
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        self.avg: Number = 0.0
        self.count = 0

    def update(self, value: Number) -> Number:
        """Add `value`; return the smoothed value."""
        self.count += 1
        self.avg = self.avg * self.beta + value * (1 - self.beta)
        return self.avg / (1 - self.beta ** self.count)

    def state_dict(self) -> dict[str, Any]:
        avg = self.avg.detach().cpu() if isinstance(self.avg, torch.Tensor) else torch.tensor(float(self.avg))
        return {"beta": self.beta, "avg": avg, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: Optional[torch.device] = None) -> None:
        self.beta, self.count = float(state["beta"]), int(state["count"])
        self.avg = state["avg"].to(device) if device is not None else float(state["avg"])


class Recorder(Callback):
    """Keeps the history of every fit on this learner, phase by phase (fastai forgets all but the last fit).

    Per training batch (recorded in `after_step`, as soon as the step has changed the weights): `losses`,
    `smooth_losses` (`DebiasedEMA`, beta 0.98, reset at every fit), `lrs` and `moms` (one value per layer
    group), `phases` (the label of the fit it belongs to). Under gradient accumulation (`accum_steps=n`) a
    step takes several batches: each of their losses is recorded at that step, with the step's lrs.
    Per epoch: `values`, a list of dicts with phase, epoch, train_loss (the smoothed loss at the end of
    the epoch), valid_loss (size-weighted mean), each metric, time in seconds and the step it ended at.
    Loss values are kept on the device and read back once per epoch, so recording adds no
    host-device synchronisation per batch.

    `sum_across_ranks`: None in a single process. In a distributed fit it is set (by `DistributedCallback`) to a
    function summing a list of floats over the processes; the Recorder then averages each epoch's training
    losses over the ranks and sums the validation loss and metric totals before dividing, so every rank reports
    the values one process would get on all the data. `gather_across_ranks` (set with it) gathers a value from
    every process: whole-set metrics (update/compute objects) combine their states with it.

    Metrics (docs/metrics.md): a function gets the raw outputs of each batch (`Metric` keeps its size-weighted
    mean); an object with update/compute/reset gets the activated outputs (`learn.activation`) and is computed
    once after the last batch.
    """
    order = 50
    HISTORY = ("losses", "smooth_losses", "lrs", "moms", "phases", "values")

    def __init__(self, beta: float = 0.98):
        self.smoother = DebiasedEMA(beta)
        self.sum_across_ranks: Optional[SumAcrossRanks] = None
        self.gather_across_ranks: Optional[Gather] = None
        self.reset()

    @property
    def beta(self) -> float:
        return self.smoother.beta

    def reset(self) -> None:
        """Forget the whole history."""
        self.losses: list[float] = []
        self.smooth_losses: list[float] = []
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []
        self.phases: list[str] = []
        self.values: list[dict[str, Any]] = []
        self.lr_find_results: Optional[dict[str, Any]] = None
        self.pending_losses: list[torch.Tensor] = []   # this epoch's losses, still on the device
        self.pending_smooth: list[torch.Tensor] = []
        self.unstepped: list[torch.Tensor] = []  # losses of the batches the next optimizer step will take
        self.last_validation: list[float] = []
        self.metric_objs: list[Any] = []
        self._restored = False

    def state_dict(self) -> dict[str, Any]:
        """The history, the smoothing state and the last lr sweep, as plain lists and tensors (for checkpoints and
        `lr_find`)."""
        self.flush()
        state: dict[str, Any] = {name: [list(v) if isinstance(v, list) else (dict(v) if isinstance(v, dict) else v)
                                        for v in getattr(self, name)] for name in self.HISTORY}
        state["smoother"] = self.smoother.state_dict()
        state["lr_find_results"] = copy.deepcopy(self.lr_find_results)  # plain lists and numbers
        return state

    def load_state_dict(self, state: dict[str, Any], resume: bool = False) -> None:
        """Put back a `state_dict`. `resume=True` (a fit resumed from a checkpoint): the next fit goes on with the
        restored smoothing state instead of starting afresh, so its smoothed losses are those of an uninterrupted
        run."""
        for name in self.HISTORY:
            setattr(self, name, [list(v) if isinstance(v, list) else (dict(v) if isinstance(v, dict) else v)
                                 for v in state[name]])
        self.pending_losses, self.pending_smooth = [], []
        self.smoother.load_state_dict(state["smoother"], device=self._device())
        self.lr_find_results = copy.deepcopy(state.get("lr_find_results"))
        self._restored = resume

    def _device(self) -> torch.device:
        learn = getattr(self, "learn", None)
        return learn.device if learn is not None else torch.device("cpu")

    # -- metric names ---------------------------------------------------------------------------
    @property
    def metrics(self) -> list[Any]:
        """The learner's metrics: `Metric`s (batch means) and update/compute/reset objects (whole-set)."""
        return [as_metric(m) for m in self.learn.metrics]

    @property
    def metric_names(self) -> list[str]:
        return ["train_loss", "valid_loss"] + [metric_name(m) for m in self.metrics]

    # -- events ---------------------------------------------------------------------------------
    def before_fit(self) -> None:
        if not self._restored:  # a fit resumed from a checkpoint goes on with the smoothing state it restored
            self.smoother.reset()
        self._restored = False
        self.learn.smooth_loss = torch.tensor(float("nan"))
        self.unstepped = []

    def before_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self.last_validation = []

    def after_backward(self) -> None:
        """A training batch's loss waits here until the optimizer step that takes its gradient."""
        if self.learn.loss is not None:
            self.unstepped.append(self.learn.loss.detach().float())

    def after_step(self) -> None:
        """Record the training step just taken, right after the optimizer step: a batch interrupted before its
        step is not in the history, one interrupted later (in `after_batch`) is, as its step is in the weights."""
        groups = self.learn.opt.param_groups
        lrs, moms = [g["lr"] for g in groups], [momentum_of(g) for g in groups]
        for loss in self.unstepped:
            smooth = self.smoother.update(loss)
            self.learn.smooth_loss = smooth
            self.pending_losses.append(loss)
            self.pending_smooth.append(smooth)
            self.lrs.append(list(lrs))
            self.moms.append(list(moms))
            self.phases.append(self.learn.phase)
        self.unstepped = []

    def after_train(self) -> None:
        """Under DDP: this epoch's recorded losses become their mean over the ranks (one collective)."""
        if self.sum_across_ranks is None or not self.pending_losses:
            return
        n = len(self.pending_losses)
        stacked = torch.stack(self.pending_losses + self.pending_smooth)
        sums = self.sum_across_ranks(stacked.tolist() + [1.0])  # the last entry counts the ranks
        mean = torch.tensor(sums[:-1], dtype=stacked.dtype, device=stacked.device) / sums[-1]
        self.pending_losses, self.pending_smooth = list(mean[:n].unbind()), list(mean[n:].unbind())

    def before_validate(self) -> None:
        self._valid_total = torch.zeros((), dtype=torch.float64, device=self.learn.device)
        self._valid_n = 0
        self.metric_objs = self.metrics
        for m in self.metric_objs:
            m.reset()
            if isinstance(m, torch.nn.Module):  # a torchmetrics Metric keeps its states where it lives
                m.to(self.learn.device)

    def after_loss(self) -> None:
        if self.learn.training:
            return
        n = _batch_size(self.learn.yb)
        self._valid_total += self.learn.loss.detach().double() * n
        self._valid_n += n
        probs = None
        for m in self.metric_objs:
            if isinstance(m, Metric):
                m.accumulate(self.learn.pred, *self.learn.yb)
            else:
                probs = self.learn.activation(self.learn.pred) if probs is None else probs
                m.update(probs, *self.learn.yb)

    def after_validate(self) -> None:
        total, n = float(self._valid_total), self._valid_n
        means = [m for m in self.metric_objs if isinstance(m, Metric)]
        if self.sum_across_ranks is not None:
            sums = self.sum_across_ranks([total, n] + [v for m in means for v in (float(m.total), m.count)])
            total, n = sums[0], int(round(sums[1]))
            for i, m in enumerate(means):
                m.total, m.count = sums[2 + 2 * i], int(round(sums[3 + 2 * i]))
        values = [m.value if isinstance(m, Metric) else accumulated_value(m, self.gather_across_ranks)
                  for m in self.metric_objs]
        self.last_validation = [] if n == 0 else [total / n] + values
        self.learn.last_validation = self.last_validation

    def after_epoch(self) -> None:
        self.flush()
        row: dict[str, Any] = {"phase": self.learn.phase, "epoch": self.learn.epoch,
                               "train_loss": self.smooth_losses[-1] if self.smooth_losses else math.nan}
        names = self.metric_names[1:]
        values = self.last_validation or [math.nan] * len(names)
        row.update(zip(names, values))
        row["time"] = time.perf_counter() - self._epoch_start
        row["step"] = len(self.phases)  # training steps recorded so far: where this epoch ends
        self.values.append(row)

    def after_fit(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Read the losses and smoothed losses of the steps since the last flush back from the device, in one
        transfer (one sync)."""
        if self.pending_losses:
            n = len(self.pending_losses)
            values = torch.stack(self.pending_losses + self.pending_smooth).tolist()
            self.losses += values[:n]
            self.smooth_losses += values[n:]
            self.pending_losses, self.pending_smooth = [], []

    # -- plots ----------------------------------------------------------------------------------
    def plot_loss(self, skip_start: int = 5, with_valid: bool = True, path: Optional[str] = None):
        """Training loss (raw and smoothed) per step, validation loss per epoch, phase boundaries marked."""
        import matplotlib.pyplot as plt
        self.flush()
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = range(len(self.losses))
        ax.plot(list(steps)[skip_start:], self.losses[skip_start:], alpha=0.3, label="train (raw)")
        ax.plot(list(steps)[skip_start:], self.smooth_losses[skip_start:], label="train (smoothed)")
        if with_valid and self.values:
            ends = [r["step"] for r in self.values]
            vals = [r.get("valid_loss", math.nan) for r in self.values]
            ax.plot(ends, vals, "o-", label="valid")
        self._mark_phases(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig

    def plot_sched(self, path: Optional[str] = None):
        """Learning rate of every layer group and momentum, per step, over the whole history."""
        import matplotlib.pyplot as plt
        fig, (ax_lr, ax_mom) = plt.subplots(1, 2, figsize=(11, 4))
        if self.lrs:
            n_groups = len(self.lrs[0])
            for g in range(n_groups):
                ax_lr.plot([row[g] if g < len(row) else math.nan for row in self.lrs], label=f"group {g}")
            ax_mom.plot([row[-1] for row in self.moms])
        ax_lr.set_yscale("log")
        ax_lr.set_xlabel("training step")
        ax_lr.set_ylabel("learning rate")
        ax_lr.legend(fontsize="small")
        ax_mom.set_xlabel("training step")
        ax_mom.set_ylabel("momentum")
        for ax in (ax_lr, ax_mom):
            self._mark_phases(ax)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig

    def _mark_phases(self, ax) -> None:
        for i in range(1, len(self.phases)):
            if self.phases[i] != self.phases[i - 1]:
                ax.axvline(i, color="grey", linestyle="--", linewidth=0.8)
                ax.text(i, ax.get_ylim()[1], f" {self.phases[i]}", va="top", fontsize="small", color="grey")

    def plot_lr_find(self, path: Optional[str] = None):
        """Loss against learning rate (log axis) of the last `lr_find`, with the suggestions marked."""
        import matplotlib.pyplot as plt
        res = self.lr_find_results
        if res is None:
            raise RuntimeError("no lr_find results yet: run learn.lr_find() first")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(res["lrs"], res["losses"])
        for name, lr in res["suggestions"].items():
            ax.axvline(lr, linestyle="--", linewidth=1, color="C1")
            ax.text(lr, ax.get_ylim()[1], f" {name}\n {lr:.2e}", va="top", fontsize="small")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (head group)")
        ax.set_ylabel("smoothed loss")
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
        return fig


def _batch_size(yb: tuple) -> int:
    y = yb[0] if len(yb) else None
    return int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim > 0 else 1
