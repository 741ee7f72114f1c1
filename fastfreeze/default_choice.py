"""The default `fine_tune` of a classifier chooses its recipe from the training set (docs/few-shot.md).

How hard a pretrained body may be trained depends on how far the images are from its pretraining data: on
photographs a probe of the frozen features or fastai's gentle recipe wins, and training the late stages at
a high lr distorts the features the task needs; on digits or clothing silhouettes the stage-wise recipe at
the 'auto' lr wins by many points. So when `fine_tune` chooses for itself (`base_lr='auto'`, no strategy) on
a single-label classifier with a body and a head (`TransferModel`, cross-entropy loss), it chooses among

- `'probe'`: the head fitted on cached body features (`linear_probe.fit_probe`); the body is not trained;
- `'gentle'`: fastai's recipe as fastai runs it on a timm model: base_lr 2e-3, the whole body as one group
  at base_lr/2/lr_mult (`strategy='gentle'`);
- `'stagewise'`: fastai's recipe over the timm stage groups at the 'auto' lr (`slice(lr/2/lr_mult, lr/2)`).

`choose='by_size'` (the rule until the comparison below is measured to win): the probe below
`MIN_PER_CLASS_TO_FINE_TUNE` training images per class, the stage-wise recipe from there.

`choose='held_out'`: below `MIN_PER_CLASS_TO_FINE_TUNE` images per class the probe, without training
anything (fine-tuning has not beaten it there on any data set measured). From there, a seeded, stratified
`HOLDOUT_FRACTION` of (a sample of up to `MAX_COMPARE_ITEMS`) training items is held out, and:

1. the stage-wise recipe runs in full on the other items, its images resized by `PROXY_SCALE` (a quarter of
   the pixels); so is a probe fitted on features of the resized images. When the stage-wise run's held-out
   accuracy comes within `STAGEWISE_MARGIN` of that probe's, or beats it, the stage-wise recipe wins and
   runs on the whole training set at full size (the same weights as `fine_tune(base_lr=<auto>)`);
2. otherwise the gentle recipe runs in full, at full size, on the other items, and is kept when it beats,
   on the held-out items, the probe fitted on those items' full-size features (ties broken by cross-entropy);
   else the probe is fitted on all the cached features and kept.

Step 1 trains on resized images because a run at full size would cost as much as the final run; the margin
favours the stage-wise recipe, which the proxy handicaps more (fewer pixels and 80% of the items). The
gentle recipe, when it wins, is the model trained on the items not held out (so it saw
1 - HOLDOUT_FRACTION of them): retraining it on all would cost another run. The learner and the global RNG
state come out of step 1 exactly as they went in. It prints what it compared, chose and what it cost, and
records it in `learn.fine_tune_choice` (a `FineTuneChoice`). The validation set is never read.
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

from .auto_lr import choose_base_lr, training_features
from .body import TransferModel
from .callback import Callback
from .divergence import DivergenceGuard
from .feature_cache import body_features
from .image_data import split_indices
from .linear_probe import PROBE_STEPS, fit_head, fit_probe, split_fixed_prefix
from .loop import BaseLearner
from .lr_finder import everything_restored
from .ranks import broadcast_object
from .recorder import Recorder
from .schedule import fit_one_cycle
from .seeds import EpochSeededSampler
from .strategies import Discriminative, FastaiFineTune, Gentle, KeepProbe, Strategy
from .state import to_cpu_copy
from .tasks import SINGLE_LABEL, task_of

CANDIDATES = ("probe", "gentle", "stagewise")
# how the default chooses: 'by_size' (the default) or 'held_out' (the comparison; see the module docstring)
CHOOSERS = ("by_size", "held_out")
# below this many training images per class: the probe, whichever chooser
MIN_PER_CLASS_TO_FINE_TUNE = 25
HOLDOUT_FRACTION = 0.2
# at most this many training items are sampled for the comparison (held out or trained on)
MAX_COMPARE_ITEMS = 2048
# step 1's images are resized by this factor (a quarter of the pixels)
PROXY_SCALE = 0.5
# step 1: the stage-wise recipe wins when its held-out accuracy is at least the probe's minus this
STAGEWISE_MARGIN = 0.02
# fastai's default base_lr, the 'gentle' recipe's
GENTLE_BASE_LR = 2e-3


@dataclass
class FineTuneChoice:
    """What the default `fine_tune` decided.

    `recipe`: 'probe' (the head fitted on cached body features, the body untouched, no epoch run), 'gentle' or
    'stagewise' (see the module docstring); `base_lr` the lr that recipe ran at; `reason` why.
    `scores` / `losses`: held-out accuracy / cross-entropy of what was compared (empty when it decided without
    comparing): 'probe_small' and 'stagewise_small' (step 1, resized images), 'probe' and 'gentle' (step 2, when
    it ran); `holdout_items` how many training items were held out; `trained_items` how many the kept model
    was trained on (all of them, except for a gentle recipe kept from step 2); `seconds` the time choosing
    took (the comparison and the probe fit, not the 'auto' lr sweep, which `learn.auto_lr` times)."""
    recipe: str
    base_lr: float
    reason: str
    n_items: int
    n_classes: int
    scores: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    holdout_items: int = 0
    trained_items: int = 0
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
    if not isinstance(learn.model, TransferModel):
        return f"the model is a {type(learn.model).__name__}, not a TransferModel (body + head)"
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
    stage-wise recipe, `KeepProbe()` when the probe (already fitted into the model) or a gentle run of the
    comparison (already in the model) is the result. When the choice does not apply (`probe_blocker`, targets
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
    choice = FineTuneChoice("probe", auto_lr, "", n_items, n_classes, trained_items=n_items)
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
    choice.base_lr = GENTLE_BASE_LR if choice.recipe == "gentle" else auto_lr
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


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Images `x` (N, C, H, W) resized by `scale` (bilinear, antialiased; unchanged at 1)."""
    if scale == 1:
        return x
    return nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)


