"""Callbacks: the `Callback` base class, the events of the training loop, and the cancel exceptions.

The loop (`loop.BaseLearner.fit`) calls, for every callback in increasing `order`, the method named after
each event it reaches (see `EVENTS` for the order in one fit, and docs/callbacks.md)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Optional, Union

from ..utils.checks import check_not_a_class

if TYPE_CHECKING:  # pragma: no cover
    from .loop import BaseLearner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "after_backward", "before_step", "after_step", "after_batch", "after_train", "before_validate", "after_validate",
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

    A callback holding training state that a checkpoint must keep (EMA weights) names it `state_key` and
    defines `state_dict()` and `load_state_dict(state)`: `learn.state_dict()` carries it (docs/callbacks.md).
    """
    order: int = 0
    state_key: Optional[str] = None
    learn: "BaseLearner"

    def __repr__(self) -> str:
        return type(self).__name__


def callback_list(cbs: Union[None, Callback, Sequence[Callback]]) -> list[Callback]:
    """`cbs` as a list: None gives [], one callback [cb]. A callback class given for an object (`cbs=EMA` or
    `cbs=[EMA]`), or anything that is not a callback, is a TypeError saying what to pass."""
    check_not_a_class(cbs)
    if cbs is None:
        return []
    if isinstance(cbs, Callback):
        return [cbs]
    if isinstance(cbs, (str, bytes)) or not isinstance(cbs, Iterable):
        raise TypeError(f"cbs must be a callback object or a list of them (e.g. cbs=[EMA()]), got {cbs!r}")
    out = list(cbs)
    for cb in out:
        check_not_a_class(cb)
        if not isinstance(cb, Callback):
            raise TypeError(f"cbs holds {cb!r} ({type(cb).__name__}), which is not a callback: callbacks are objects "
                            "of a Callback subclass (e.g. EMA(), CSVLogger(), SaveModelCallback())")
    return out
