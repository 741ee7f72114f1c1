"""The default `fine_tune` of a classifier chooses its recipe from the training set (docs/few-shot.md).

How hard a pretrained body may be trained depends on how far the images are from its pretraining data: on
photographs a probe of the frozen features wins, and training the late stages at a high lr distorts the
features the task needs; on digits or clothing silhouettes the stage-wise recipe at the 'auto' lr wins by
many points. So when `fine_tune` chooses for itself (`base_lr='auto'`, no strategy) on a single-label
classifier with a body and a head (`TransferModel`, cross-entropy loss), it chooses between

- `'probe'`: the head fitted on cached body features (`linear_probe.fit_probe`); the body is not trained;
- `'stagewise'`: fastai's recipe over the timm stage groups at the 'auto' lr (`slice(lr/2/lr_mult, lr/2)`).

`choose='by_size'`: the probe below `MIN_PER_CLASS_TO_FINE_TUNE` training images per class, the stage-wise
recipe from there. `choose='held_out'`: below `MIN_PER_CLASS_TO_FINE_TUNE` images per class the probe too,
without training anything (fine-tuning has not beaten it there on any data set measured, and a held-out
slice of a few images per class could not tell them apart). From there, a seeded, stratified
`HOLDOUT_FRACTION` of (a sample of up to `MAX_COMPARE_ITEMS`) training items is held out; a probe is fitted
on the body features of the others, and a shortened stage-wise run (one frozen epoch, then as many unfrozen
epochs as `PROXY_SHARE` of a plain fine_tune pays for) trains on them. When the stage-wise run's held-out
accuracy is at least the probe's minus `STAGEWISE_MARGIN` the stage-wise recipe runs in full on all the
training images (the same weights as `fine_tune(base_lr=<auto>)`: the comparison leaves the learner, its
loaders and the global RNG state exactly as they were); otherwise the probe is fitted on all the cached
features and kept. The margin favours the stage-wise recipe because its shortened run on fewer images
underestimates the full one. It prints what it compared, chose and what it cost, and records it in
`learn.fine_tune_choice` (a `FineTuneChoice`). The validation set is never read.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..core.divergence import DivergenceGuard
from ..core.loop import BaseLearner
from ..core.recorder import Recorder
from ..core.tasks import SINGLE_LABEL, task_of
from ..data.image_data import split_indices
from ..models.body import transfer_model_problem
from ..utils.ranks import broadcast_object
from ..utils.seeds import EpochSeededSampler, forked_rng
from .auto_lr import choose_base_lr, training_features
from .feature_cache import body_features
from .linear_probe import PROBE_STEPS, fit_head, fit_probe, split_fixed_prefix
from .lr_finder import everything_restored
from .schedule import fit_one_cycle
from .strategies import Discriminative, FastaiFineTune, KeepProbe, Strategy

CANDIDATES = ("probe", "stagewise")
# how the default chooses: 'by_size' (the default) or 'held_out' (the comparison; see the module docstring)
CHOOSERS = ("by_size", "held_out")
# below this many training images per class: the probe, whichever chooser
MIN_PER_CLASS_TO_FINE_TUNE = 25
HOLDOUT_FRACTION = 0.2
# at most this many training items are sampled for the comparison (held out or trained on)
MAX_COMPARE_ITEMS = 2048
# the shortened stage-wise run passes over at most this share of the images a plain fine_tune passes over
PROXY_SHARE = 0.4
# the stage-wise recipe wins when its shortened run's held-out accuracy is at least the probe's minus this
STAGEWISE_MARGIN = 0.05


@dataclass
class FineTuneChoice:
    """What the default `fine_tune` decided.

    `recipe`: 'probe' (the head fitted on cached body features, the body untouched, no epoch run) or
    'stagewise' (see the module docstring); `base_lr` the 'auto' lr; `reason` why. `scores` / `losses`: the
    held-out accuracy / cross-entropy of the probe and of the shortened stage-wise run (empty when it decided
    without comparing); `holdout_items` how many training items were held out; `seconds` the time choosing
    took (the comparison and the probe fit, not the 'auto' lr sweep, which `learn.auto_lr` times)."""
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


def subset_loader(train: DataLoader, positions: Sequence[int], shuffle: bool, seed: int = 0) -> DataLoader:
    """A loader over the training items at `positions`, batched, collated and augmented as `train` is;
    shuffled from its own generator seeded with `seed` (with epoch seeds when `train` uses them)."""
    subset = ItemSubset(train.dataset, positions)
    bs = train.batch_size or 1
    order: dict[str, Any] = {"shuffle": False}
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        epoch_seeds = isinstance(train.sampler, EpochSeededSampler)
        order = {"sampler": EpochSeededSampler(subset, generator) if epoch_seeds
                 else RandomSampler(subset, generator=generator)}
    return DataLoader(subset, batch_size=bs, drop_last=shuffle and len(subset) > bs, collate_fn=train.collate_fn,
                      num_workers=train.num_workers, **order)


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


def choose_fine_tune(learn: BaseLearner, epochs: int, freeze_epochs: int, disc: Discriminative,
                     pct_start: float = 0.3, div: float = 5.0, verbose: bool = True,
                     accum_steps: int = 1, choose: str = "by_size") -> tuple[float, Optional[Strategy]]:
    """The default `fine_tune`'s choice (see the module docstring): `(base_lr, strategy)` to run: `None` for the
    stage-wise recipe, `KeepProbe()` when the probe (already fitted into the model) is the result. When the choice does not apply (`probe_blocker`, targets
    that are not class indices) the stage-wise recipe at the 'auto' lr, with `learn.fine_tune_choice` None."""
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
    blocker = comparison_blocker(learn)
    if choose == "held_out" and not keep:
        if blocker is None:
            compare(learn, choice, epochs, freeze_epochs, disc, auto_lr, pct_start, div)
        else:
            choice.reason = f"{blocker}, so the recipes are not compared: {choice.reason}"
    choice.recipe = broadcast_object(choice.recipe)  # every rank of a DDP run follows rank 0
    if choice.recipe == "probe":
        fit_probe(learn, feats, targs)
    choice.base_lr = auto_lr
    choice.seconds = time.perf_counter() - start
    learn.fine_tune_choice = choice
    if verbose:
        done = f"{choice.seconds:.1f} s"
        if choice.recipe == "probe":
            done = (f"{PROBE_STEPS} full-batch steps over {len(targs)} cached items, {done}; to fine-tune anyway, "
                    f"pass base_lr=, e.g. {auto_lr:.2e}")
        print(f"fine_tune: {choice.reason} ({done}).")
    return choice.base_lr, (None if choice.recipe == "stagewise" else KeepProbe())


def held_out_split(targets: torch.Tensor, positions: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fitted positions, held-out positions): a stratified, seeded `HOLDOUT_FRACTION` of each class of
    `positions` held out (every class keeps an item on each side when it has two)."""
    fit_idx, held_idx = split_indices(targets.cpu().numpy(), HOLDOUT_FRACTION, seed=seed)
    return positions[fit_idx], positions[held_idx]


