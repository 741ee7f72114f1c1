"""Class labels checked against the model's outputs once per data set: every batch of a loader's first full pass,
then never again for that loader (and that number of outputs), so steady-state training reads no label.

A label outside `0..n_out-1` gives a clear error instead of cross-entropy's "Target out of bounds" (CPU) or a
device-side assert (GPU). The check runs on the batch's labels as the data gave them, when they are on the CPU:
one read of a CPU tensor per batch of the first pass, no GPU synchronisation.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch
import torch.nn as nn


def needs_check(loss_func: Callable, y: Any, pred: Any) -> bool:
    """A CrossEntropyLoss/NLLLoss with integer labels on the CPU and class scores `(N, C, ...)`."""
    return (isinstance(loss_func, (nn.CrossEntropyLoss, nn.NLLLoss)) and isinstance(y, torch.Tensor)
            and y.device.type == "cpu" and not y.is_floating_point() and y.numel() > 0
            and isinstance(pred, torch.Tensor) and pred.ndim >= 2)


def outside_labels_error(y: torch.Tensor, n_out: int, ignore_index: int, split: str) -> Optional[ValueError]:
    """The error for the labels of `y` outside `0..n_out-1` (`ignore_index` allowed), or None when all fit
    (one read when they do)."""
    outside = ((y < 0) | (y >= n_out)) & (y != ignore_index)
    if not bool(outside.any()):
        return None
    bad = y[outside]
    label = int(bad.max()) if int(bad.max()) >= n_out else int(bad.min())
    high = int(y[y != ignore_index].max())
    return ValueError(
        f"label {label} in a {split} batch, but the model has {n_out} outputs (labels must be 0..{n_out - 1}): "
        f"the data has more classes than the model's head. Build the learner from these DataLoaders (the "
        f"number of outputs defaults to dls.c, the length of dls.vocab) or pass n_out={max(high + 1, n_out)}; "
        "check the labels if they should not go that high.")


class LabelCheck:
    """Which loaders had every label of a full pass checked, and against how many outputs."""

    def __init__(self) -> None:
        self.checked: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
        self.loader: Any = None
        self.n_out: Optional[int] = None

    def begin(self, loader: Any) -> None:
        """A pass over `loader` starts."""
        self.loader, self.n_out = loader, None

    def check(self, loss_func: Callable, y: Any, pred: Any, split: str) -> None:
        """Raise a clear ValueError for a label the model has no output for, unless this loader was checked."""
        if not needs_check(loss_func, y, pred):
            return
        n_out = pred.shape[1]
        if self.n_out is None:
            self.n_out = n_out
        if self._was_checked(n_out):
            return
        error = outside_labels_error(y, n_out, loss_func.ignore_index, split)
        if error is not None:
            raise error

    def end(self) -> None:
        """The pass ended after its last batch: its labels need no check again for this number of outputs."""
        if self.n_out is not None:
            try:
                self.checked[self.loader] = self.n_out
            except TypeError:  # a loader that takes no weak reference (a list): checked at every pass
                pass
        self.loader, self.n_out = None, None

    def _was_checked(self, n_out: int) -> bool:
        try:
            return self.checked.get(self.loader) == n_out
        except TypeError:
            return False
