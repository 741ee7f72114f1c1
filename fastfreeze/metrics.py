"""Metrics: plain functions `(pred, targ) -> tensor` (batch means), accumulated size-weighted over the
validation set by `Metric`, so the epoch value is the mean over all items, not a mean of batch means."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Union

import torch


def accuracy(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """Fraction of items whose arg-max prediction equals the target."""
    return (pred.argmax(dim=-1) == targ).float().mean()


def error_rate(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """1 - accuracy."""
    return 1 - accuracy(pred, targ)


def top_k_accuracy(pred: torch.Tensor, targ: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Fraction of items whose target is among the `k` highest predictions."""
    topk = pred.topk(k, dim=-1).indices
    return (topk == targ.unsqueeze(-1)).any(dim=-1).float().mean()


def top_k(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`top_k_accuracy` with a fixed `k`, named `top_{k}_accuracy` in the results table."""
    fn = partial(top_k_accuracy, k=k)
    fn.__name__ = f"top_{k}_accuracy"  # type: ignore[attr-defined]
    return fn


class Metric:
    """Accumulates a batch-mean metric function over batches, weighted by batch size."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "metric")
        self.reset()

    def reset(self) -> None:
        self.total: Union[torch.Tensor, float] = 0.0
        self.count = 0

    def accumulate(self, pred: torch.Tensor, targ: torch.Tensor) -> None:
        n = int(targ.shape[0]) if targ.ndim > 0 else 1
        self.total = self.total + self.fn(pred, targ).detach().double() * n
        self.count += n

    @property
    def value(self) -> float:
        if self.count == 0:
            return float("nan")
        return float(self.total / self.count)


def as_metric(m: Union[Metric, Callable]) -> Metric:
    return m if isinstance(m, Metric) else Metric(m)