class only_core_callbacks:
    """Within: only the learner's Recorder and DivergenceGuard run (no progress bar, logger or checkpoint)."""

    def __init__(self, learn: BaseLearner):
        self.learn = learn
        self.removed = [cb for cb in learn.cbs if not isinstance(cb, (Recorder, DivergenceGuard))]

    def __enter__(self) -> None:
        self.learn.remove_cbs(self.removed)

    def __exit__(self, *exc: Any) -> None:
        self.learn.add_cbs(self.removed)


@torch.no_grad()
def held_out_score(learn: BaseLearner, loader: DataLoader) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the learner's model over `loader`, in eval mode."""
    logits, targets = learn.get_preds(dl=loader, activation=False)
    loss = nn.functional.cross_entropy(logits.float(), targets).item()
    return (logits.argmax(dim=1) == targets).float().mean().item(), loss


@dataclass
class HeldOut:
    """The comparison's data: loaders over the held-out training items and over the others (the fitted
    items, shuffled; `fitted_in_order` unshuffled, for their features)."""
    holdout: DataLoader
    fitted: DataLoader
    fitted_in_order: DataLoader
    holdout_items: int
    fitted_items: int


def held_out_data(learn: BaseLearner) -> HeldOut:
    """Sample up to `MAX_COMPARE_ITEMS` training items (seeded) and hold out a stratified `HOLDOUT_FRACTION`
    of them (their targets are read through the loader, which decodes the images but runs no model)."""
    train = learn.dls.train
    sample = torch.randperm(len(train.dataset), generator=torch.Generator().manual_seed(0))
    sample = sample[:MAX_COMPARE_ITEMS].sort().values.numpy()
    targs = torch.cat([batch[1] for batch in subset_loader(train, sample, shuffle=False)])
    fitted_pos, held_pos = held_out_split(targs, sample)
    return HeldOut(holdout=subset_loader(train, held_pos, shuffle=False),
                   fitted=subset_loader(train, fitted_pos, shuffle=True),
                   fitted_in_order=subset_loader(train, fitted_pos, shuffle=False),
                   holdout_items=len(held_pos), fitted_items=len(fitted_pos))


