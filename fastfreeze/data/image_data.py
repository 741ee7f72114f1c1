"""Image data for `vision_learner`, preprocessed the way the chosen timm model was trained (see `preprocess`).

Two sources of images:

- files (`ImageDataLoaders.from_folder`): opened with PIL, converted to RGB, then timm's own transforms. Training
  with `augment=True`: timm's training transform, i.e. a random resized crop (scale 0.08-1) and a horizontal flip,
  with no colour jitter, no auto-augment and no random erasing (pass a dict as `augment` to change timm's options).
  Evaluation: resize to `size / crop_pct`, centre crop to `size`, normalise (the 'crop' resize method).
- in-memory arrays (`ImageDataLoaders.from_tensors` / `from_arrays`): the uint8 or float images are kept as they
  are and whole batches are converted at once (3 channels, scale to [0, 1], resize the whole image to the input
  size, normalise), which is much faster on CPU than per-item PIL work. Augmentation here is a random horizontal
  flip only (the 'squish' resize method).

`ImageDataLoaders.preprocess(item)` applies the same evaluation preprocessing to one item for `predict`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..core.dataloaders import DataLoaders, whole_batch
from ..core.tasks import (MULTI_LABEL, SINGLE_LABEL, TASKS, encode_array, encode_labels, encode_values, holds_names,
                          target_text)
from ..core.validation import (DataReport, check_classes, check_known_classes, check_known_names, check_tags,
                               find_duplicates, label_counts, warn_classes_without_validation, warn_spelling_variants)
from ..utils.seeds import batch_keys, item_key, seeded
from ..utils.show import image_grid
from .hf import HFImageDataset, hf_splits
from .preprocess import (IMAGENET_DATA_CONFIG, ImageItem, InputSize, SizedTransform, as_image_tensor,
                         batch_to_model_input, check_resize_method, choose_config, denormalize, image_layout,
                         image_transform, open_image, preprocess_image, with_input_size)
from .folders import FOLDER_LAYOUT, IMAGE_EXTENSIONS, class_folders, read_class_folders, require_folder
from .sampling import sample_weights
from .table import Column, read_csv, table_items



# ------------------------------------------------------------------------------------- files

def find_bad_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Decode every file in `paths` with PIL; return `(path, reason)` for each that fails."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError) as error:
            bad.append((path, str(error)))
    return bad


def check_images(paths: Sequence[Path], rows: Optional[Sequence[str]] = None) -> None:
    """Decode every file; a ValueError listing (up to 50 of) the unreadable ones, each named by its row in
    `rows` when given (a table's), else by its path."""
    bad = find_bad_images(paths)
    if not bad:
        return
    where = dict(zip(paths, rows)) if rows is not None else {}
    listing = "\n".join(f"  {where.get(p, p)}: {reason}" for p, reason in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    raise ValueError(f"{len(bad)} unreadable image file(s): remove or replace them\n{listing}{more}")


class ImageFolderDataset(Dataset):
    """Image files with their targets (integer labels, or a tensor of encoded targets: `tasks`); `transform` maps
    the opened RGB PIL image to a tensor.

    Files are read lazily: a corrupt file fails only when its item is loaded, with a ValueError naming the
    file and, when `rows` describes where each item was listed (`from_df`), its row
    (`ImageDataLoaders.from_folder(..., check=True)` checks every file up front instead)."""

    def __init__(self, items: Sequence[Path], labels: Union[Sequence[int], Tensor],
                 transform: Optional[Callable[[Image.Image], Any]] = None, rows: Optional[Sequence[str]] = None):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels: they must match")
        self.items, self.transform, self.rows = [Path(p) for p in items], transform, rows
        self.labels = labels if isinstance(labels, Tensor) else [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Any) -> tuple[Any, Any]:
        """Item `key`: an index, or `(index, epoch_seed)` from `seeds.EpochSeededSampler`, whose transform
        then draws its randomness from a seed of that epoch and index (`seeds.item_key`)."""
        i, seed = item_key(key)
        try:
            image = open_image(self.items[i])
        except ValueError as error:
            if self.rows is None:
                raise
            raise ValueError(f"{self.rows[i]}: {error}") from error
        with seeded(seed):
            return (self.transform(image) if self.transform is not None else image), self.labels[i]


def split_indices(labels: Union[Sequence[int], np.ndarray, Tensor], valid_pct: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split: in each class, `round(n_class * valid_pct)` shuffled items (at most n_class - 1,
    so every class keeps a training item) go to validation. Returns sorted `(train_idx, valid_idx)`; the same
    seed gives the same split."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), got {valid_pct}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_valid = min(math.floor(len(members) * valid_pct + 0.5), len(members) - 1)
        valid.append(members[:n_valid])
        train.append(members[n_valid:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


# --------------------------------------------------------------------------- arrays


class ArrayImageDataset(Dataset):
    """In-memory images kept as they are (uint8 or float, `(N,H,W)`, `(N,H,W,C)` or `(N,C,H,W)`), converted to the
    model's input a whole batch at a time: torch's DataLoader calls `__getitems__` with the batch's indices.

    `indices` selects a subset without copying the images; `augment` flips images horizontally at random.
    `labels=None`: images without labels, whose batches are `(x,)` (`ImageDataLoaders.test_dl`). `task`: how
    the labels are read (`tasks.encode_array`: class indices, multi-hot rows, regression values). `input_size`:
    the size batches are made at, read at each batch (progressive resizing); None: the config's."""

    def __init__(self, images: Union[np.ndarray, Tensor], labels: Union[np.ndarray, Tensor, Sequence[int], None],
                 data_config: dict[str, Any], augment: bool = False,
                 indices: Optional[Union[np.ndarray, Tensor, Sequence[int]]] = None, layout: Optional[str] = None,
                 task: str = "auto", input_size: Optional[InputSize] = None):
        self.images = as_image_tensor(images)
        if self.images.ndim not in (3, 4):
            raise ValueError(f"images must be a batch: (N, H, W), (N, H, W, C) or (N, C, H, W), "
                             f"got shape {tuple(self.images.shape)}")
        self.layout = layout or image_layout(self.images.shape[1:],
                                             channels_first_if_ambiguous=not isinstance(images, np.ndarray))
        self.labels = None if labels is None else _as_labels(labels, len(self.images), task)
        self.indices = (torch.arange(len(self.images)) if indices is None
                        else torch.as_tensor(np.asarray(indices), dtype=torch.long))
        self.data_config, self.augment = with_input_size(data_config, None), augment
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, keys: Sequence[Any]) -> tuple[Tensor, ...]:
        """The batch of `keys` (positions, or `(position, epoch_seed)` pairs whose first seeds the batch's flips,
        `seeds.batch_keys`); `(x,)` without labels, `(x, y)` with them."""
        positions, seed = batch_keys(keys)
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        with seeded(seed):
            flip = torch.rand(len(rows)) < 0.5 if self.augment else None
        config = self.data_config if self.input_size is None else with_input_size(self.data_config,
                                                                                    self.input_size.get())
        x = batch_to_model_input(self.images[rows], self.layout, config, flip)
        return (x,) if self.labels is None else (x, self.labels[rows])

    def __getitem__(self, key: Any) -> tuple[Tensor, ...]:
        return tuple(b[0] for b in self.__getitems__([key]))


def _check_image_batch(images: Any, name: str) -> None:
    """A clear error, naming the argument, for arrays that are not a non-empty batch of images."""
    shape = tuple(images.shape) if hasattr(images, "shape") else np.shape(images)
    if len(shape) not in (3, 4):
        hint = (f": a batch of batches? Join them first, e.g. {name}.reshape(-1, *{name}.shape[2:])"
                if len(shape) == 5 else "")
        raise ValueError(f"{name} must be a batch of images, (N, H, W), (N, H, W, C) or (N, C, H, W), but it has "
                         f"{len(shape)} dimensions (shape {shape}){hint}")
    if shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {shape}): pass at least one image per class")


def _as_labels(labels: Union[np.ndarray, Tensor, Sequence[int]], n: int, task: str = "auto") -> Tensor:
    """Targets as `tasks.encode_array` encodes them (class indices, multi-hot rows or regression values)."""
    labels = encode_array(labels, task, allow_empty=True).targets  # the data builders check for empty rows
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels: they must match")
    return labels


class ImageItemsDataset(Dataset):
    """Images of any kind `preprocess_image` takes (files, PIL images, arrays), each run through `preprocess`;
    items are `(x,)` without labels, `(x, y)` with them."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Callable[[ImageItem], Tensor],
                 labels: Optional[Tensor] = None):
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"{len(items)} images but {len(labels)} labels: they must match")
        self.items, self.preprocess, self.labels = items, preprocess, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        x = self.preprocess(self.items[i])
        return (x,) if self.labels is None else (x, self.labels[i])


# ------------------------------------------------------------------------------------------ DataLoaders

def _class_names(vocab: Optional[Sequence[str]], c: Optional[int], task: str) -> Optional[list[str]]:
    """The names of the classes (or tags) for a summary: the vocab, else the indices; None for regression."""
    if vocab is not None:
        return list(vocab)
    return None if task not in (SINGLE_LABEL, MULTI_LABEL) or c is None else [str(i) for i in range(c)]


def default_num_workers() -> int:
    """Worker processes for decoding image files: `min(4, cpu count)`."""
    return min(4, os.cpu_count() or 1)


class ImageDataLoaders(DataLoaders):
    """Training and validation DataLoaders of images preprocessed for a timm model.

    `data_config` is the resolved preprocessing (`resolve_data_config`); `resize_method` says how one item is
    brought to the input size at evaluation ('crop' for files, 'squish' for arrays), so `preprocess` matches the
    validation data. `task` is what the labels are (`tasks`: 'single_label', 'multi_label' or 'regression'), from
    which `vision_learner` picks the loss and the number of outputs. `train_size`: the `InputSize` the training
    items are made at, which `set_train_size` changes between epochs (the builders below give one; None: the
    training size is fixed). Validation, `preprocess` and `test_dl` always use `data_config`'s size."""

    def __init__(self, train: Any, valid: Any = None, vocab: Optional[Sequence[str]] = None, c: Optional[int] = None,
                 data_config: Optional[dict[str, Any]] = None, resize_method: str = "crop", task: str = SINGLE_LABEL,
                 train_size: Optional[InputSize] = None):
        super().__init__(train, valid, vocab=vocab, c=c,
                         data_config=with_input_size(data_config or IMAGENET_DATA_CONFIG, None))
        self.resize_method = check_resize_method(resize_method)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.train_size = train_size

    def record_report(self, train_targets: Tensor, valid_targets: Optional[Tensor],
                      skipped: Sequence[tuple[str, str]] = (), notes: Optional[list[str]] = None) -> None:
        """Keep what the data holds as `self.report` (what `summary()` prints: items per split and class, from
        the encoded targets, what was `skipped`, the `notes`) and warn about classes the validation split lacks;
        `valid_targets` None: no validation set."""
        self.report = DataReport(self.task, len(train_targets), None if valid_targets is None else len(valid_targets),
                                 _class_names(self.vocab, self.c, self.task),
                                 label_counts(train_targets, self.task, self.c),
                                 None if valid_targets is None else label_counts(valid_targets, self.task, self.c),
                                 list(skipped), notes if notes is not None else [])
        warn_classes_without_validation(self.report)

    def set_train_size(self, size: Union[int, tuple[int, int], None]) -> None:
        """Make the training items of the next epochs at `size` (an int for a square, or `(height, width)`;
        None: back to the data's own size, `data_config['input_size']`), in this process and in the loader's
        worker processes, persistent ones included, without rebuilding the loaders. Call it between epochs."""
        if self.train_size is None:
            raise TypeError("the training size of these ImageDataLoaders is fixed (they were built from loaders "
                            "given directly): build them with ImageDataLoaders.from_folder, from_lists, from_df, "
                            "from_csv, from_arrays or from_tensors to change it")
        self.train_size.set(self.data_config["input_size"][-2:] if size is None else size)

    def current_train_size(self) -> tuple[int, int]:
        """The `(height, width)` training items are made at now."""
        return self.data_config["input_size"][-2:] if self.train_size is None else self.train_size.get()

    @classmethod
    def from_folder(cls, path: Union[str, Path], train: str = "train", valid: str = "valid",
                    valid_pct: Optional[float] = None, seed: int = 0, bs: Optional[int] = None,
                    size: Union[int, tuple[int, int], None] = None, num_workers: Optional[int] = None,
                    augment: Union[bool, dict[str, Any]] = True, arch: Union[str, nn.Module, None] = None,
                    data_config: Optional[dict[str, Any]] = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                    check: bool = False, balance: bool = False) -> "ImageDataLoaders":
        """Images from `path/train/<class>/*` and `path/valid/<class>/*`, or, with `valid_pct`, from
        `path/<class>/*` split at random (stratified per class, seeded by `seed`).

        Classes are the sub-folder names, sorted (`dls.vocab`); images anywhere below a class folder count, each
        real file once (links followed, loops read once); images outside the class folders and dangling links are
        skipped with a warning, and `dls.summary()` lists what was used and skipped (`folders`, docs/input.md).
        Preprocessing comes from `data_config`, else from `arch`'s timm config, with `size` overriding the input
        size. `num_workers=None` uses `min(4, cpu count)` worker processes (pass 0 to load in the main process).
        `check=True` decodes every file first and reports all unreadable ones at once; otherwise a bad file
        fails when it is loaded, with an error naming it. `bs=None`: 64, or smaller for a small training set
        (`data.default_batch_size`). `balance=True`: each epoch draws the training items with probability
        1/count of their class, with replacement (`data.sampling`, docs/imbalance.md).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"image folder {path} does not exist")
        notes: list[str] = []
        is_valid: Optional[list[bool]] = None
        if valid_pct is None:
            train_folder, valid_folder = path / train, path / valid
            require_folder(train_folder, "training folder")
            require_folder(valid_folder, "validation folder")
            found = read_class_folders(train_folder, extensions, notes)
            found_valid = read_class_folders(valid_folder, extensions, notes, training=False)
            if not found_valid.files:
                raise ValueError(f"no image files in the class folders of {valid_folder}: {FOLDER_LAYOUT}")
            vocab = found.names + [n for n in found_valid.names if n not in found.names]
            files, classes = found.files + found_valid.files, found.classes + found_valid.classes
            is_valid = [False] * len(found.files) + [True] * len(found_valid.files)
            skipped = found.skipped + found_valid.skipped
        else:
            require_folder(path, "image folder")
            names = {f.name for f in class_folders(path)}
            if {train, valid} <= names:
                raise ValueError(f"{path} has '{train}' and '{valid}' folders, which valid_pct would take as "
                                 f"classes: drop valid_pct to use them, or point path at the folder of classes")
            found = read_class_folders(path, extensions, notes)
            vocab, files, classes, skipped = found.names, found.files, found.classes, found.skipped
        warn_spelling_variants(vocab, notes)
        # each real file once: a file reached through links again is dropped, or refused across classes/splits
        unique = find_duplicates([os.path.realpath(f) for f in files], classes, [str(f) for f in files], is_valid,
                                 notes)
        skipped += unique.dropped
        index = {name: i for i, name in enumerate(vocab)}
        files = [files[i] for i in unique.keep]
        labels = [index[classes[i]] for i in unique.keep]
        if is_valid is None:
            train_idx, valid_idx = split_indices(labels, valid_pct, seed)
            if len(valid_idx) == 0:
                raise ValueError(f"valid_pct={valid_pct} leaves no validation images out of {len(files)} in {path}: "
                                 f"raise valid_pct or add images")
        else:
            flags = np.array([is_valid[i] for i in unique.keep], dtype=bool)
            train_idx, valid_idx = np.flatnonzero(~flags), np.flatnonzero(flags)
        train_files, train_labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
        valid_files, valid_labels = [files[i] for i in valid_idx], [labels[i] for i in valid_idx]
        check_classes(train_labels, valid_labels, vocab, notes=notes, named=False, fix=None)
        if check:
            check_images(train_files + valid_files)
        config = choose_config(arch, size, data_config)
        train_size = InputSize(config["input_size"][-2:])
        train_ds = ImageFolderDataset(train_files, train_labels, SizedTransform(config, train_size, True, augment))
        valid_ds = ImageFolderDataset(valid_files, valid_labels, image_transform(config, False))
        workers = default_num_workers() if num_workers is None else num_workers
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=workers, seed=seed,
                                         item_seeds=bool(augment), persistent_workers=workers > 0,
                                         sample_weights=sample_weights(balance, train_labels))
        dls = cls(loaders.train, loaders.valid, vocab=vocab, data_config=config, resize_method="crop",
                  train_size=train_size)
        dls.record_report(torch.tensor(train_labels), torch.tensor(valid_labels), skipped, notes)
        return dls

    @classmethod
    def from_tensors(cls, x: Union[np.ndarray, Tensor], y: Union[np.ndarray, Tensor, Sequence[int]],
                     x_valid: Union[np.ndarray, Tensor, None] = None,
                     y_valid: Union[np.ndarray, Tensor, Sequence[int], None] = None,
                     valid_pct: Optional[float] = 0.2, vocab: Optional[Sequence[str]] = None,
                     size: Union[int, tuple[int, int], None] = None, arch: Union[str, nn.Module, None] = None,
                     data_config: Optional[dict[str, Any]] = None, bs: Optional[int] = None, augment: bool = False,
                     seed: int = 0, num_workers: int = 0, task: str = "auto",
                     allow_empty: bool = False, balance: bool = False) -> "ImageDataLoaders":
        """In-memory images: uint8 `(N,H,W)` grayscale, `(N,H,W,C)`, or uint8/float `(N,C,H,W)` (C in 1, 3, 4;
        floats in [0, 1]), with labels `y`: integer class indices, multi-hot rows (2-D, 0s and 1s: multi-label)
        or floats (regression), read as `tasks.encode_array` says (`task=` overrides the guess; `allow_empty`
        accepts multi-hot rows of zeros).

        Validation: `x_valid`/`y_valid` when given, else a stratified `valid_pct` split of `x` seeded by `seed`
        (`valid_pct=None`: no validation set). Each batch is converted at once: 3 channels, resized to the input
        size with the config's interpolation (antialiased), normalised; `augment=True` adds random horizontal
        flips to training batches. The images are not copied. `num_workers=0` by default: the batch resize
        already uses torch's threads. `bs=None`: 64, or smaller for a small training set
        (`data.default_batch_size`). `balance=True`: each epoch draws the training items with probability
        1/count of their class, with replacement (`data.sampling`, docs/imbalance.md).
        """
        config = choose_config(arch, size, data_config)
        train_size = InputSize(config["input_size"][-2:])
        _check_image_batch(x, "x")
        if x_valid is not None:
            if y_valid is None:
                raise ValueError("x_valid was given without y_valid: pass both")
            _check_image_batch(x_valid, "x_valid")
        notes: list[str] = []
        if holds_names(y):  # class names: one vocab for both splits, so a class only in validation is seen
            values = list(y) + ([] if x_valid is None else list(y_valid))
            encoded = encode_values(values, task, vocab, allow_empty=allow_empty, notes=notes)
            labels, valid_labels = encoded.targets[:len(y)], encoded.targets[len(y):]
        else:
            encoded = encode_array(y, task, vocab, allow_empty, notes)
            labels = encoded.targets
            valid_labels = None if x_valid is None else \
                encode_array(y_valid, encoded.task, vocab, allow_empty=allow_empty).targets
        task, names = encoded.task, encoded.vocab
        if x_valid is not None:
            train_ds = ArrayImageDataset(x, labels, config, augment=augment, task=task, input_size=train_size)
            valid_ds = ArrayImageDataset(x_valid, valid_labels, config, task=task)
        elif valid_pct:
            train_idx, valid_idx = split_indices(labels if task == SINGLE_LABEL else np.zeros(len(labels)),
                                                 valid_pct, seed)
            train_ds = ArrayImageDataset(x, labels, config, augment, indices=train_idx, task=task,
                                         input_size=train_size)
            valid_ds = ArrayImageDataset(train_ds.images, labels, config, indices=valid_idx, layout=train_ds.layout,
                                         task=task)
        else:
            train_ds = ArrayImageDataset(x, labels, config, augment=augment, task=task, input_size=train_size)
            valid_ds = None
        train_targets = train_ds.labels[train_ds.indices]
        valid_targets = None if valid_ds is None else valid_ds.labels[valid_ds.indices]
        c = encoded.c
        if task == SINGLE_LABEL:
            c = check_classes(train_targets, valid_targets, names, notes=notes, named=vocab is not None,
                              fix="pass vocab= naming every class (vision_learner's n_out= sets the outputs)")
        elif task == MULTI_LABEL:  # tags read from names are checked as inferred; a multi-hot array's columns are named
            check_tags(train_targets, valid_targets, names, named=vocab is not None or not holds_names(y),
                       fix="pass vocab= naming every tag", notes=notes)
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=num_workers, seed=seed,
                                         item_seeds=augment, collate_fn=whole_batch,
                                         persistent_workers=num_workers > 0,
                                         sample_weights=sample_weights(balance, train_targets, task))
        dls = cls(loaders.train, loaders.valid, vocab=names, c=c, data_config=config, resize_method="squish",
                  task=task, train_size=train_size)
        dls.record_report(train_targets, valid_targets, notes=notes)
        return dls

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: Union[np.ndarray, Sequence[int]], x_valid: Optional[np.ndarray] = None,
                    y_valid: Union[np.ndarray, Sequence[int], None] = None, **kwargs: Any) -> "ImageDataLoaders":
        """`from_tensors` for numpy arrays (same arguments); e.g. Fashion-MNIST's uint8 `(N, 28, 28)`."""
        return cls.from_tensors(x, y, x_valid, y_valid, **kwargs)

    @classmethod
    def from_lists(cls, path: Union[str, Path], fnames: Sequence[Union[str, Path]], labels: Any,
                   valid_pct: Optional[float] = 0.2, seed: int = 0, valid: Optional[Sequence[bool]] = None,
                   label_delim: Optional[str] = None, task: str = "auto", vocab: Optional[Sequence[str]] = None,
                   allow_empty: bool = False, bs: Optional[int] = None, size: Union[int, tuple[int, int], None] = None,
                   num_workers: Optional[int] = None, augment: Union[bool, dict[str, Any]] = True,
                   arch: Union[str, nn.Module, None] = None, data_config: Optional[dict[str, Any]] = None,
                   check: bool = False, rows: Optional[Sequence[str]] = None,
                   balance: bool = False) -> "ImageDataLoaders":
        """Image files `fnames` (relative to `path`) with their `labels`, one per file: class names, tag lists or
        strings split at `label_delim` (multi-label), numbers (regression), or an array (class indices,
        multi-hot rows, floats). The task is read from the labels (`tasks`, docs/tasks.md); `task=` overrides
        it, `vocab=` fixes the class order, `allow_empty` accepts multi-label items without a tag.

        Validation: the items whose `valid` flag is True, else a random `valid_pct` split seeded by `seed`
        (stratified per class for single-label data). The other arguments are `from_folder`'s; `rows` describes
        each item in errors (`from_df` passes the table rows); `balance=True` draws training items by the inverse
        frequency of their class (`data.sampling`).
        """
        files = [Path(path) / f for f in fnames]
        rows = list(rows) if rows is not None else [f"item {i} ({f})" for i, f in enumerate(files)]
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: give one label per file")
        notes: list[str] = []
        encoded = encode_labels(labels, task, vocab, label_delim, allow_empty, rows, notes)
        flags = None
        if valid is not None:
            flags = np.asarray(valid, dtype=bool)
            if len(flags) != len(files):
                raise ValueError(f"{len(files)} files but {len(flags)} validation flags: give one per file")
        # each real file once: listed again with the same label it is dropped; otherwise refused, naming the rows
        texts = [target_text(encoded.task, t, encoded.vocab) for t in encoded.targets]
        unique = find_duplicates([os.path.realpath(f) for f in files], texts, rows,
                                 None if flags is None else flags.tolist(), notes)
        if len(unique.keep) < len(files):
            keep = torch.as_tensor(unique.keep, dtype=torch.long)
            files, rows = [files[i] for i in unique.keep], [rows[i] for i in unique.keep]
            encoded.targets = encoded.targets[keep]
            flags = None if flags is None else flags[unique.keep]
        if flags is not None:
            train_idx, valid_idx = np.flatnonzero(~flags), np.flatnonzero(flags)
        elif valid_pct:
            strata = encoded.targets.numpy() if encoded.task == SINGLE_LABEL else np.zeros(len(files))
            train_idx, valid_idx = split_indices(strata, valid_pct, seed)
        else:
            train_idx, valid_idx = np.arange(len(files)), np.array([], dtype=int)
        if len(train_idx) == 0:
            raise ValueError(f"every one of the {len(files)} items is a validation item: mark some as training items")
        if len(valid_idx) == 0 and (valid is not None or valid_pct):
            raise ValueError(f"no validation items among {len(files)}: mark some rows as validation rows, or raise "
                             "valid_pct")
        train_targets = encoded.targets[torch.as_tensor(train_idx, dtype=torch.long)]
        valid_targets = encoded.targets[torch.as_tensor(valid_idx, dtype=torch.long)] if len(valid_idx) else None
        if encoded.task == SINGLE_LABEL:
            check_classes(train_targets, valid_targets, encoded.vocab, notes=notes, named=vocab is not None,
                          fix="pass vocab= naming every class")
        elif encoded.task == MULTI_LABEL:  # tags read from the labels are checked as inferred; array columns are named
            from_array = isinstance(labels, Tensor) or isinstance(labels, np.ndarray) and labels.dtype.kind in "biuf"
            check_tags(train_targets, valid_targets, encoded.vocab, named=vocab is not None or from_array,
                       fix="pass vocab= naming every tag", notes=notes)
        if check:
            check_images(files, rows)
        config = choose_config(arch, size, data_config)
        train_size = InputSize(config["input_size"][-2:])

        def dataset(idx: np.ndarray, training: bool) -> ImageFolderDataset:
            transform = SizedTransform(config, train_size, True, augment) if training else image_transform(config)
            return ImageFolderDataset([files[i] for i in idx], encoded.targets[torch.as_tensor(idx, dtype=torch.long)],
                                      transform, rows=[rows[i] for i in idx])
        valid_ds = dataset(valid_idx, False) if len(valid_idx) else None
        workers = default_num_workers() if num_workers is None else num_workers
        train_ds = dataset(train_idx, True)
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=workers, seed=seed,
                                         persistent_workers=workers > 0,
                                         sample_weights=sample_weights(balance, train_ds.labels, encoded.task))
        dls = cls(loaders.train, loaders.valid, vocab=encoded.vocab, c=encoded.c, data_config=config,
                  resize_method="crop", task=encoded.task, train_size=train_size)
        dls.record_report(train_targets, valid_targets, unique.dropped, notes)
        return dls

    @classmethod
    def from_df(cls, df: Any, path: Union[str, Path] = ".", valid_pct: Optional[float] = 0.2, seed: int = 0,
                fn_col: Column = 0, folder: Optional[str] = None, suff: str = "",
                label_col: Union[Column, Sequence[Column]] = 1, label_delim: Optional[str] = None,
                valid_col: Optional[Column] = None, source: str = "the table", **kwargs: Any) -> "ImageDataLoaders":
        """Images listed in a pandas DataFrame, with fastai's arguments (`table`, docs/tasks.md): the file of a
        row is `path/folder/<fn_col><suff>`, its label is in `label_col` (several tags split at `label_delim`;
        a list of columns: one column per tag or per regression target), and the rows where `valid_col` is True
        are the validation set (else a random `valid_pct` split). Columns are names or positions. The task and
        the vocab (sorted) come from the labels. Other arguments go to `from_lists` (task, vocab, allow_empty,
        bs, size, arch, augment, num_workers, check...).
        """
        items = table_items(df, path, fn_col, label_col, valid_col, folder, suff, source)
        labels: Any = items.labels
        if items.label_array is not None:
            labels = items.label_array
            kwargs.setdefault("vocab", items.label_names)
        dls = cls.from_lists(".", items.files, labels, valid_pct=valid_pct, seed=seed, valid=items.is_valid,
                             label_delim=label_delim, rows=items.rows, **kwargs)
        dls.report.notes[:0] = items.notes  # what reading the table warned about comes first in the summary
        return dls

    @classmethod
    def from_csv(cls, path: Union[str, Path], csv_fname: str = "labels.csv", header: Union[int, str, None] = "infer",
                 delimiter: Optional[str] = None, **kwargs: Any) -> "ImageDataLoaders":
        """Images listed in the CSV file `path/csv_fname` (read with pandas; `header=None` for a file without a
        header line): `from_df` on it, with `path` as the images' root. Needs pandas
        (`pip install 'fastfreeze[table]'`)."""
        df = read_csv(Path(path) / csv_fname, header=header, delimiter=delimiter)
        return cls.from_df(df, path=path, source=csv_fname, **kwargs)

    @classmethod
    def from_hf(cls, data: Any, image_col: str = "image", label_col: str = "label",
                valid_split: Optional[str] = "validation", valid_pct: Optional[float] = None,
                train_split: str = "train", seed: int = 0, task: str = "auto",
                vocab: Optional[Sequence[str]] = None, label_delim: Optional[str] = None, allow_empty: bool = False,
                bs: Optional[int] = None, size: Union[int, tuple[int, int], None] = None,
                num_workers: Optional[int] = None, augment: Union[bool, dict[str, Any]] = True,
                arch: Union[str, nn.Module, None] = None, data_config: Optional[dict[str, Any]] = None,
                balance: bool = False) -> "ImageDataLoaders":
        """A Hugging Face `datasets.Dataset` or `DatasetDict` (`data.hf`, docs/hf-datasets.md; needs
        `pip install 'fastfreeze[hf]'`): images from `image_col`, decoded one at a time as the loader reads them
        and preprocessed as image files are; labels from `label_col` (a `ClassLabel`: its names are the vocab;
        a `Sequence(ClassLabel)`: multi-label; strings: class names, sorted; `task=` overrides).

        Validation: the `valid_split` of a DatasetDict (training: `train_split`), else a `valid_pct` split of
        the training items (default 0.2 for a Dataset; stratified per class, seeded by `seed`). The other
        arguments are `from_lists`'s."""
        splits = hf_splits(data, image_col, label_col, train_split, valid_split, valid_pct, seed, task,
                           None if vocab is None else list(vocab), label_delim, allow_empty, split_indices)
        encoded = splits.encoded
        notes: list[str] = []
        if encoded.task == SINGLE_LABEL:
            check_classes(splits.train_targets, splits.valid_targets, encoded.vocab, notes=notes,
                          named=vocab is not None,
                          fix="pass vocab= naming every class, or split the items with valid_pct= (stratified)")
        elif encoded.task == MULTI_LABEL:
            check_tags(splits.train_targets, splits.valid_targets, encoded.vocab, named=vocab is not None,
                       fix="pass vocab= naming every tag, or split the items with valid_pct=", notes=notes)
        config = choose_config(arch, size, data_config)
        train_size = InputSize(config["input_size"][-2:])
        train_ds = HFImageDataset(splits.train, image_col, splits.train_targets,
                                  SizedTransform(config, train_size, True, augment))
        valid_ds = HFImageDataset(splits.valid, image_col, splits.valid_targets, image_transform(config, False))
        workers = default_num_workers() if num_workers is None else num_workers
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=workers, seed=seed,
                                         item_seeds=bool(augment), persistent_workers=workers > 0,
                                         sample_weights=sample_weights(balance, train_ds.labels, encoded.task))
        dls = cls(loaders.train, loaders.valid, vocab=encoded.vocab, c=encoded.c, data_config=config,
                  resize_method="crop", task=encoded.task, train_size=train_size)
        dls.record_report(splits.train_targets, splits.valid_targets, notes=notes)
        return dls

    def test_dl(self, items: Union[np.ndarray, Tensor, Sequence[ImageItem]], labels: Any = None,
                bs: Optional[int] = None, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader over new images, preprocessed as the validation data is, for `learn.get_preds(dl=...)`,
        `learn.tta(dl=...)` or, with labels, `learn.validate(dl)`.

        `items`: an array or tensor batch of images (`(N,H,W)`, `(N,H,W,C)` or `(N,C,H,W)`, converted a batch at
        a time), or a list of image files, PIL images or single arrays. Without `labels` the batches are `(x,)`
        and `get_preds` returns no targets; `labels` are read as the training labels were (this data's task and
        vocab)."""
        batch_size = bs or getattr(self.valid, "batch_size", None) or 128
        if labels is not None and self.task == SINGLE_LABEL:
            if holds_names(labels):  # class names: each must be in the vocab
                check_known_names(list(labels), self.vocab)
                labels = encode_values(list(labels), SINGLE_LABEL, self.vocab).targets
            else:  # class indices: each must be one of this data's classes
                labels = encode_array(labels if isinstance(labels, (np.ndarray, Tensor)) else np.asarray(labels),
                                      SINGLE_LABEL).targets
                check_known_classes(labels, self.c, self.vocab)
        elif labels is not None:
            labels = encode_labels(labels, self.task, self.vocab, allow_empty=True).targets
        if isinstance(items, (np.ndarray, Tensor)) and items.ndim in (3, 4):
            dataset: Dataset = ArrayImageDataset(items, labels, self.data_config, task=self.task)
            if self.resize_method == "squish":
                return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                   collate_fn=whole_batch,
                                                   pin_memory=torch.cuda.is_available())
            items = [dataset.images[i] for i in range(len(dataset))]  # one by one through timm's eval transform
        dataset = ImageItemsDataset(list(items), self.preprocess, labels)
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                           pin_memory=torch.cuda.is_available())

    def preprocess(self, item: ImageItem) -> Tensor:
        """One image (path, PIL image, array or tensor) preprocessed as the validation data is: `(3, H, W)`."""
        return preprocess_image(item, self.data_config, self.resize_method)

    def show_batch(self, n: int = 9, path: Union[str, Path, None] = None, valid: bool = False) -> Any:
        """A grid of `n` images of the first training (or `valid`) batch, de-normalised, titled with their
        labels; saved to `path` when given. Returns the matplotlib figure."""
        x, y = next(iter(self.valid if valid else self.train))
        n = min(n, len(x))
        titles = [target_text(self.task, y[i], self.vocab) for i in range(n)]
        return image_grid(denormalize(x[:n], self.data_config), titles, path=path)
