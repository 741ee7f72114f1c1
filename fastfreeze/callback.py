"""Callbacks: the `Callback` base class, the cancel exceptions, and the two default callbacks
(`Recorder`, which keeps the history of every fit, and `ProgressCallback`, which shows it)."""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import torch

from .metrics import Metric, as_metric

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "after_backward", "after_step", "after_batch", "after_train", "before_validate", "after_validate",
    "after_epoch", "after_fit",
    "after_cancel_batch", "after_cancel_train", "after_cancel_validate", "after_cancel_epoch", "after_cancel_fit",
)


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of the current batch (its `after_batch` is not called)."""


class CancelTrainException(Exception):
    """Raise in a callback to end the training part of the current epoch."""


class CancelValidException(Exception):
    """Raise in a callback to end the validation part of the current epoch."""


class CancelEpochException(Exception):
    """Raise in a callback to end the current epoch."""


class CancelFitException(Exception):
    """Raise in a callback to end the fit cleanly (`after_fit` still runs)."""


class Callback:
    """Base class: define any of the methods named in `EVENTS`; `self.learn` is the Learner.

    Callbacks run in increasing `order` (schedulers 10, Recorder 50, ProgressCallback 60, user default 0
    runs first). Read the learner's state (`learn.epoch`, `learn.iter`, `learn.xb`, `learn.yb`,
    `learn.pred`, `learn.loss`, `learn.training`, `learn.opt`) and raise a Cancel*Exception to stop early.
    """
    order: int = 0
    learn: "Learner"

    def __repr__(self) -> str:
        return type(self).__name__


def _detached_mean_loss(loss: torch.Tensor) -> torch.Tensor:
    return loss.detach().float()


class Recorder(Callback):
    """Keeps the history of every fit on this learner, phase by phase (fastai forgets all but the last fit).

    Per training step: `losses`, `smooth_losses` (EMA, beta 0.98, debiased), `lrs` and `moms`
    (one value per layer group), `phases` (the label of the fit it belongs to).
    Per epoch: `values`, a list of dicts with phase, epoch, train_loss (the smoothed loss at the end of
    the epoch), valid_loss (size-weighted mean), each metric, and time in seconds.
    Loss values are kept on the device and read back once per epoch, so recording adds no
    host-device synchronisation per batch.
    """
    order = 50

    def __init__(self, beta: float = 0.98):
        self.beta = beta
        self.reset()

    def reset(self) -> None:
        """Forget the whole history."""
        self.losses: list[float] = []
        self.smooth_losses: list[float] = []
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []
        self.phases: list[str] = []
        self.values: list[dict[str, Any]] = []
        self.lr_find_results: Optional[dict[str, Any]] = None
        self._pending_losses: list[torch.Tensor] = []
        self._pending_smooth: list[torch.Tensor] = []

    # -- metric names ---------------------------------------------------------------------------
    @property
    def metrics(self) -> list[Metric]:
        return [as_metric(m) for m in self.learn.metrics]

    @property
    def metric_names(self) -> list[str]:
        return ["train_loss", "valid_loss"] + [m.name for m in self.metrics]

    # -- events ---------------------------------------------------------------------------------
    def before_fit(self) -> None:
        self._smooth = torch.zeros((), device=self.learn.device)
        self._count = 0
        self.learn.smooth_loss = torch.tensor(float("nan"))

    def before_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._last_valid: list[float] = []

    def after_batch(self) -> None:
        if not self.learn.training or self.learn.loss is None:
            return
        loss = _detached_mean_loss(self.learn.loss)
        self._count += 1
        self._smooth = torch.lerp(loss, self._smooth, self.beta)  # beta*smooth + (1-beta)*loss
        smooth = self._smooth / (1 - self.beta ** self._count)
        self.learn.smooth_loss = smooth
        self._pending_losses.append(loss)
        self._pending_smooth.append(smooth)
        groups = self.learn.opt.param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.moms.append([_momentum_of(g) for g in groups])
        self.phases.append(self.learn.phase)

    def before_validate(self) -> None:
        self._valid_total = torch.zeros((), dtype=torch.float64, device=self.learn.device)
        self._valid_n = 0
        for m in self.metrics:
            m.reset()
        self._metric_objs = self.metrics

    def after_loss(self) -> None:
        if self.learn.training:
            return
        n = _batch_size(self.learn.yb)
        self._valid_total += self.learn.loss.detach().double() * n
        self._valid_n += n
        for m in self._metric_objs:
            m.accumulate(self.learn.pred, *self.learn.yb)

    def after_validate(self) -> None:
        if self._valid_n == 0:
            self._last_valid = []
            return
        valid_loss = (self._valid_total / self._valid_n).item()
        self._last_valid = [valid_loss] + [m.value for m in self._metric_objs]
        self.learn.last_validation = self._last_valid

    def after_epoch(self) -> None:
        self._flush()
        row: dict[str, Any] = {"phase": self.learn.phase, "epoch": self.learn.epoch,
                               "train_loss": self.smooth_losses[-1] if self.smooth_losses else math.nan}
        names = self.metric_names[1:]
        values = self._last_valid or [math.nan] * len(names)
        row.update(zip(names, values))
        row["time"] = time.perf_counter() - self._epoch_start
        row["step"] = len(self.phases)  # training steps recorded so far: where this epoch ends
        self.values.append(row)

    def after_fit(self) -> None:
        self._flush()

    def _flush(self) -> None:
        """Read the losses of the steps since the last flush back from the device (one sync)."""
        if self._pending_losses:
            self.losses += torch.stack(self._pending_losses).tolist()
            self.smooth_losses += torch.stack(self._pending_smooth).tolist()
            self._pending_losses, self._pending_smooth = [], []

    # -- plots ----------------------------------------------------------------------------------
    def plot_loss(self, skip_start: int = 5, with_valid: bool = True, path: Optional[str] = None):
        """Training loss (raw and smoothed) per step, validation loss per epoch, phase boundaries marked."""
        import matplotlib.pyplot as plt
        self._flush()
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
            fig.savefig(path)
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
            fig.savefig(path)
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
            fig.savefig(path)
        return fig


def _momentum_of(group: dict[str, Any]) -> float:
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", math.nan))


def _batch_size(yb: tuple) -> int:
    y = yb[0] if len(yb) else None
    return int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim > 0 else 1


def _format_row(values: list[Any]) -> list[str]:
    out = []
    for v in values:
        out.append(f"{v:.6f}" if isinstance(v, float) else str(v))
    return out


class ProgressCallback(Callback):
    """fastprogress bars: a master bar over epochs, a bar over batches with the smoothed loss as comment,
    and the per-epoch table `epoch train_loss valid_loss <metrics> time` (SPEC.md §10).

    The smoothed loss in the comment is read back from the device every `refresh_every` steps only.
    """
    order = 60

    def __init__(self, refresh_every: int = 10, batch_bars: Optional[bool] = None):
        self.refresh_every = refresh_every
        self.batch_bars = batch_bars
        self.mbar = None
        self.pbar = None

    def before_fit(self) -> None:
        from fastprogress.fastprogress import master_bar
        self.mbar = master_bar(list(range(self.learn.start_epoch, self.learn.n_epoch)))
        self._epochs = iter(self.mbar)
        names = ["epoch"] + self.learn.recorder.metric_names + ["time"]
        self.mbar.write(names, table=True)

    def before_epoch(self) -> None:
        if self.mbar is not None:
            next(self._epochs, None)

    def before_train(self) -> None:
        self._wrap_dl()

    def before_validate(self) -> None:
        self._wrap_dl()

    def _wrap_dl(self) -> None:
        """Show a bar over the batches: in Jupyter or a terminal (a log file gets only the epoch table)."""
        from fastprogress.fastprogress import IN_NOTEBOOK, progress_bar
        show = self.batch_bars if self.batch_bars is not None else (IN_NOTEBOOK or sys.stdout.isatty())
        if not show:
            self.pbar = None
            return
        try:
            total = len(self.learn.dl)
        except TypeError:
            total = "noinfer"
        self.pbar = progress_bar(self.learn.dl, total=total, parent=self.mbar, leave=False)
        self.learn.dl = self.pbar

    def after_batch(self) -> None:
        if self.pbar is not None and self.learn.training and self.learn.iter % self.refresh_every == 0:
            self.pbar.comment = f"{float(self.learn.smooth_loss):.4f}"

    def after_epoch(self) -> None:
        from fastprogress.fastprogress import format_time
        row = self.learn.recorder.values[-1]
        cells = [row["epoch"]] + [row.get(n, math.nan) for n in self.learn.recorder.metric_names]
        self.mbar.write(_format_row(cells) + [format_time(row["time"])], table=True)

    def after_fit(self) -> None:
        if self.mbar is not None:
            try:
                self.mbar.on_iter_end()
            finally:
                self.mbar = None
