"""The default `fine_tune` of a classifier chooses its recipe from the training set (docs/few-shot.md).

How hard a pretrained body may be trained depends on how far the images are from its pretraining data: on
photographs the pretrained features already separate the classes, a probe of them wins, and training the late
stages at a high lr distorts them; on digits or clothing silhouettes the body has to adapt, and the stage-wise
recipe at the 'auto' lr wins by several points. So when `fine_tune` chooses for itself (`base_lr='auto'`, no
strategy) on a single-label classifier with a body and a head (`TransferModel`, cross-entropy loss), it
chooses between

- `'probe'`: the head fitted on cached body features (`linear_probe.fit_probe`); the body is not trained;
- `'stagewise'`: fastai's recipe over the timm stage groups at the 'auto' lr (`slice(lr/2/lr_mult, lr/2)`),
  exactly `fine_tune(base_lr=<the 'auto' value>)`.

`choose='held_out'` (the default): below `MIN_PER_CLASS_TO_FINE_TUNE` training images per class, the probe
(fine-tuning did not beat it there on any data set measured). From there, a seeded, stratified
`HOLDOUT_FRACTION` of (a sample of up to `MAX_COMPARE_ITEMS`) training items is held out and a probe is
fitted on the body's features of the others: when it classifies at least `PROBE_SEPARATES` of the held-out
items, the pretrained features suffice and the probe (refitted on all the cached features) is kept; below,
the stage-wise recipe runs. Nothing is trained to decide: the cost is one forward pass of the frozen body over
the sample and two small probe fits. `choose='by_size'`: the rule before, the probe below
`MIN_PER_CLASS_TO_FINE_TUNE` images per class and the stage-wise recipe from there.

It prints what it measured and chose, and records it in `learn.fine_tune_choice` (a `FineTuneChoice`). The
learner, its loaders and the global RNG state come out of the measurement exactly as they went in, and the
validation set is never read.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..core.loop import BaseLearner
from ..core.tasks import SINGLE_LABEL, task_of
from ..data.image_data import split_indices
from ..models.body import transfer_model_problem
from ..utils.ranks import broadcast_object
from ..utils.seeds import forked_rng
from .auto_lr import choose_base_lr, training_features
from .feature_cache import body_features
from .linear_probe import PROBE_MAX_BATCH, fit_head, fit_probe, probe_steps, split_fixed_prefix
from .lr_finder import everything_restored
from .strategies import KeepProbe, Strategy

CANDIDATES = ("probe", "stagewise")
# how the default chooses: 'held_out' (the default) or 'by_size' (see the module docstring)
CHOOSERS = ("held_out", "by_size")
# below this many training images per class: the probe, whichever chooser
MIN_PER_CLASS_TO_FINE_TUNE = 25
HOLDOUT_FRACTION = 0.2
# at most this many training items are sampled for the comparison (held out or trained on)
MAX_COMPARE_ITEMS = 2048
# the probe is kept when it classifies at least this share of the held-out training images
PROBE_SEPARATES = 0.95


@dataclass
class FineTuneChoice:
    """What the default `fine_tune` decided.

    `recipe`: 'probe' (the head fitted on cached body features, the body untouched, no epoch run) or
    'stagewise' (see the module docstring); `base_lr` the 'auto' lr; `reason` why. `scores` / `losses`: the
    held-out accuracy / cross-entropy of the probe fitted on the other training items (empty when it decided
    without measuring); `holdout_items` how many training items were held out; `seconds` the time choosing
    took (the measurement and the probe fit, not the 'auto' lr sweep, which `learn.auto_lr` times)."""
    recipe: str
    base_lr: float
    reason: str
    n_items: int
    n_classes: int
    scores: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    holdout_items: int = 0
    seconds: float = 0.0

    @property
    def probe_kept(self) -> bool:
        return self.recipe == "probe"

    @property
    def per_class(self) -> float:
        return self.n_items / max(self.n_classes, 1)


def probe_blocker(learn: BaseLearner) -> Optional[str]:
    """Why the choice does not apply to this learner (None when it does): it was measured on single-label
    classifiers with a body and a head trained with cross-entropy only."""
    problem = transfer_model_problem(learn.model)
    if problem is not None:
        return problem
    task = task_of(learn.loss_func, learn.dls)
    if task != SINGLE_LABEL:
        return f"the task is {task}, not single-label classification"
    if not isinstance(learn.loss_func, nn.CrossEntropyLoss):
        return f"the loss is {type(learn.loss_func).__name__}, not cross-entropy"
    return None


def training_set_size(learn: BaseLearner, targs: torch.Tensor) -> tuple[int, int]:
    """(training items, classes): the training dataset's length (else the number of cached items), and the
    vocabulary's length (else `dls.c`, else the number of distinct cached targets)."""
    try:
        n_items = len(learn.dls.train.dataset)
    except (AttributeError, TypeError):
        n_items = len(targs)
    vocab = getattr(learn.dls, "vocab", None)
    c = getattr(learn.dls, "c", None)
    n_classes = len(vocab) if vocab else (int(c) if c else int(torch.unique(targs).numel()))
    return n_items, n_classes


