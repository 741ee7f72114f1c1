"""The three tasks a set of labelled images can be: single-label classification (one class per image),
multi-label classification (any number of tags per image) and regression (one or more numbers per image).

Which task it is is read from the labels (docs/tasks.md), each choice can be overridden with `task=`:

- single-label: one class name per image (strings, or numbers read from a table: their sorted values are the
  vocab), or integer class indices in an array;
- multi-label: tag lists (a list/tuple per image, or strings split at `label_delim`), or a 2-D array holding
  only 0s and 1s (multi-hot, one column per tag);
- regression: floats (a 1-D array, a column of floats, or a 2-D array with other values than 0 and 1).

Targets are encoded as the loss expects them: class indices `(N,)` int64, multi-hot rows `(N, C)` int64 (the
multi-label loss casts them to float), regression values `(N, k)` float32. Each task also sets the loss
(`loss_for`), the number of outputs (`Targets.c`) and what `predict` returns (`decode_prediction`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..utils.checks import is_real
from .dataloaders import decode_label
from .losses import MultiLabelLoss
from .metrics import BalancedAccuracy, F1Score, accuracy, error_rate, top_k_accuracy
from .validation import warn_spelling_variants, warn_whole_number_floats, whole_number_floats

SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label", "multi_label", "regression"
TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)


@dataclass
class Targets:
    """Encoded labels: `targets` (see the module docstring), the `task`, the `vocab` (class or tag names; column
    names or None for regression) and `c`, the number of outputs the model needs."""
    targets: Tensor
    task: str
    vocab: Optional[list[str]]
    c: int


def check_task(task: str) -> str:
    if task != "auto" and task not in TASKS:
        raise ValueError(f"task must be 'auto' or one of {TASKS}, got {task!r}")
    return task


def _row_name(rows: Optional[Sequence[str]], i: int) -> str:
    return rows[i] if rows is not None else f"item {i}"


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, Real) and not isinstance(value, Integral):
        return math.isnan(float(value))
    return False


def _tag_list(value: Any, label_delim: Optional[str]) -> list[Any]:
    """The tags of one multi-label cell: a list/tuple/set as it is, a string split at `label_delim`."""
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [v for v in value if not _is_empty(v)]
    if isinstance(value, str) and label_delim is not None:
        return [t.strip() for t in value.split(label_delim) if t.strip()]
    return [] if _is_empty(value) else [value]


def _names(values: Sequence[Any]) -> list[str]:
    """A sorted vocab: numbers sorted by value (then written as strings), strings alphabetically."""
    unique = set(values)
    if all(is_real(v) for v in unique):
        return list(dict.fromkeys(_as_name(v) for v in sorted(unique)))  # 1 and 1.0 are one class
    return sorted({_as_name(v) for v in unique})  # 'cat' and 'cat ' are one class


def _as_name(value: Any) -> str:
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real) and float(value).is_integer():
        return str(int(value))
    return str(value).strip() if isinstance(value, str) else str(value)


def guess_value_task(values: Sequence[Any], label_delim: Optional[str] = None) -> str:
    """The task of labels read one per image from a table or a list (see the module docstring)."""
    filled = [v for v in values if not _is_empty(v)]
    if label_delim is not None or any(isinstance(v, (list, tuple, set, frozenset, np.ndarray)) for v in filled):
        return MULTI_LABEL
    if filled and all(isinstance(v, Real) and not isinstance(v, (bool, Integral)) for v in filled) and \
            not all(float(v).is_integer() for v in filled):
        return REGRESSION
    return SINGLE_LABEL


def encode_values(values: Sequence[Any], task: str = "auto", vocab: Optional[Sequence[str]] = None,
                  label_delim: Optional[str] = None, allow_empty: bool = False,
                  rows: Optional[Sequence[str]] = None, notes: Optional[list[str]] = None) -> Targets:
    """Labels given one per image as values (a table column, a list): class names, tag lists or numbers.

    Single-label: the vocab is the sorted distinct values (numbers sorted by value), unless `vocab` is given.
    Multi-label: the sorted union of the tags. Regression: the floats. An empty label (None, NaN, '') is an
    error naming its row (`rows[i]`, else 'item i'), as is a label not in a given `vocab`; a multi-label row
    without any tag is refused unless `allow_empty`. Warnings (kept in `notes`, `validation`): labels that
    differ only by case or surrounding spaces, and floats that are all whole numbers read as class names.
    """
    values = list(values)
    task = check_task(task)
    if task == "auto":
        task = guess_value_task(values, label_delim)
        floats = [v for v in values if isinstance(v, float) and not _is_empty(v)]
        if task == SINGLE_LABEL and floats and len(floats) == len([v for v in values if not _is_empty(v)]):
            warn_whole_number_floats(torch.tensor(floats, dtype=torch.float64), SINGLE_LABEL, notes)
    if task == REGRESSION:
        return encode_array(np.asarray(_numbers(values, rows), dtype=np.float64), REGRESSION, vocab)
    if task == MULTI_LABEL:
        tags = [_tag_list(v, label_delim) for v in values]
        if not allow_empty:
            for i, t in enumerate(tags):
                if not t:
                    raise ValueError(f"{_row_name(rows, i)} has no label: every image needs at least one tag "
                                     "(pass allow_empty=True if an image may have none)")
        if vocab is None:
            warn_spelling_variants(sorted({tag for t in tags for tag in t if isinstance(tag, str)}), notes)
        names = list(vocab) if vocab is not None else _names([tag for t in tags for tag in t])
        index = {name: j for j, name in enumerate(names)}
        targets = torch.zeros(len(values), len(names), dtype=torch.long)
        for i, t in enumerate(tags):
            for tag in t:
                j = index.get(_as_name(tag))
                if j is None:
                    raise ValueError(f"{_row_name(rows, i)} has the tag {tag!r}, which is not in the vocab {names}")
                targets[i, j] = 1
        return Targets(targets, MULTI_LABEL, names, len(names))
    for i, v in enumerate(values):
        if _is_empty(v):
            raise ValueError(f"{_row_name(rows, i)} has an empty label: give every image its class (or drop the row)")
    if vocab is None:
        warn_spelling_variants(sorted({v for v in values if isinstance(v, str)}), notes)
    names = list(vocab) if vocab is not None else _names(values)
    index = {name: j for j, name in enumerate(names)}
    encoded = []
    for i, v in enumerate(values):
        j = index.get(_as_name(v))
        if j is None:
            raise ValueError(f"{_row_name(rows, i)} has the label {v!r}, which is not in the vocab {names}")
        encoded.append(j)
    return Targets(torch.tensor(encoded, dtype=torch.long), SINGLE_LABEL, names, len(names))


def _numbers(values: Sequence[Any], rows: Optional[Sequence[str]]) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if _is_empty(v):
            raise ValueError(f"{_row_name(rows, i)} has an empty label: give every image its target value")
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"{_row_name(rows, i)} has the label {v!r}, which is not a number (task='regression')") \
                from None
    return out


def guess_array_task(labels: Tensor) -> str:
    """The task of labels given as an array: integers (1-D) are class indices, 2-D 0/1 values are multi-hot
    rows, other floats are regression targets."""
    if labels.ndim == 2 and labels.numel() and bool(((labels == 0) | (labels == 1)).all()):
        return MULTI_LABEL
    if labels.is_floating_point() or labels.ndim == 2:
        return REGRESSION
    return SINGLE_LABEL


def encode_array(labels: Union[np.ndarray, Tensor, Sequence[Any]], task: str = "auto",
                 vocab: Optional[Sequence[str]] = None, allow_empty: bool = False,
                 notes: Optional[list[str]] = None) -> Targets:
    """Labels given as an array: class indices `(N,)`, multi-hot rows `(N, C)` or regression values `(N,)` /
    `(N, k)` (see `guess_array_task`). A multi-hot row of zeros is refused unless `allow_empty`. Floats that
    are all whole numbers, read as regression targets by the guess, are a warning (kept in `notes`) saying how
    to choose classes instead. An array of strings is a TypeError: `encode_labels` reads it as class names."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind not in "biuf":
        raise TypeError(f"labels must be numbers here, got a {labels.dtype} array (e.g. strings): pass class names "
                        "through encode_labels, which builds a vocab, or integer class indices")
    tensor = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if tensor.dtype == torch.bool:
        tensor = tensor.long()
    if tensor.ndim not in (1, 2):
        raise ValueError(f"labels must be one per image (N,) or one row per image (N, C), got shape "
                         f"{tuple(tensor.shape)}")
    task = check_task(task)
    if task in ("auto", SINGLE_LABEL) and tensor.ndim == 2 and tensor.shape[1] == 1 and not tensor.is_floating_point():
        tensor = tensor[:, 0]  # a column of class indices
    if task == "auto":
        task = guess_array_task(tensor)
        if task == REGRESSION and whole_number_floats(tensor):
            warn_whole_number_floats(tensor, REGRESSION, notes)
    if task == REGRESSION:
        values = tensor.float().reshape(len(tensor), -1)
        if not bool(torch.isfinite(values).all()):
            row = int((~torch.isfinite(values)).any(1).nonzero()[0])
            raise ValueError(f"item {row} has a regression target that is NaN or infinite: {values[row].tolist()}")
        return Targets(values, REGRESSION, list(vocab) if vocab is not None else None, values.shape[1])
    if task == MULTI_LABEL:
        if tensor.ndim != 2 or not bool(((tensor == 0) | (tensor == 1)).all()):
            raise ValueError("multi-label targets must be a 2-D array of 0s and 1s (one column per tag), got "
                             f"shape {tuple(tensor.shape)}" + ("" if tensor.ndim != 2 else " with other values"))
        if not allow_empty and len(tensor):
            empty = (tensor.sum(1) == 0).nonzero().flatten()
            if len(empty):
                raise ValueError(f"item {int(empty[0])} has no label: its multi-hot row is all zeros "
                                 f"({len(empty)} such rows); pass allow_empty=True if an image may have no tag")
        if vocab is not None and len(vocab) != tensor.shape[1]:
            raise ValueError(f"the multi-hot labels have {tensor.shape[1]} columns but vocab names {len(vocab)} tags")
        names = list(vocab) if vocab is not None else None
        return Targets(tensor.long(), MULTI_LABEL, names, tensor.shape[1])
    if tensor.is_floating_point():
        if not bool((tensor == tensor.round()).all()):
            raise TypeError(f"labels must be integer class indices for task='single_label', got fractional "
                            f"{tensor.dtype} values (pass task='regression' for numeric targets)")
    if tensor.ndim != 1:
        raise ValueError(f"single-label targets must be one class index per image (N,), got shape "
                         f"{tuple(tensor.shape)}")
    tensor = tensor.long()
    if len(tensor) and int(tensor.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, found {int(tensor.min())}")
    c = len(vocab) if vocab is not None else (int(tensor.max()) + 1 if len(tensor) else 0)
    return Targets(tensor, SINGLE_LABEL, list(vocab) if vocab is not None else None, c)


def encode_labels(labels: Any, task: str = "auto", vocab: Optional[Sequence[str]] = None,
                  label_delim: Optional[str] = None, allow_empty: bool = False,
                  rows: Optional[Sequence[str]] = None, notes: Optional[list[str]] = None) -> Targets:
    """Labels as a numeric array or tensor (class indices, multi-hot rows, floats: `encode_array`), or as values
    one per item (class names, tag lists, numbers read from a table; also an array of strings: `encode_values`)."""
    if isinstance(labels, Tensor) or isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf":
        return encode_array(labels, task, vocab, allow_empty, notes)
    return encode_values(list(labels), task, vocab, label_delim, allow_empty, rows, notes)


# -------------------------------------------------------------------------------------------------
# what a task implies
# -------------------------------------------------------------------------------------------------
def loss_for(task: Optional[str]) -> nn.Module:
    """The default loss of a task: cross-entropy (single-label), binary cross-entropy on the logits
    (multi-label, `MultiLabelLoss`), mean squared error (regression)."""
    if task == MULTI_LABEL:
        return MultiLabelLoss()
    if task == REGRESSION:
        return nn.MSELoss()
    return nn.CrossEntropyLoss()


def task_of(loss_func: Any, dls: Any = None) -> str:
    """The task a learner solves: the data's (`dls.task`) when it says, else the one its loss implies
    (BCE with logits: multi-label; MSE, L1, smooth L1, Huber: regression; anything else: single-label)."""
    task = getattr(dls, "task", None)
    if task in TASKS:
        return task
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        return MULTI_LABEL
    if isinstance(loss_func, REGRESSION_LOSSES):
        return REGRESSION
    return SINGLE_LABEL


def decode_prediction(task: str, probs: Tensor, vocab: Optional[Sequence[str]] = None,
                      thresh: float = 0.5) -> tuple[Any, Any, Tensor]:
    """What `predict` returns for one item's activated outputs `probs`:

    - single-label: `(label, index, probabilities)`, the most probable class;
    - multi-label: `(labels, mask, probabilities)`, the tags whose probability is above `thresh` (names when the
      vocab is known, else indices) and the boolean mask selecting them;
    - regression: `(value, values, values)`, `value` a float for one target, a list of floats for several.
    """
    if task == MULTI_LABEL:
        mask = probs > thresh
        return [decode_label(vocab, int(i)) for i in mask.nonzero().flatten()], mask, probs
    if task == REGRESSION:
        values = probs.flatten().tolist()
        return (values[0] if len(values) == 1 else values), probs, probs
    index = int(probs.argmax())
    return decode_label(vocab, index), index, probs


def target_text(task: str, target: Tensor, vocab: Optional[Sequence[str]] = None) -> str:
    """One item's target (or decoded prediction) as short text: the class name, the tags joined by ';', the
    value(s) to 3 significant digits."""
    if task == MULTI_LABEL:
        return ";".join(str(decode_label(vocab, int(i))) for i in torch.as_tensor(target).nonzero().flatten())
    if task == REGRESSION:
        return ", ".join(f"{v:.3g}" for v in torch.as_tensor(target).flatten().tolist())
    return str(decode_label(vocab, int(target)))


def check_metrics_for_task(metrics: Sequence[Any], task: str) -> None:
    """Class metrics (`accuracy`, `error_rate`, `top_k_accuracy`, `F1Score`, `BalancedAccuracy`) compare class
    indices; on a regression task they are refused up front, naming the metric and how to choose a task."""
    if task != REGRESSION:
        return
    class_metrics = (accuracy, error_rate, top_k_accuracy)
    for m in metrics:
        func = m.func if isinstance(m, partial) else m
        if func in class_metrics or isinstance(m, (F1Score, BalancedAccuracy)):
            name = getattr(func, "__name__", type(m).__name__)
            raise ValueError(f"metrics={name} compares predicted classes with class labels, but this learner's task "
                             f"is regression (float targets, MSE loss), where it means nothing. If the labels are "
                             f"class ids, build the data with task='single_label' (or integer labels); for a "
                             f"regression, drop {name} (the validation loss is the mean squared error)")


def holds_names(labels: Any) -> bool:
    """True for labels given as names (strings) rather than numbers: an array of strings or objects, or a
    sequence holding a string."""
    if isinstance(labels, np.ndarray):
        return labels.dtype.kind in "US" or labels.dtype.kind == "O" and any(isinstance(v, str) for v in labels.flat)
    if isinstance(labels, Tensor):
        return False
    return any(isinstance(v, str) for v in labels)
