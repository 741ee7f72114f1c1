"""Seeds: `set_seed` for the generators a run draws from, and training data whose random augmentation is the
same with 0 or N loader workers, in any process, and after a resume (docs/reproducibility.md).

Augmentation draws from the global generators of the process that loads an item (timm's random resized crop
from Python's `random`, flips from torch's), so workers, their number and their lifetime would decide it. Here
it does not: the training loader's sampler (`EpochSeededSampler`) draws one seed per epoch from its own
generator, which `seed=` seeds and checkpoints restore, and hands the dataset `(index, epoch_seed)` keys; the
dataset computes each item (a batch, for whole-batch datasets) under `seeded(seed_for(epoch_seed, index))`,
whichever process it runs in, and puts that process's generators back afterwards. A resumed epoch therefore
redraws exactly the augmentation of the uninterrupted run, with persistent workers too.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

SEED_BITS = 63
MASK64 = 2**64 - 1


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (the CPU and every GPU): the model's initial
    weights, dropout and anything else drawn in the main process. Data built with `seed=` draws its order and
    augmentation from its own generators (see the module docstring)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_for(*numbers: int) -> int:
    """A 63-bit seed mixed from `numbers` (splitmix64's mixing function over each in turn): nearby inputs give
    unrelated seeds, in about a microsecond."""
    x = 0
    for n in numbers:
        x = ((x ^ (n & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        x ^= x >> 31
    return x >> (64 - SEED_BITS)


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: Optional[int] = None) -> Iterator[None]:
    """Run the block on a fork of torch's global generators (the CPU's, and `device`'s when it is a GPU),
    seeded with `seed` when given; their states are put back afterwards. The one way the library draws random
    numbers that must not move the user's stream (a choice that depends on the data only, a restore)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run the block with Python's `random` and torch's CPU generator seeded from `seed`, then put their states
    back; the generators image transforms draw from (timm's and torchvision's). NumPy's global generator and
    the GPUs' are not touched (putting NumPy's state back costs more than loading a small image). `None`: run
    the block as it is."""
    if seed is None:
        yield
        return
    saved = random.getstate(), torch.get_rng_state()
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        torch.set_rng_state(saved[1])


class EpochSeededSampler(RandomSampler):
    """A `RandomSampler` (without replacement, shuffled by `generator`) whose keys carry the epoch's seed:
    each epoch first draws `epoch_seed` from `generator`, then yields `(index, epoch_seed)` for every index of
    the shuffled order. Datasets that take such keys (`item_key`, `batch_keys`) seed each item from them."""

    def __init__(self, data_source: Any, generator: torch.Generator):
        super().__init__(data_source, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        for index in super().__iter__():
            yield index, epoch_seed


class EpochSeededWeightedSampler(WeightedRandomSampler):
    """A `WeightedRandomSampler` (`len(weights)` draws with replacement from `generator`) whose keys carry the
    epoch's seed, as `EpochSeededSampler`'s do: each epoch first draws `epoch_seed`, then the items."""

    def __init__(self, weights: torch.Tensor, generator: torch.Generator):
        super().__init__(weights, len(weights), replacement=True, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        for index in super().__iter__():
            yield index, epoch_seed


def item_key(key: Any) -> tuple[int, Optional[int]]:
    """`(index, seed)` for a dataset key: a plain index has no seed; `(index, epoch_seed)` from
    `EpochSeededSampler` gives `seed_for(epoch_seed, index)`."""
    if isinstance(key, tuple):
        index, epoch_seed = key
        return int(index), seed_for(epoch_seed, index)
    return int(key), None


def batch_keys(keys: Sequence[Any]) -> tuple[list[int], Optional[int]]:
    """The indices of a batch of keys and one seed for the whole batch (from its first key), for datasets
    that build a batch at once."""
    pairs = [item_key(k) for k in keys]
    return [i for i, _ in pairs], (pairs[0][1] if pairs else None)


def resume_warning(train_dl: Any) -> Optional[str]:
    """Why resuming a fit on `train_dl` cannot redraw exactly what the interrupted run drew (None when it can):
    persistent worker processes keep a random state no checkpoint holds, unless items are seeded by key."""
    if not (getattr(train_dl, "num_workers", 0) and getattr(train_dl, "persistent_workers", False)):
        return None
    if isinstance(getattr(train_dl, "sampler", None), (EpochSeededSampler, EpochSeededWeightedSampler)):
        return None
    return ("the training DataLoader keeps persistent worker processes, whose random state no checkpoint holds: "
            "random augmentation drawn in them will not be exactly the interrupted run's. For an exact resume, "
            "build the data with ImageDataLoaders (each item seeded from the epoch and its index), or use "
            "num_workers=0 or persistent_workers=False")
