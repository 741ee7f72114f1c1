"""Turning a user's learning-rate spec into one learning rate per layer group (docs/learning-rates.md)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

LrSpec = Union[float, slice, Sequence[float], np.ndarray]


def expand_lrs(lr: LrSpec, n_groups: int) -> list[float]:
    """One learning rate per layer group, first group first.

    float x       -> [x] * G
    slice(hi)     -> [hi/10] * (G-1) + [hi]
    slice(lo, hi) -> geometric from lo to hi (G == 1 -> [hi])
    list / array  -> as given; length 1 (broadcast) or G
    """
    if n_groups < 1:
        raise ValueError(f"need at least one layer group, got {n_groups}")
    if isinstance(lr, LayerDecay):
        return lr.expand(n_groups)
    if isinstance(lr, slice):
        if lr.step is not None:
            raise ValueError(f"slice lr takes slice(hi) or slice(lo, hi), got a step: {lr}")
        hi = lr.stop
        if hi is None:
            raise ValueError(f"slice lr needs an upper lr: slice(hi) or slice(lo, hi), got {lr}")
        if lr.start is None:
            return [hi / 10] * (n_groups - 1) + [hi]
        lo = lr.start
        if n_groups == 1:
            return [float(hi)]
        if lo <= 0 or hi <= 0:
            raise ValueError(f"slice(lo, hi) needs positive lrs for a geometric spread, got {lr}")
        return [float(lo * (hi / lo) ** (i / (n_groups - 1))) for i in range(n_groups)]
    if isinstance(lr, (int, float, np.floating, np.integer)):
        return [float(lr)] * n_groups
    lrs = [float(x) for x in np.asarray(lr).reshape(-1)]
    if len(lrs) == 1:
        return lrs * n_groups
    if len(lrs) != n_groups:
        raise ValueError(
            f"got {len(lrs)} learning rates for {n_groups} layer groups: pass one lr, "
            f"a slice, or a list of exactly {n_groups} (one per group, head last)")
    return lrs


def lrs_decay(head_lr: float, decay: float = 0.75) -> "LayerDecay":
    """Layer-wise lr decay (BEiT/MAE): group i of G gets `head_lr * decay**(G-1-i)`."""
    return LayerDecay(head_lr, decay)


class LayerDecay:
    """An lr spec resolved against the number of groups: `head_lr * decay**(G-1-i)` for group i."""

    def __init__(self, head_lr: float, decay: float = 0.75):
        if not 0 < decay <= 1:
            raise ValueError(f"layer decay must be in (0, 1], got {decay}")
        self.head_lr, self.decay = float(head_lr), float(decay)

    def expand(self, n_groups: int) -> list[float]:
        return [self.head_lr * self.decay ** (n_groups - 1 - i) for i in range(n_groups)]

    def __repr__(self) -> str:
        return f"lrs_decay({self.head_lr:g}, decay={self.decay:g})"