class ItemSubset(Dataset):
    """The items of `dataset` at `positions`, taking the same keys as the dataset (an index, or the
    `(index, epoch_seed)` pairs of `EpochSeededSampler`) and building whole batches with the dataset's
    `__getitems__` when it has one."""

    def __init__(self, dataset: Any, positions: Sequence[int]):
        self.dataset, self.positions = dataset, [int(p) for p in positions]

    def __len__(self) -> int:
        return len(self.positions)

    def _key(self, key: Any) -> Any:
        return (self.positions[key[0]], key[1]) if isinstance(key, tuple) else self.positions[key]

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[self._key(key)]

    def __getitems__(self, keys: Sequence[Any]) -> Any:
        mapped = [self._key(k) for k in keys]
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(mapped)
        return [self.dataset[k] for k in mapped]


def subset_loader(train: DataLoader, positions: Sequence[int]) -> DataLoader:
    """A loader over the training items at `positions`, in that order, batched, collated and augmented as
    `train` is."""
    return DataLoader(ItemSubset(train.dataset, positions), batch_size=train.batch_size or 1, shuffle=False,
                      collate_fn=train.collate_fn, num_workers=train.num_workers)


def comparison_blocker(learn: BaseLearner) -> Optional[str]:
    """Why the candidates cannot be compared on this training data (None when they can): the comparison
    holds out items of a map-style dataset behind a torch DataLoader."""
    train = learn.dls.train
    if not isinstance(train, DataLoader) or not hasattr(train.dataset, "__len__"):
        return "the training data is not a torch DataLoader over a dataset with a length"
    if not hasattr(train.dataset, "__getitem__") or isinstance(train.dataset, torch.utils.data.IterableDataset):
        return "the training dataset is not indexable"
    return None


def decide(n_items: int, n_classes: int) -> tuple[bool, str]:
    """The 'by_size' rule: (keep the probe?, why) for a training set of `n_items` images in `n_classes` classes."""
    per_class = n_items / max(n_classes, 1)
    if per_class < MIN_PER_CLASS_TO_FINE_TUNE:
        return True, (f"{per_class:.3g} training images per class (fewer than {MIN_PER_CLASS_TO_FINE_TUNE}): "
                      "too few to fine-tune the body, which would then lose to a probe on its features; the "
                      "head is fitted as a probe on the cached body features and the body is not trained")
    return False, (f"{per_class:.3g} training images per class (at least {MIN_PER_CLASS_TO_FINE_TUNE}): "
                   "fine-tuning with fastai's recipe over the stage groups at the 'auto' lr")


def choose_fine_tune(learn: BaseLearner, verbose: bool = True, accum_steps: int = 1,
                     choose: str = "held_out") -> tuple[float, Optional[Strategy]]:
    """The default `fine_tune`'s choice (see the module docstring): `(base_lr, strategy)` to run: `None` for the
    stage-wise recipe, `KeepProbe()` when the probe (already fitted into the model) is the result. When the
    choice does not apply (`probe_blocker`, targets that are not class indices) the stage-wise recipe at the
    'auto' lr, with `learn.fine_tune_choice` None."""
    learn.fine_tune_choice = None
    if probe_blocker(learn) is not None:
        return choose_base_lr(learn, verbose=verbose, accum_steps=accum_steps), None
    feats, targs = training_features(learn)
    auto_lr = choose_base_lr(learn, verbose=verbose, accum_steps=accum_steps, features=(feats, targs))
    if targs.ndim != 1 or targs.is_floating_point():
        return auto_lr, None
    start = time.perf_counter()
    n_items, n_classes = training_set_size(learn, targs)
    choice = FineTuneChoice("probe", auto_lr, "", n_items, n_classes)
    keep, choice.reason = decide(n_items, n_classes)
    choice.recipe = "probe" if keep else "stagewise"
    if choose == "held_out" and not keep:
        blocker = comparison_blocker(learn)
        if blocker is None:
            compare(learn, choice, auto_lr)
        else:
            choice.reason = f"{blocker}, so the recipes are not compared: {choice.reason}"
    choice.recipe = broadcast_object(choice.recipe)  # every rank of a DDP run follows rank 0
    if choice.recipe == "probe":
        fit_probe(learn, feats, targs)
    choice.seconds = time.perf_counter() - start
    learn.fine_tune_choice = choice
    if verbose:
        done = f"{choice.seconds:.1f} s"
        if choice.recipe == "probe":
            steps = (f"{probe_steps(len(targs))} full-batch steps" if len(targs) <= PROBE_MAX_BATCH else
                     f"{probe_steps(len(targs))} steps of {PROBE_MAX_BATCH}")
            done = (f"{steps} over {len(targs)} cached items, {done}; to fine-tune anyway, "
                    f"pass base_lr=, e.g. {auto_lr:.2e}")
        print(f"fine_tune: {choice.reason} ({done}).")
    return choice.base_lr, (None if choice.recipe == "stagewise" else KeepProbe())


