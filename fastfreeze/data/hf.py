"""Hugging Face `datasets` as image data: what `ImageDataLoaders.from_hf` reads (docs/hf-datasets.md).

A `datasets.Dataset` or `DatasetDict` with an image column and a label column:

- labels: a `ClassLabel` column is single-label with its `names` as the vocab (in their order); a list of
  `ClassLabel` (`Sequence(ClassLabel(...))`) is multi-label with the inner names as the vocab; any other column
  is read as a table column is (`tasks.encode_labels`: strings are class names, sorted; lists of strings are
  tags; floats are regression targets). A `ClassLabel` value of -1 (the library's "no label") is an empty label,
  refused with its row.
- images: decoded one item at a time when the loader asks for it (the `Image` feature gives a PIL image;
  a string is read as a file path), converted to RGB, then timm's transforms, as image files are.
- validation: the `valid_split` of a `DatasetDict`, or a `valid_pct` split of the training split (stratified per
  class for single-label data, seeded), as the other entry points split.

Needs `datasets` (`pip install 'fastfreeze[hf]'`), imported only when used.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..core.tasks import SINGLE_LABEL, Targets, encode_labels
from ..utils.seeds import item_key, seeded
from .preprocess import open_image, to_rgb

HF_INSTALL = "pip install 'fastfreeze[hf]'"


def require_datasets() -> Any:
    """The `datasets` module, or an ImportError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"ImageDataLoaders.from_hf needs Hugging Face datasets: {HF_INSTALL}") from None
    return datasets


def hf_image(value: Any, column: str, index: int) -> Image.Image:
    """The RGB PIL image of one cell of the image column: a PIL image (the `Image` feature decodes to one) or a
    file path; a TypeError naming the column and the fix for anything else."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, Path)):
        return open_image(value)
    raise TypeError(f"item {index} of column {column!r} is a {type(value).__name__}, not an image: cast the column "
                    f"to images first, dataset.cast_column({column!r}, datasets.Image())")


class HFImageDataset(Dataset):
    """The images of a Hugging Face dataset's `image_col`, decoded one at a time, with their encoded `targets`;
    `transform` maps the RGB PIL image to a tensor. Keys are indices or `(index, epoch_seed)` pairs
    (`seeds.EpochSeededSampler`), whose transform then draws from a seed of that epoch and index."""

    def __init__(self, data: Any, image_col: str, targets: Tensor, transform: Callable[[Image.Image], Any]):
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} labels: they must match")
        self.images, self.image_col = data.select_columns([image_col]), image_col
        self.labels, self.transform = targets, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: Any) -> tuple[Any, Tensor]:
        i, seed = item_key(key)
        image = hf_image(self.images[i][self.image_col], self.image_col, i)
        with seeded(seed):
            return self.transform(image), self.labels[i]


@dataclass
class HFSplits:
    """A Hugging Face dataset's training and validation items (`valid` None when there is none) and their labels,
    encoded together (`targets`: the training items first, then the validation items)."""
    train: Any
    valid: Any
    encoded: Targets

    @property
    def train_targets(self) -> Tensor:
        return self.encoded.targets[:len(self.train)]

    @property
    def valid_targets(self) -> Tensor:
        return self.encoded.targets[len(self.train):]


def check_columns(data: Any, columns: dict[str, str], split: str) -> None:
    """Each of `columns` (argument name -> column name) must be a column of `data`: a KeyError naming it,
    the columns there are and the argument that chooses it."""
    for argument, column in columns.items():
        if column not in data.column_names:
            raise KeyError(f"the {split!r} split has no column {column!r} (its columns: "
                           f"{', '.join(data.column_names)}): pass {argument}= naming the right one")


def label_values(data: Any, label_col: str) -> tuple[list[Any], Optional[list[str]], Optional[str]]:
    """The labels of `data[label_col]` as values for `encode_labels`, the vocab the column's feature names and
    the task it implies: `ClassLabel` ids become their names (single-label), lists of ids lists of names
    (multi-label); other columns are read as they are (vocab and task None: read from the values)."""
    datasets = require_datasets()
    feature = data.features[label_col]
    values = list(data[label_col])
    inner = getattr(feature, "feature", None)  # the element feature of a Sequence / List column
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        return [names[v] if v is not None and v >= 0 else None for v in values], names, SINGLE_LABEL
    if isinstance(inner, datasets.ClassLabel):
        names = list(inner.names)
        return [[names[v] for v in row if v is not None and v >= 0] for row in values], names, "multi_label"
    return values, None, None


def hf_splits(data: Any, image_col: str, label_col: str, train_split: str, valid_split: Optional[str],
              valid_pct: Optional[float], seed: int, task: str, vocab: Optional[list[str]],
              label_delim: Optional[str], allow_empty: bool,
              split_indices: Callable[..., tuple[np.ndarray, np.ndarray]]) -> HFSplits:
    """The training and validation items of `data` (see the module docstring) with their labels encoded.
    `split_indices(strata, valid_pct, seed)` is the stratified split the other entry points use."""
    datasets = require_datasets()
    if isinstance(data, datasets.DatasetDict):
        if train_split not in data:
            raise KeyError(f"the DatasetDict has no {train_split!r} split (its splits: {', '.join(data)}): pass "
                           f"train_split= naming the training split")
        train = data[train_split]
        if valid_pct is None:
            if valid_split is None or valid_split not in data:
                raise KeyError(f"the DatasetDict has no {valid_split!r} split (its splits: {', '.join(data)}): "
                               f"pass valid_split= naming the validation split, or valid_pct=0.2 to split "
                               f"{train_split!r}")
            valid = data[valid_split]
        else:
            valid = None
    elif isinstance(data, datasets.Dataset):
        train, valid, train_split = data, None, "dataset"
        valid_pct = 0.2 if valid_pct is None else valid_pct
    else:
        raise TypeError(f"from_hf takes a datasets.Dataset or DatasetDict, got {type(data).__name__} (load one "
                        f"with datasets.load_dataset(...) or build one with datasets.Dataset.from_dict(...))")
    columns = {"image_col": image_col, "label_col": label_col}
    check_columns(train, columns, train_split)
    if valid is not None:
        check_columns(valid, columns, str(valid_split))
    values, names, feature_task = label_values(train, label_col)
    n_train = len(values)
    if valid is not None:
        values += label_values(valid, label_col)[0]
    rows = [f"{train_split!r} item {i}" if i < n_train else f"{valid_split!r} item {i - n_train}"
            for i in range(len(values))]
    task = feature_task if task == "auto" and feature_task is not None else task
    encoded = encode_labels(values, task, vocab if vocab is not None else names, label_delim, allow_empty, rows)
    if valid is None and valid_pct:
        strata = encoded.targets.numpy() if encoded.task == SINGLE_LABEL else np.zeros(len(values))
        train_idx, valid_idx = split_indices(strata, valid_pct, seed)
        if len(valid_idx) == 0:
            raise ValueError(f"valid_pct={valid_pct} leaves no validation items out of {len(values)}: raise "
                             "valid_pct or add items")
        order = torch.as_tensor(np.concatenate([train_idx, valid_idx]), dtype=torch.long)
        encoded = Targets(encoded.targets[order], encoded.task, encoded.vocab, encoded.c)
        train, valid = train.select(train_idx), train.select(valid_idx)
    return HFSplits(train, valid, encoded)
