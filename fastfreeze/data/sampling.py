"""Balanced sampling for imbalanced classes: `ImageDataLoaders.from_*(..., balance=True)` (docs/imbalance.md).

Each epoch draws as many training items as there are, with replacement, item i with a probability
proportional to `1 / count(class of i)` (torch's `WeightedRandomSampler`): every class is drawn about equally
often, a rare class's items repeat, a common class's items are partly left out in each epoch. The draws come
from the training loader's own generator, seeded by `seed=` and restored by checkpoints, so the same seed
gives the same draws with any number of workers and a resumed run redraws exactly the interrupted run's.

Single-label data only: a multi-label item has several tags and so no one class frequency to invert (use
`vision_learner(..., class_weights='balanced')`, which weights each tag's positives instead), and regression
targets have no classes.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ..core.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL


def class_counts(targets: Tensor, n_classes: Optional[int] = None) -> Tensor:
    """The number of items of each class: class indices `(N,)` give `(n_classes,)` counts (`n_classes` defaults
    to the largest index + 1); multi-hot rows `(N, C)` give each tag's number of positives, `(C,)`."""
    targets = torch.as_tensor(targets)
    if targets.ndim == 2:
        return targets.long().sum(0)
    return torch.bincount(targets.long(), minlength=n_classes or 0)


def balance_weights(targets: Tensor, task: str = SINGLE_LABEL) -> Tensor:
    """One sampling weight per training item, `1 / count(its class)` (float64), so that every class present
    is drawn with the same probability. `targets`: the training items' class indices."""
    if task == MULTI_LABEL:
        raise ValueError("balance=True draws each item by the inverse frequency of its class, which a multi-label "
                         "item (several tags) does not have: drop balance=True and weight the loss instead, "
                         "vision_learner(..., class_weights='balanced') (each tag's positives weighted by "
                         "negatives/positives, BCE's pos_weight)")
    if task == REGRESSION:
        raise ValueError("balance=True needs class labels, and regression targets have no classes: drop "
                         "balance=True (or give class labels)")
    targets = torch.as_tensor(targets).long().reshape(-1)
    if targets.numel() == 0:
        raise ValueError("balance=True with no training items: pass at least one item per class")
    counts = class_counts(targets).double()
    return 1.0 / counts[targets]


def sample_weights(balance: bool, targets: Any, task: str = SINGLE_LABEL) -> Optional[Tensor]:
    """The `sample_weights` for `DataLoaders.from_dsets`: `balance_weights(targets, task)` when `balance`, else
    None (the usual shuffle)."""
    if not isinstance(balance, bool):
        raise TypeError(f"balance must be True or False, got {balance!r}")
    return balance_weights(torch.as_tensor(targets), task) if balance else None


def dataset_targets(dataset: Any) -> Tensor:
    """The encoded targets of every item of a training dataset, in its order, without loading an image: a
    `TensorDataset`'s last tensor, or the `labels` of fastfreeze's datasets (restricted to their `indices` when
    they have them). TypeError for other datasets."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"cannot read the training targets of a {type(dataset).__name__} without loading every "
                        "item: pass the class weights yourself, class_weights=<one weight per class>")
    labels = torch.as_tensor(labels)
    indices = getattr(dataset, "indices", None)
    return labels[torch.as_tensor(indices, dtype=torch.long)] if indices is not None else labels