def held_out_split(targets: torch.Tensor, positions: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fitted positions, held-out positions): a stratified, seeded `HOLDOUT_FRACTION` of each class of
    `positions` held out (every class keeps an item on each side when it has two)."""
    fit_idx, held_idx = split_indices(targets.cpu().numpy(), HOLDOUT_FRACTION, seed=seed)
    return positions[fit_idx], positions[held_idx]


@torch.no_grad()
def held_out_score(learn: BaseLearner, loader: DataLoader) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the learner's model over `loader`, in eval mode."""
    logits, targets = learn.get_preds(dl=loader, activation=False)
    loss = nn.functional.cross_entropy(logits.float(), targets).item()
    return (logits.argmax(dim=1) == targets).float().mean().item(), loss


@dataclass
class HeldOut:
    """The held-out training items and the others (the fitted items), as loaders in dataset order."""
    holdout: DataLoader
    fitted: DataLoader
    holdout_items: int
    fitted_items: int


def held_out_data(learn: BaseLearner) -> HeldOut:
    """Sample up to `MAX_COMPARE_ITEMS` training items (seeded) and hold out a stratified `HOLDOUT_FRACTION`
    of them (their targets are read through the loader, which decodes the images but runs no model)."""
    train = learn.dls.train
    sample = torch.randperm(len(train.dataset), generator=torch.Generator().manual_seed(0))
    sample = sample[:MAX_COMPARE_ITEMS].sort().values.numpy()
    targs = torch.cat([batch[1] for batch in subset_loader(train, sample)])
    fitted_pos, held_pos = held_out_split(targs, sample)
    return HeldOut(holdout=subset_loader(train, held_pos),
                   fitted=subset_loader(train, fitted_pos),
                   holdout_items=len(held_pos), fitted_items=len(fitted_pos))


def probe_score(learn: BaseLearner, data: HeldOut) -> tuple[float, float]:
    """Held-out (accuracy, loss) of a probe of the head fitted on the body's features of the fitted items
    (`fit_head`, as `fit_probe` fits it), the learner put back exactly."""
    feats, targs = body_features(learn, data.fitted, storage="cpu")
    with everything_restored(learn):
        prefix, rest = split_fixed_prefix(learn.model.head)
        with torch.no_grad():
            pooled = prefix(feats.to(learn.device).float())
        fit_head(rest, pooled, targs.to(learn.device), learn.loss_func, wd=learn.wd)
        return held_out_score(learn, data.holdout)


def compare(learn: BaseLearner, choice: FineTuneChoice, auto_lr: float) -> None:
    """Hold out a fifth of the training set and score a probe fitted on the rest (the module docstring); sets
    `choice`'s recipe, scores and reason. The learner, its loaders and the global RNG state come out exactly as
    they went in."""
    with forked_rng(learn.device, seed=0):
        data = held_out_data(learn)
        accuracy, loss = probe_score(learn, data)
    choice.scores, choice.losses, choice.holdout_items = {"probe": accuracy}, {"probe": loss}, data.holdout_items
    measured = (f"a probe fitted on {data.fitted_items} training images classifies {accuracy:.1%} of the other "
                f"{data.holdout_items}")
    if accuracy >= PROBE_SEPARATES:
        choice.recipe = "probe"
        choice.reason = (f"{measured} (at least {PROBE_SEPARATES:.0%}): the pretrained features already separate the "
                         "classes, and training the body would distort them; the head is fitted as a probe on the "
                         "cached body features and the body is not trained")
    else:
        choice.recipe = "stagewise"
        choice.reason = (f"{measured} (less than {PROBE_SEPARATES:.0%}): the body has to adapt, so fastai's recipe "
                         f"over the stage groups at the 'auto' base_lr {auto_lr:.2e}")
