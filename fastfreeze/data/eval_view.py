"""The training items made as the validation items are: no random augmentation.

A probe fitted on the body's features of the training images sees them best as predictions will: without the
random crops and flips that help fine-tuning (the default `fine_tune`'s logistic-regression probe,
docs/few-shot.md).
"""
from __future__ import annotations

import copy
from typing import Any, Optional


def eval_view(train_dataset: Any, valid_dataset: Any = None) -> Optional[Any]:
    """A shallow copy of `train_dataset` that makes its items without random augmentation: with `augment=False`
    when it has an `augment` attribute (arrays), else with `valid_dataset`'s `transform` when both have one
    (folders, tables, Hugging Face datasets). None when neither applies (the caller keeps the training items
    as they are)."""
    if hasattr(train_dataset, "augment"):
        view = copy.copy(train_dataset)
        view.augment = False
        return view
    if hasattr(train_dataset, "transform") and hasattr(valid_dataset, "transform"):
        view = copy.copy(train_dataset)
        view.transform = valid_dataset.transform
        return view
    return None