class Downscale(Callback):
    """Trains on the batches' images resized by `scale`: a run costs about `scale**2` of a full-size one."""

    def __init__(self, scale: float):
        self.scale = scale

    def before_batch(self) -> None:
        self.learn.xb = (downscale(self.learn.xb[0], self.scale), *self.learn.xb[1:])


class ScaledLoader:
    """`loader`'s batches with their images resized by `scale`."""

    def __init__(self, loader: DataLoader, scale: float):
        self.loader, self.dataset, self.scale = loader, loader.dataset, scale

    def __iter__(self) -> Any:
        for x, *rest in self.loader:
            yield (downscale(x, self.scale), *rest)


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
def held_out_score(learn: BaseLearner, loader: DataLoader, scale: float = 1.0) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the learner's model over `loader`, in eval mode, on images resized
    by `scale`."""
    def predict(xb: tuple) -> torch.Tensor:
        with learn.autocast():
            return learn.model(downscale(xb[0], scale), *xb[1:]).float()
    logits, targets = learn.get_preds(dl=loader, predict_batch=predict)
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


def probe_score(learn: BaseLearner, data: HeldOut, scale: float) -> tuple[float, float]:
    """Held-out (accuracy, loss) of a probe of the head fitted on the body's features of the fitted items
    resized by `scale` (`fit_head`, as `fit_probe` fits it), the learner put back exactly."""
    feats, targs = body_features(learn, ScaledLoader(data.fitted_in_order, scale), storage="cpu")
    with everything_restored(learn):
        prefix, rest = split_fixed_prefix(learn.model.head)
        with torch.no_grad():
            pooled = prefix(feats.to(learn.device).float())
        fit_head(rest, pooled, targs.to(learn.device), learn.loss_func, wd=learn.wd)
        return held_out_score(learn, data.holdout, scale)


def run_recipe(learn: BaseLearner, data: HeldOut, base_lr: float, strategy: Strategy, epochs: int,
               disc: Discriminative, pct_start: float, div: float, scale: float) -> tuple[float, float]:
    """Held-out (accuracy, loss) after the phases of `strategy` at `base_lr` over the fitted items, images
    resized by `scale`, with the learner's Recorder and DivergenceGuard only (no file-writing callback runs).
    The model is left as trained; the learner's loaders are put back."""
    dls = learn.dls
    learn.dls = copy.copy(dls)
    learn.dls.train, learn.dls.valid = data.fitted, None
    try:
        with only_core_callbacks(learn):
            for phase in strategy.phases(learn, epochs, base_lr, disc):
                learn.freeze_to(phase.freeze_to)
                fit_one_cycle(learn, phase.epochs, phase.lr, pct_start=pct_start if phase.pct_start is None
                              else phase.pct_start, div=div if phase.div is None else phase.div,
                              phase=phase.label, cbs=[Downscale(scale)] if scale != 1 else None)
    finally:
        learn.dls = dls
    return held_out_score(learn, data.holdout, scale)


