"""Metrics, of two kinds (docs/metrics.md):

- plain functions `(pred, targ) -> tensor` of the raw outputs, a batch mean (accuracy, `accuracy_multi`...),
  accumulated size-weighted over the validation set by `Metric`: the epoch value is the mean over all items,
  not a mean of batch means;
- objects with `reset()`, `update(probs, targ)` and `compute()`, computed once over the whole validation set:
  torchmetrics' `Metric` objects, and `WholeSetMetric`s (`F1Score`, `BalancedAccuracy`, `RocAuc`,
  `F1ScoreMulti`, `APScoreMulti`), which no mean of batch values can give. They get the activated outputs (what
  `get_preds` returns: probabilities for a classifier). Under DDP their states are gathered over the ranks
  (`accumulated_value`), so every rank reports the value of the whole set.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, Optional, Union

import torch
from torch import Tensor

# gathers a picklable value from every process: the Recorder's `gather_across_ranks` hook under DDP
Gather = Callable[[Any], list[Any]]


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


def accuracy_multi(pred: Tensor, targ: Tensor, thresh: float = 0.5, sigmoid: bool = True) -> Tensor:
    """Multi-label accuracy (fastai's): the fraction of (item, tag) pairs where `sigmoid(pred) > thresh` agrees
    with the multi-hot target (`sigmoid=False` for predictions that are probabilities already)."""
    probs = pred.float().sigmoid() if sigmoid else pred.float()
    return ((probs > thresh) == targ.bool()).float().mean()


# -------------------------------------------------------------------------------------------------
# whole-set metrics
# -------------------------------------------------------------------------------------------------
def is_accumulated(m: Any) -> bool:
    """True for a metric object with `reset`, `update` and `compute` (torchmetrics' protocol)."""
    return all(callable(getattr(m, name, None)) for name in ("reset", "update", "compute"))


def as_metric(m: Any) -> Any:
    """A `Metric` for a batch-mean function; a `Metric` or an update/compute/reset object as it is."""
    if isinstance(m, Metric) or is_accumulated(m):
        return m
    if callable(m):
        return Metric(m)
    raise TypeError(f"a metric must be a function (pred, targ) -> batch mean, or an object with reset/update/compute "
                    f"(e.g. a torchmetrics Metric), not {type(m).__name__}")


def metric_name(m: Any) -> str:
    """The column name of a metric: its `name`, else its class name in snake_case (MulticlassF1Score ->
    multiclass_f1_score)."""
    name = getattr(m, "name", None)
    if isinstance(name, str):
        return name
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", type(m).__name__)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


def confusion_matrix(pred: Tensor, targ: Tensor, n_classes: int) -> Tensor:
    """Counts `(n_classes, n_classes)` int64: row = actual class, column = predicted class; `pred` holds class
    indices, or scores `(N, C)` whose arg-max is taken."""
    pred = pred.argmax(-1) if pred.ndim > 1 else pred
    index = targ.long().flatten() * n_classes + pred.long().flatten()
    return torch.bincount(index.cpu(), minlength=n_classes * n_classes).view(n_classes, n_classes)


def macro_f1(tp: Tensor, fp: Tensor, fn: Tensor) -> float:
    """The mean F1 `2tp / (2tp + fp + fn)` over the classes (or tags) seen in the targets or the predictions
    (tp + fp + fn > 0), as scikit-learn's `f1_score(average='macro')` for classes."""
    seen = (tp + fp + fn) > 0
    if not bool(seen.any()):
        return float("nan")
    return float((2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen]).double()).mean())


class WholeSetMetric:
    """A metric of the whole validation set: keeps every batch's activated predictions and targets, and
    `compute()` is `value(probs, targets)` on all of them. Subclasses define `value` (and `name`)."""
    name = "whole_set_metric"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.preds: list[Tensor] = []
        self.targs: list[Tensor] = []

    def update(self, probs: Tensor, targ: Tensor) -> None:
        self.preds.append(probs.detach())
        self.targs.append(targ.detach())

    def gather(self, gather: Gather) -> None:
        """Replace this process's predictions and targets by those of every process (rank order)."""
        mine = (torch.cat(self.preds).cpu(), torch.cat(self.targs).cpu()) if self.preds else None
        everyone = [part for part in gather(mine) if part is not None]
        self.preds, self.targs = [p for p, _ in everyone], [t for _, t in everyone]

    def compute(self) -> float:
        if not self.preds:
            return float("nan")
        return float(self.value(torch.cat([p.cpu() for p in self.preds]).float(),
                                torch.cat([t.cpu() for t in self.targs])))

    def value(self, probs: Tensor, targ: Tensor) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class F1Score(WholeSetMetric):
    """Macro F1 of a single-label classifier on the whole set: per class `2tp / (2tp + fp + fn)`, averaged
    over the classes seen in the targets or the predictions (scikit-learn's `f1_score(average='macro')`)."""
    name = "f1_score"

    def value(self, probs: Tensor, targ: Tensor) -> float:
        cm = confusion_matrix(probs, targ, probs.shape[-1])
        tp = cm.diag()
        return macro_f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)


