"""Training that diverges stops with one clear message, and the learner is left with finite weights
(docs/divergence.md).

`DivergenceGuard` is one of every learner's own callbacks (`learn.divergence_guard`, next to the Recorder). It
stops a fit with a `FloatingPointError`:

- at a non-finite training loss, read at the end of the epoch's training pass: the losses wait on the device,
  and one read takes them all, on every device (no host-device synchronisation per step). The steps after a
  non-finite loss have run by then (they may have made the weights NaN), so the learner gets back the weights of
  the last good epoch. `check_every=n` also reads every n-th step's loss before that step runs (a
  synchronisation each; `check_every=1` refuses every bad step before it touches the weights);
- after an epoch whose validation loss, or any parameter or buffer of the model, is NaN or infinite.

When it stops, the learner holds finite weights: at a step's check (`check_every`) its current ones when they are
all finite, else (and always at an epoch's end) the copy it took at the end of the last good epoch (or at the
start of the fit), put back, with the optimizer's state (Adam's moments) cleared. That copy is only taken after
the epoch's losses, its validation loss and its weights were all read finite. The message says which of the two it did, and never that the weights are untouched
when they are not. The copy costs one state dict of the model in CPU memory during a fit (taken again after
every epoch, released when the fit ends);
`learn.divergence_guard.keep_weights = False` turns it off (the fit still stops; the weights stay as they are).

`TerminateOnNaN()` (fastai's name) is a second guard that checks the training loss at every step on every device
and ends the fit without an error instead (`CancelFitException`, with a warning), before that step touches the
parameters (BatchNorm running statistics have seen the batch's forward pass already); on a GPU that costs one
host-device synchronisation per step.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NoReturn, Optional

import torch
import torch.nn as nn

from ..utils.checks import check_int
from ..utils.state_dicts import to_cpu_copy
from .callback import Callback, CancelFitException

SHOWN_TENSORS = 5
ADVICE = ("Lower the learning rate (learn.lr_find() shows where the loss starts to climb), check the data for NaN "
          "or infinite values, or use precision='fp32'.")


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of `module` holding a NaN or an infinity (one
    device synchronisation in all)."""
    named = [(name, t) for name, t in module.state_dict().items()
             if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


class DivergenceGuard(Callback):
    """Stops a fit at a NaN or infinite loss or weight, leaving finite weights (see the module docstring).

    `keep_weights`: keep a CPU copy of the weights of the last good epoch to put back (default True).
    `check_every`: read the training loss every this many steps, before the step (1: every step; None, the
    default: never during the epoch, all of them at the end of its training pass).
    `cancel`: at a non-finite training loss end the fit cleanly (`CancelFitException`, with a warning) instead
    of raising, and watch nothing else (`TerminateOnNaN`); `stopped_at` is then `(epoch, batch)`.
    """
    order = 55  # after the Recorder (50) has the epoch's validation loss, before checkpoints (61) save the epoch

    def __init__(self, keep_weights: bool = True, check_every: Optional[int] = None, cancel: bool = False):
        if check_every is not None:
            check_int(check_every, "check_every", unit="training steps")
        self.keep_weights, self.check_every, self.cancel = keep_weights, check_every, cancel
        if cancel:
            self.order = 54  # before the learner's own guard, which would raise
        self.stopped_at: Optional[tuple[int, int]] = None
        self.snapshot: Optional[dict[str, Any]] = None
        self.snapshot_of: Optional[nn.Module] = None
        self.snapshot_when = ""
        self.unchecked: list[tuple[int, torch.Tensor]] = []  # (batch, loss) of the steps not read yet

    def take_snapshot(self, when: str) -> None:
        """Copy the model's weights to the CPU, to put back if training diverges later (`keep_weights`)."""
        self.snapshot = to_cpu_copy(self.learn.model.state_dict()) if self.keep_weights else None
        self.snapshot_of, self.snapshot_when = self.learn.model, when

    def before_fit(self) -> None:
        self.take_snapshot("the start of this fit")

    def before_epoch(self) -> None:
        self.unchecked = []

    def after_fit(self) -> None:
        self.snapshot, self.snapshot_of = None, None  # held during a fit only

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        loss = learn.loss.detach()
        if self.check_every is not None and learn.train_iter % self.check_every == 0:
            self.check_now(loss)
        else:  # no read: the loss waits on the device for the end of the training pass
            self.unchecked.append((learn.iter, loss))

    def check_now(self, loss: torch.Tensor) -> None:
        """Read this step's loss (one synchronisation) and stop before the step at a non-finite one."""
        learn = self.learn
        if bool(torch.isfinite(loss).all()):
            return
        if self.cancel:
            self.stopped_at = (learn.epoch, learn.iter)
            warnings.warn(f"{type(self).__name__}: the training loss is {float(loss)} at epoch "
                          f"{learn.epoch}, batch {learn.iter}: the fit stops before this step")
            raise CancelFitException()
        self.stop(f"the training loss is {float(loss)} at epoch {learn.epoch}, batch {learn.iter} of "
                  f"{learn.phase!r}", step_skipped=True)

    def check_unchecked(self) -> None:
        """Read the losses kept on the device since the last check, in one transfer; stop at the first non-finite
        one, putting back the last good epoch's weights (the steps after it ran)."""
        if not self.unchecked:
            return
        iters, losses = zip(*self.unchecked)
        self.unchecked = []
        finite = torch.isfinite(torch.stack([loss.float() for loss in losses]))
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0, 0])
        learn = self.learn
        self.stop(f"the training loss is {float(losses[first])} at epoch {learn.epoch}, batch {iters[first]} of "
                  f"{learn.phase!r} (read at the end of the epoch's training: learn.divergence_guard.check_every = 1 "
                  "checks every step before it runs)", epoch_end=True)

    def after_train(self) -> None:
        self.check_unchecked()

    def after_cancel_train(self) -> None:
        self.check_unchecked()

    def after_cancel_epoch(self) -> None:
        self.check_unchecked()

    def after_cancel_fit(self) -> None:
        self.check_unchecked()

    def after_epoch(self) -> None:
        if self.cancel:
            return
        learn = self.learn
        where = f"epoch {learn.epoch} of {learn.phase!r}"
        validation = learn.recorder.last_validation
        if validation and not math.isfinite(validation[0]):
            train_loss = learn.recorder.values[-1]["train_loss"] if learn.recorder.values else math.nan
            self.stop(f"the validation loss is {validation[0]} after {where} (training loss {train_loss:.4g})",
                      epoch_end=True)
        bad = non_finite_tensors(learn.model)
        if bad:
            self.stop(f"the weights are no longer finite after {where}", bad, epoch_end=True)
        self.take_snapshot(f"the end of {where}")

    def stop(self, what: str, bad: Optional[list[str]] = None, step_skipped: bool = False,
             epoch_end: bool = False) -> NoReturn:
        """Leave the learner with finite weights and raise the FloatingPointError saying what happened, what
        the learner now holds, and what to try. Mid-epoch (`epoch_end=False`) finite weights are kept as they
        are; otherwise the weights of the last good epoch are put back (`keep_weights`)."""
        bad = non_finite_tensors(self.learn.model) if bad is None else bad
        if bad:
            shown = ", ".join(bad[:SHOWN_TENSORS]) + (f" and {len(bad) - SHOWN_TENSORS} more"
                                                       if len(bad) > SHOWN_TENSORS else "")
            weights = (f"{len(bad)} tensor{'s' if len(bad) > 1 else ''} of the model hold{'' if len(bad) > 1 else 's'} "
                       f"NaN or infinite values ({shown})")
        else:
            weights = "The weights are all finite"
        if not bad and not epoch_end:
            skipped = ", and this batch's step did not run" if step_skipped else ""
            held = f"{weights}{skipped}: the learner keeps them."
        elif self.snapshot is not None and self.snapshot_of is self.learn.model:
            self.learn.model.load_state_dict(self.snapshot)
            self.learn.opt.state.clear()
            held = (f"{weights}; the learner was put back to its weights from {self.snapshot_when}, and its "
                    "optimizer state was cleared.")
        else:
            held = (f"{weights}; they were left as they are (learn.divergence_guard.keep_weights is False): "
                    "reload a checkpoint or a saved model before training on.")
        raise FloatingPointError(f"training diverged: {what}. {held} {ADVICE}")


class TerminateOnNaN(DivergenceGuard):
    """fastai's callback: a `DivergenceGuard` that checks the training loss at every step on every device and ends
    the fit cleanly at the first non-finite one (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(keep_weights=False, check_every=1, cancel=True)