def probe_score(learn: BaseLearner, data: HeldOut) -> tuple[float, float]:
    """Held-out (accuracy, loss) of a probe of the head fitted on the body's features of the fitted items
    (`fit_head`, as `fit_probe` fits it), the learner put back exactly."""
    feats, targs = body_features(learn, data.fitted_in_order, storage="cpu")
    with everything_restored(learn):
        prefix, rest = split_fixed_prefix(learn.model.head)
        with torch.no_grad():
            pooled = prefix(feats.to(learn.device).float())
        fit_head(rest, pooled, targs.to(learn.device), learn.loss_func, wd=learn.wd)
        return held_out_score(learn, data.holdout)


def run_recipe(learn: BaseLearner, data: HeldOut, base_lr: float, strategy: Strategy, epochs: int,
               disc: Discriminative, pct_start: float, div: float) -> tuple[float, float]:
    """Held-out (accuracy, loss) after the phases of `strategy` at `base_lr` over the fitted items, with the
    learner's Recorder and DivergenceGuard only (no file-writing callback runs). The model is left as
    trained; the learner's loaders are put back."""
    dls = learn.dls
    learn.dls = copy.copy(dls)
    learn.dls.train, learn.dls.valid = data.fitted, None
    try:
        with only_core_callbacks(learn):
            for phase in strategy.phases(learn, epochs, base_lr, disc):
                learn.freeze_to(phase.freeze_to)
                fit_one_cycle(learn, phase.epochs, phase.lr, pct_start=pct_start if phase.pct_start is None
                              else phase.pct_start, div=div if phase.div is None else phase.div,
                              phase=f"choosing: {phase.label}")
    finally:
        learn.dls = dls
    return held_out_score(learn, data.holdout)


def proxy_plan(n_items: int, epochs: int, freeze_epochs: int) -> tuple[int, int]:
    """(frozen, unfrozen) epochs of the stage-wise proxy over the (1 - HOLDOUT_FRACTION) fitted items: as many
    unfrozen epochs (at least 1, at most `epochs`) as `PROXY_SHARE` of a plain fine_tune's passes over images,
    `(freeze_epochs + epochs) * n_items`, pays for after the frozen epoch (one at most)."""
    frozen = min(freeze_epochs, 1)
    passes_per_epoch = n_items * (1 - HOLDOUT_FRACTION)
    affordable = int(PROXY_SHARE * (freeze_epochs + epochs) * n_items / passes_per_epoch + 1e-9) - frozen
    return frozen, max(1, min(epochs, affordable))


def compare(learn: BaseLearner, choice: FineTuneChoice, epochs: int, freeze_epochs: int, disc: Discriminative,
            auto_lr: float, pct_start: float, div: float) -> None:
    """Score the probe and a shortened stage-wise run on a held-out slice of the training set (the module
    docstring); sets `choice`'s recipe, scores and reason. The learner, its loaders and the global RNG state
    come out exactly as they went in."""
    frozen, unfrozen = proxy_plan(choice.n_items, epochs, freeze_epochs)
    with forked_rng(learn.device, seed=0):
        data = held_out_data(learn)
        probe = probe_score(learn, data)
        with everything_restored(learn):
            stagewise = run_recipe(learn, data, auto_lr, FastaiFineTune(frozen), unfrozen, disc, pct_start, div)
    choice.scores = {"probe": probe[0], "stagewise": stagewise[0]}
    choice.losses = {"probe": probe[1], "stagewise": stagewise[1]}
    choice.holdout_items = data.holdout_items
    wins = stagewise[0] >= probe[0] - STAGEWISE_MARGIN
    choice.recipe = "stagewise" if wins else "probe"
    measured = (f"on {data.holdout_items} held-out training images the probe scored {probe[0]:.3f} and the "
                f"stage-wise recipe {stagewise[0]:.3f} ({frozen} frozen + {unfrozen} unfrozen epochs over the other "
                f"{data.fitted_items})")
    if wins:
        choice.reason = (f"{measured}: within {STAGEWISE_MARGIN:g} of the probe or better, so fastai's recipe over "
                         f"the stage groups at the 'auto' base_lr {auto_lr:.2e} on all the training images")
    else:
        choice.reason = (f"{measured}: more than {STAGEWISE_MARGIN:g} below the probe, so the head is fitted as a "
                         "probe on the cached body features and the body is not trained")
