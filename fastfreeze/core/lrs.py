"""Turning a user's learning-rate spec into one learning rate per layer group (docs/learning-rates.md)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np

from ..utils.checks import is_real

LrSpec = Union[float, slice, Sequence[float], np.ndarray]


def expand_lrs(lr: LrSpec, n_groups: int) -> list[float]:
    """One learning rate per layer group, first group first.

    float x       -> [x] * G
    slice(hi)     -> [hi/10] * (G-1) + [hi]
    slice(lo, hi) -> geometric from lo to hi (G == 1 -> [hi]); lo <= hi
    list / array  -> as given; length 1 (broadcast) or G

    Every lr must be a finite number > 0 (docs/learning-rates.md): anything else is a ValueError naming it.
    """
    if n_groups < 1:
        raise ValueError(f"need at least one layer group, got {n_groups}")
    if isinstance(lr, LayerDecay):
        return check_lrs(lr.expand(n_groups), lr)
    if isinstance(lr, slice):
        if lr.step is not None:
            raise ValueError(f"slice lr takes slice(hi) or slice(lo, hi), got a step: {lr}")
        hi = lr.stop
        if hi is None:
            raise ValueError(f"slice lr needs an upper lr: slice(hi) or slice(lo, hi), got {lr}")
        check_lrs([hi] if lr.start is None else [lr.start, hi], lr)
        if lr.start is None:
            return [hi / 10] * (n_groups - 1) + [float(hi)]
        lo = lr.start
        if lo > hi:
            raise ValueError(f"{lr} has lo > hi: slice(lo, hi) gives the first layer group lo and the head hi, so "
                             f"lo must be the smaller lr: slice({hi!r}, {lo!r})")
        if n_groups == 1:
            return [float(hi)]
        return [float(lo * (hi / lo) ** (i / (n_groups - 1))) for i in range(n_groups)]
    if isinstance(lr, (str, bool, np.bool_)) or lr is None:  # True is no lr (numpy would read it as 1.0)
        raise TypeError(f"an lr spec is a number, a slice, a list or array of numbers, or lrs_decay(...); got {lr!r}")
    if isinstance(lr, (int, float, np.floating, np.integer)):
        return check_lrs([lr], lr) * n_groups
    try:
        lrs = [float(x) for x in np.asarray(lr, dtype=float).reshape(-1)]
    except (TypeError, ValueError):
        raise TypeError(f"an lr spec is a number, a slice, a list or array of numbers, or lrs_decay(...); "
                        f"got {lr!r}") from None
    if len(lrs) == 1:
        return check_lrs(lrs, lr) * n_groups
    if len(lrs) != n_groups:
        raise ValueError(
            f"got {len(lrs)} learning rates for {n_groups} layer groups: pass one lr, "
            f"a slice, or a list of exactly {n_groups} (one per group, head last)")
    return check_lrs(lrs, lr)


def check_lrs(lrs: Sequence[float], spec: object) -> list[float]:
    """`lrs` as floats when every one is a finite number > 0, else a ValueError naming the first that is not
    and the `spec` it came from."""
    for i, value in enumerate(lrs):
        if not is_real(value):
            raise TypeError(f"learning rates must be numbers, got {value!r} in {spec!r}: pass a float, a slice, or "
                            "one number per layer group")
        if not (math.isfinite(value) and value > 0):
            where = "" if len(lrs) == 1 else f" (position {i})"
            shown = spec if isinstance(spec, str) else repr(spec)
            raise ValueError(f"learning rates must be finite and > 0, got {float(value)!r}{where} in {shown}: "
                             "pass a positive lr (learn.lr_find() suggests one); to keep a layer group from "
                             "training, freeze it (learn.freeze_to) instead of giving it lr 0")
    return [float(v) for v in lrs]


def lrs_decay(head_lr: float, decay: float = 0.75) -> "LayerDecay":
    """Layer-wise lr decay (BEiT/MAE): group i of G gets `head_lr * decay**(G-1-i)`."""
    return LayerDecay(head_lr, decay)


class LayerDecay:
    """An lr spec resolved against the number of groups: `head_lr * decay**(G-1-i)` for group i."""

    def __init__(self, head_lr: float, decay: float = 0.75):
        if not 0 < decay <= 1:
            raise ValueError(f"layer decay must be in (0, 1], got {decay}")
        check_lrs([head_lr], f"lrs_decay({head_lr!r}, {decay!r})")
        self.head_lr, self.decay = float(head_lr), float(decay)

    def expand(self, n_groups: int) -> list[float]:
        return [self.head_lr * self.decay ** (n_groups - 1 - i) for i in range(n_groups)]

    def __repr__(self) -> str:
        return f"lrs_decay({self.head_lr:g}, decay={self.decay:g})"
