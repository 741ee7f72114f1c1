"""Training that diverges stops with one clear message, and the learner is left with finite weights
(docs/divergence.md).

`DivergenceGuard` is one of every learner's own callbacks (`learn.divergence_guard`, next to the Recorder). It
stops a fit with a `FloatingPointError`:

- at a non-finite training loss: on the CPU at every step, before that step touches the weights; on another
  device every `check_every`-th step (a check waits for the device), the steps between checked at the
  epoch's end;
- after an epoch whose validation loss, or any parameter or buffer of the model, is NaN or infinite.

When it stops, the learner holds finite weights: its current ones when they are all finite, else the copy it
took at the end of the last good epoch (or at the start of the fit), put back, with the optimizer's state
(Adam's moments) cleared. The message says which of the two it did, and never that the weights are untouched
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
    `check_every`: off the CPU, check the training loss every this many steps (the rest at the epoch's end).
    `cancel`: at a non-finite training loss end the fit cleanly (`CancelFitException`, with a warning) instead
    of raising, and watch nothing else (`TerminateOnNaN`); `stopped_at` is then `(epoch, batch)`.
    """
    order = 55  # after the Recorder (50) has the epoch's validation loss, before checkpoints (61) save the epoch

    def __init__(self, keep_weights: bool = True, check_every: int = 20, cancel: bool = False):
        check_int(check_every, "check_every", unit="training steps")
        self.keep_weights, self.check_every, self.cancel = keep_weights, check_every, cancel
        if cancel:
            self.order = 54  # before the learner's own guard, which would raise
        self.stopped_at: Optional[tuple[int, int]] = None
        self.snapshot: Optional[dict[str, Any]] = None
        self.snapshot_of: Optional[nn.Module] = None
        self.snapshot_when = ""
        self.unchecked_finite: Optional[torch.Tensor] = None  # off the CPU: all the epoch's unchecked losses finite

    def take_snapshot(self, when: str) -> None:
        """Copy the model's weights to the CPU, to put back if training diverges later (`keep_weights`)."""
        self.snapshot = to_cpu_copy(self.learn.model.state_dict()) if self.keep_weights else None
        self.snapshot_of, self.snapshot_when = self.learn.model, when

    def before_fit(self) -> None:
        self.take_snapshot("the start of this fit")

    def before_epoch(self) -> None:
        self.unchecked_finite = None

    def after_fit(self) -> None:
        self.snapshot, self.snapshot_of = None, None  # held during a fit only

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        finite = torch.isfinite(learn.loss.detach()).all()
        on_cpu = learn.device.type == "cpu"
        if on_cpu or learn.train_iter % self.check_every == 0:
            if not bool(finite) and self.cancel:
                self.stopped_at = (learn.epoch, learn.iter)
                warnings.warn(f"{type(self).__name__}: the training loss is {float(learn.loss.detach())} at epoch "
                              f"{learn.epoch}, batch {learn.iter}: the fit stops before this step")
                raise CancelFitException()
            if not bool(finite):
                self.stop(f"the training loss is {float(learn.loss.detach())} at epoch {learn.epoch}, batch "
                          f"{learn.iter} of {learn.phase!r}", step_skipped=True)
        else:  # no synchronisation: read once at the end of the epoch
            self.unchecked_finite = finite if self.unchecked_finite is None else self.unchecked_finite & finite

    def after_epoch(self) -> None:
        if self.cancel:
            return
        learn = self.learn
        where = f"epoch {learn.epoch} of {learn.phase!r}"
        if self.unchecked_finite is not None and not bool(self.unchecked_finite):
            self.stop(f"a training loss of {where} was NaN or infinite (on {learn.device.type} the loss is read "
                      f"every {self.check_every} steps)", epoch_end=True)
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
