"""`DataLoaders`: a training and a validation iterable of `(x, y)` batches, plus what is known of the labels."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset, WeightedRandomSampler

from ..utils.seeds import EpochSeededSampler, EpochSeededWeightedSampler, seed_for
from .validation import DataReport, check_classes, label_counts, warn_classes_without_validation


class DataLoaders:
    """Holds `train` and `valid`: any iterables of `(x, y)` batches (usually torch DataLoaders).

    `vocab` is the list of class names when known; `c` the number of outputs (defaults to `len(vocab)`).
    `data_config` carries preprocessing facts (mean, std, input size...) when the data was built for a model.
    `report` (a `validation.DataReport`) is what the builder found: `summary()` prints it.
    """

    def __init__(self, train: Iterable, valid: Optional[Iterable] = None, vocab: Optional[Sequence[str]] = None,
                 c: Optional[int] = None, data_config: Optional[dict[str, Any]] = None):
        self.train, self.valid = train, valid
        self.vocab = list(vocab) if vocab is not None else None
        self.c = c if c is not None else (len(self.vocab) if self.vocab is not None else None)
        self.data_config = data_config
        self.report: Optional[DataReport] = None

    def summary(self, show: bool = True) -> DataReport:
        """Items per class and split, what was skipped and why, and the warnings given while the data was built
        (fastai's name): printed when `show`, and returned (`validation.DataReport`; `str(report)` is the text)."""
        report = self.report if self.report is not None else self.counted_report()
        if show:
            print(report.text())
        return report

    def counted_report(self) -> DataReport:
        """A report from the loaders themselves: their datasets' sizes, and the classes of integer labels held
        by a TensorDataset."""
        def dataset(dl: Any) -> Any:
            return getattr(dl, "dataset", None)

        def size(dl: Any) -> Optional[int]:
            try:
                return len(dataset(dl)) if dataset(dl) is not None else None
            except TypeError:
                return None

        def labels(dl: Any) -> Optional[torch.Tensor]:
            ds = dataset(dl)
            return ds.tensors[-1] if isinstance(ds, TensorDataset) and len(ds.tensors) > 1 else None
        classes = self.vocab if self.vocab is not None else \
            (None if self.c is None else [str(i) for i in range(self.c)])
        train_counts = label_counts(labels(self.train), None, self.c)
        valid_counts = None if self.valid is None else label_counts(labels(self.valid), None, self.c)
        return DataReport(getattr(self, "task", None), size(self.train),
                          None if self.valid is None else size(self.valid), classes if train_counts else None,
                          train_counts, valid_counts)

    def __getitem__(self, i: int) -> Optional[Iterable]:
        return (self.train, self.valid)[i]

    def __repr__(self) -> str:
        def size(dl):
            try:
                return len(dl)
            except TypeError:
                return "?"
        return f"DataLoaders(train: {size(self.train)} batches, valid: {size(self.valid)} batches, c={self.c})"

    @classmethod
    def from_dsets(cls, train_ds: Dataset, valid_ds: Optional[Dataset] = None, bs: Optional[int] = None, shuffle: bool = True,
                   num_workers: int = 0, vocab: Optional[Sequence[str]] = None, c: Optional[int] = None,
                   seed: Optional[int] = None, pin_memory: Optional[bool] = None, item_seeds: bool = False,
                   sample_weights: Optional[torch.Tensor] = None, **kwargs: Any) -> "DataLoaders":
        """Wrap two torch Datasets in DataLoaders (the training one shuffled, the last partial batch dropped
        when there is more than one batch, as fastai does). `bs=None`: `default_batch_size(len(train_ds))`,
        64 unless the training set is too small for 16 batches of 64; validation batches are twice as big.

        `seed`: the training order comes from a generator seeded with it, and each loader seeds its worker
        processes from a generator of its own, so neither moves the other nor torch's global generator (a
        checkpoint restores them; docs/reproducibility.md). `item_seeds` (with `seed` and `shuffle`): the
        training dataset takes `(index, epoch_seed)` keys from a `seeds.EpochSeededSampler` and seeds its
        random augmentation from them, the same with any number of workers. `sample_weights` (one per training
        item): instead of a shuffle, each epoch draws `len(train_ds)` items with replacement, item i with
        probability `sample_weights[i] / sum` (torch's `WeightedRandomSampler`), from the same seeded generator
        (`data.sampling.balance_weights` gives weights that balance the classes)."""
        if bs is None:
            bs = default_batch_size(len(train_ds))  # type: ignore[arg-type]
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        drop_last = len(train_ds) > bs  # type: ignore[arg-type]
        n_train = len(train_ds)  # type: ignore[arg-type]
        if sample_weights is not None and len(sample_weights) != n_train:
            raise ValueError(f"{len(sample_weights)} sample weights for {n_train} training items: give one weight "
                             "per item")
        train_order: dict[str, Any] = {"shuffle": shuffle}
        train_workers = valid_workers = None
        if seed is not None:
            order = torch.Generator().manual_seed(seed)
            if sample_weights is not None:
                train_order = {"sampler": EpochSeededWeightedSampler(sample_weights, order) if item_seeds
                               else WeightedRandomSampler(sample_weights, len(sample_weights), generator=order)}
            elif shuffle:
                train_order = {"sampler": EpochSeededSampler(train_ds, order) if item_seeds
                               else RandomSampler(train_ds, generator=order)}
            train_workers = torch.Generator().manual_seed(seed_for(seed, 1))
            valid_workers = torch.Generator().manual_seed(seed_for(seed, 2))
        elif sample_weights is not None:
            train_order = {"sampler": WeightedRandomSampler(sample_weights, len(sample_weights))}
        train = DataLoader(train_ds, batch_size=bs, drop_last=drop_last, num_workers=num_workers,
                           generator=train_workers, pin_memory=pin_memory, **train_order, **kwargs)
        valid = None
        if valid_ds is not None:
            valid = DataLoader(valid_ds, batch_size=bs * 2, shuffle=False, num_workers=num_workers,
                               generator=valid_workers, pin_memory=pin_memory, **kwargs)
        return cls(train, valid, vocab=vocab, c=c)

    @classmethod
    def from_tensors(cls, x_train: torch.Tensor, y_train: torch.Tensor, x_valid: Optional[torch.Tensor] = None,
                     y_valid: Optional[torch.Tensor] = None, **kwargs: Any) -> "DataLoaders":
        """DataLoaders over in-memory tensors. Without `c`/`vocab`, `c` is inferred from integer targets and checked
        (`validation.check_classes`: a single training class, a class only in validation or a gap in the class
        indices is refused). With them, the labels are left to the learner's check of each first pass
        (`label_check`), which allows a loss's `ignore_index`."""
        if len(x_train) != len(y_train):
            raise ValueError(f"x_train has {len(x_train)} items but y_train has {len(y_train)}: they must match")
        valid_ds = None
        if x_valid is not None:
            if y_valid is None or len(x_valid) != len(y_valid):
                raise ValueError("x_valid and y_valid must both be given and have the same length")
            valid_ds = TensorDataset(x_valid, y_valid)
        notes: list[str] = []
        if kwargs.get("c") is None and kwargs.get("vocab") is None and not y_train.is_floating_point():
            kwargs["c"] = check_classes(y_train, y_valid, notes=notes,
                                        fix="pass c= (the number of classes) or vocab= (their names)")
        dls = cls.from_dsets(TensorDataset(x_train, y_train), valid_ds, **kwargs)
        dls.report = dls.counted_report()
        dls.report.notes = notes
        warn_classes_without_validation(dls.report)
        return dls


def decode_label(vocab: Optional[Sequence[str]], index: int) -> Any:
    """The class name of output `index` when the vocab names it, else the index itself (e.g. an embedding)."""
    return vocab[index] if vocab and index < len(vocab) else index


MAX_DEFAULT_BS, MIN_DEFAULT_BS, MIN_BATCHES_PER_EPOCH = 64, 8, 16


def default_batch_size(n_items: int) -> int:
    """The training batch size used when none is given: 64 (fastai's), halved (down to 8) until an epoch of
    `n_items` has at least 16 batches. 500 images get batches of 16; 1,024 or more get 64.

    Why: with a few hundred images and batches of 64, `fine_tune(5)` is too few optimizer steps for the body
    to adapt (the measurements are in docs/auto-lr.md).
    """
    bs = MAX_DEFAULT_BS
    while bs > MIN_DEFAULT_BS and n_items < MIN_BATCHES_PER_EPOCH * bs:
        bs //= 2
    return bs


def whole_batch(batch: Any) -> Any:
    """`collate_fn` for datasets whose `__getitems__` already returns a whole batch."""
    return batch


def loader_generators(dl: Any) -> list[torch.Generator]:
    """The torch Generators a DataLoader draws its shuffling from (its own and its sampler's)."""
    candidates = [getattr(dl, "generator", None), getattr(getattr(dl, "sampler", None), "generator", None),
                  getattr(getattr(getattr(dl, "batch_sampler", None), "sampler", None), "generator", None)]
    found: dict[int, torch.Generator] = {}
    for g in candidates:
        if isinstance(g, torch.Generator):
            found[id(g)] = g
    return list(found.values())


@contextlib.contextmanager
def seeded_loader(dl: Any, seed: int) -> Iterator[None]:
    """Iterate `dl` in the order `seed` gives, then put its generators back as they were."""
    saved = [(g, g.get_state()) for g in loader_generators(dl)]
    try:
        for g, _ in saved:
            g.manual_seed(seed)
        yield
    finally:
        for g, state in saved:
            g.set_state(state)