def compare(learn: BaseLearner, choice: FineTuneChoice, epochs: int, freeze_epochs: int, disc: Discriminative,
            auto_lr: float, pct_start: float, div: float) -> None:
    """Steps 1 and 2 of the module docstring: sets `choice`'s recipe, scores, trained items and reason. With
    'gentle' the model is the one step 2 trained; otherwise the learner is exactly as it went in."""
    scores: dict[str, tuple[float, float]] = {}
    with torch.random.fork_rng(devices=[learn.device] if learn.device.type == "cuda" else []):
        torch.manual_seed(0)
        data = held_out_data(learn)
        scores["probe_small"] = probe_score(learn, data, PROXY_SCALE)
        with everything_restored(learn):
            scores["stagewise_small"] = run_recipe(learn, data, auto_lr, FastaiFineTune(freeze_epochs), epochs, disc,
                                                   pct_start, div, PROXY_SCALE)
        stagewise = scores["stagewise_small"][0] >= scores["probe_small"][0] - STAGEWISE_MARGIN
        if not stagewise:
            scores["probe"] = probe_score(learn, data, 1.0)
            with everything_restored(learn):
                scores["gentle"] = run_recipe(learn, data, GENTLE_BASE_LR, Gentle(freeze_epochs), epochs, disc,
                                              pct_start, div, 1.0)
                gentle_wins = (scores["gentle"][0], -scores["gentle"][1]) > (scores["probe"][0], -scores["probe"][1])
                kept = {"model": to_cpu_copy(learn.model.state_dict()),
                        "recorder": to_cpu_copy(learn.recorder.state_dict())} if gentle_wins else None
            if kept is not None:  # the gentle run is the result: its weights and its history
                learn.model.load_state_dict(kept["model"])
                learn.recorder.load_state_dict(kept["recorder"])
                learn.freeze_to(0)
    choice.scores = {k: acc for k, (acc, _) in scores.items()}
    choice.losses = {k: loss for k, (_, loss) in scores.items()}
    choice.holdout_items = data.holdout_items
    if stagewise:
        choice.recipe, choice.trained_items = "stagewise", choice.n_items
    elif kept is not None:
        choice.recipe, choice.trained_items = "gentle", data.fitted_items
    else:
        choice.recipe, choice.trained_items = "probe", choice.n_items
    step1 = (f"on {data.holdout_items} held-out training images, at {PROXY_SCALE:g}x size, the stage-wise "
             f"recipe (trained on the other {data.fitted_items}) scored {choice.scores['stagewise_small']:.3f} and "
             f"a probe {choice.scores['probe_small']:.3f}")
    if stagewise:
        choice.reason = (f"{step1}: within {STAGEWISE_MARGIN:g} or better, so fastai's recipe over the stage groups "
                         f"at the 'auto' base_lr {auto_lr:.2e} on all the training images")
        return
    step2 = (f"{step1}: more than {STAGEWISE_MARGIN:g} below; at full size the gentle recipe scored "
             f"{choice.scores['gentle']:.3f} and a probe {choice.scores['probe']:.3f}")
    if choice.recipe == "gentle":
        choice.reason = (f"{step2}, so the gentle recipe (fastai's, the body as one group, base_lr "
                         f"{GENTLE_BASE_LR:g}) as trained on those {data.fitted_items} images")
    else:
        choice.reason = (f"{step2}, so the head is fitted as a probe on the cached body features and the body is "
                         "not trained")