class BalancedAccuracy(WholeSetMetric):
    """The mean recall over the classes present in the targets (scikit-learn's `balanced_accuracy_score`)."""
    name = "balanced_accuracy"

    def value(self, probs: Tensor, targ: Tensor) -> float:
        cm = confusion_matrix(probs, targ, probs.shape[-1])
        support = cm.sum(1)
        present = support > 0
        return float((cm.diag()[present] / support[present].double()).mean())


class RocAuc(WholeSetMetric):
    """Area under the ROC curve of a single-label classifier, one class against the rest, averaged over the
    classes present in the targets (with 2 classes: the AUROC of class 1); torchmetrics' `binary_auroc`."""
    name = "roc_auc"

    def value(self, probs: Tensor, targ: Tensor) -> float:
        from torchmetrics.functional.classification import binary_auroc
        n = probs.shape[-1]
        scores = [binary_auroc(probs[:, c], (targ == c).long()) for c in range(n)
                  if 0 < int((targ == c).sum()) < len(targ)]
        return float(torch.stack(scores).mean()) if scores else float("nan")


class F1ScoreMulti(WholeSetMetric):
    """Macro F1 of a multi-label classifier, a tag predicted when its probability is above `thresh`: per tag
    `2tp / (2tp + fp + fn)`, averaged over the tags seen in the targets or the predictions."""
    name = "f1_score_multi"

    def __init__(self, thresh: float = 0.5):
        self.thresh = thresh
        super().__init__()

    def value(self, probs: Tensor, targ: Tensor) -> float:
        pred, targ = probs > self.thresh, targ.bool()
        return macro_f1((pred & targ).sum(0), (pred & ~targ).sum(0), (~pred & targ).sum(0))


class APScoreMulti(WholeSetMetric):
    """Mean average precision (mAP) of a multi-label classifier: torchmetrics' `binary_average_precision` of
    each tag with at least one positive, averaged (scikit-learn's `average_precision_score(average='macro')`
    where every tag has a positive)."""
    name = "ap_score_multi"

    def value(self, probs: Tensor, targ: Tensor) -> float:
        from torchmetrics.functional.classification import binary_average_precision
        scores = [binary_average_precision(probs[:, j], targ[:, j].long()) for j in range(probs.shape[-1])
                  if int(targ[:, j].sum()) > 0]
        return float(torch.stack(scores).mean()) if scores else float("nan")


def _is_torchmetric(m: Any) -> bool:
    """A torchmetrics Metric (only possible when torchmetrics was imported: it is not imported for this)."""
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(m, module.Metric)


def accumulated_value(m: Any, gather: Optional[Gather] = None) -> float:
    """`m.compute()` as a float, over everything every process gave it when `gather` is set (a distributed
    validation): a `WholeSetMetric` gathers its predictions and targets, a torchmetrics Metric syncs its states
    through `gather` (its own `dist_sync_fn` mechanism). Any other object cannot be combined over processes."""
    if gather is not None and isinstance(m, WholeSetMetric):
        m.gather(gather)
        value = m.compute()
    elif _is_torchmetric(m):
        saved = m.dist_sync_fn, m.distributed_available_fn

        def sync(t: Tensor, group: Any = None) -> list[Tensor]:
            return [part.to(t.device) for part in gather(t.detach().cpu())]  # type: ignore[misc]
        m.dist_sync_fn = sync if gather is not None else None
        m.distributed_available_fn = lambda: gather is not None
        try:
            value = m.compute()
        finally:
            m.dist_sync_fn, m.distributed_available_fn = saved
    elif gather is not None:
        raise TypeError(f"metric {metric_name(m)} ({type(m).__name__}) cannot be combined over processes: make it a "
                        "torchmetrics Metric (its states are synced), a WholeSetMetric, or a batch-mean function")
    else:
        value = m.compute()
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"metric {metric_name(m)} computed {shape}, not one number: give it an average "
                        "(e.g. average='macro')") from None
