"""The default `fine_tune` of a classifier chooses its recipe from the training set (docs/few-shot.md).

How hard a pretrained body may be trained depends on how far the images are from its pretraining data: on
photographs the pretrained features already separate the classes, a probe of them wins, and training the late
stages at a high lr distorts them; on digits or clothing silhouettes the body has to adapt, and the stage-wise
recipe at the 'auto' lr wins by several points. So when `fine_tune` chooses for itself (`base_lr='auto'`, no
strategy) on a single-label classifier with a body and a head (`TransferModel`, cross-entropy loss), it
chooses between

- `'probe'`: the body is not trained; the head is either fitted as a probe on cached body features
  (`linear_probe.fit_probe`), or holds a logistic regression of the average-pooled features of the
  un-augmented training images, its penalty chosen by cross-validation (`logistic_probe`, written into the
  head by `models.linear_head`);
- `'stagewise'`: fastai's recipe over the timm stage groups at the 'auto' lr (`slice(lr/2/lr_mult, lr/2)`),
  exactly `fine_tune(base_lr=<the 'auto' value>)`.

`choose='held_out'` (the default): below `MIN_PER_CLASS_TO_MEASURE` training images per class, the head probe
(nothing beat it there on any data set measured, and a held-out slice would be a couple of images per class).
From there, a seeded, stratified `HOLDOUT_FRACTION` of (a sample of up to `MAX_COMPARE_ITEMS`) training items
is held out and a head probe is fitted on the body's features of the others: when it classifies at least
`PROBE_SEPARATES` of the held-out items, the pretrained features suffice, and the logistic regression is kept
(the head probe where the head has no shape it can be written into). Below, the body has to adapt: the
stage-wise recipe from `MIN_PER_CLASS_TO_FINE_TUNE` images per class, the head probe under it. Nothing is
trained to decide: the cost is a forward pass of the frozen body over the sample (two when the logistic
regression is kept) and small probe fits. `choose='by_size'`: the rule before, the head probe below
`MIN_PER_CLASS_TO_FINE_TUNE` images per class and the stage-wise recipe from there.

It prints what it measured and chose, and records it in `learn.fine_tune_choice` (a `FineTuneChoice`). The
learner, its loaders and the global RNG state come out of the measurement exactly as they went in, and the
validation set is never read.
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
from torch.utils.data import DataLoader, Dataset

from ..core.loop import BaseLearner
from ..core.tasks import SINGLE_LABEL, task_of
from ..data.eval_view import eval_view
from ..data.image_data import split_indices
from ..models.body import transfer_model_problem
from ..models.linear_head import average_slice, linear_head_layout, write_linear_classifier
from ..utils.ranks import broadcast_object
from ..utils.seeds import forked_rng
from .auto_lr import choose_base_lr, training_features
from .feature_cache import body_features
from .linear_probe import PROBE_MAX_BATCH, fit_head, fit_probe, probe_steps, split_fixed_prefix
from .logistic_probe import FOLDS, fit_logistic_probe
from .lr_finder import everything_restored
from .strategies import KeepProbe, Strategy

# how the default chooses: 'held_out' (the default) or 'by_size' (see the module docstring)
CHOOSERS = ("held_out", "by_size")
# below this many training images per class: a probe, whichever chooser
MIN_PER_CLASS_TO_FINE_TUNE = 25
# from this many training images per class, 'held_out' measures (a fifth holds out 3 images per class)
MIN_PER_CLASS_TO_MEASURE = 15
HOLDOUT_FRACTION = 0.2
# at most this many training items are sampled for the comparison (held out or trained on)
MAX_COMPARE_ITEMS = 2048
# the probe is kept when it classifies at least this share of the held-out training images: the middle of the
# gap measured between digits and Fashion-MNIST (at most 95%) and photographs (97.5% and up; docs/few-shot.md)
PROBE_SEPARATES = 0.96


@dataclass
class FineTuneChoice:
    """What the default `fine_tune` decided.

    `recipe`: 'probe' (the body untouched, no epoch run) or 'stagewise' (see the module docstring); `probe`
    which probe the head holds: 'logistic regression' (then `C`, its penalty, and `cv_accuracy`, its
    cross-validated accuracy on the training images) or 'head' (fitted on cached features); `base_lr` the
    'auto' lr; `reason` why. `scores` / `losses`: the held-out accuracy / cross-entropy of the head probe fitted
    on the other training items (empty when it decided without measuring); `holdout_items` how many training
    items were held out; `seconds` the time choosing took (the measurement and the probe fit, not the 'auto' lr
    sweep, which `learn.auto_lr` times)."""
    recipe: str
    base_lr: float
    reason: str
    n_items: int
    n_classes: int
    scores: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    holdout_items: int = 0
    seconds: float = 0.0
    probe: str = ""
    C: Optional[float] = None
    cv_accuracy: Optional[float] = None

    @property
    def probe_kept(self) -> bool:
        return self.recipe == "probe"

    @property
    def per_class(self) -> float:
        return self.n_items / max(self.n_classes, 1)

    @property
    def features_separate(self) -> bool:
        """The held-out head probe classified at least `PROBE_SEPARATES` of the held-out training items."""
        return self.scores.get("probe", 0.0) >= PROBE_SEPARATES


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


def subset_loader(train: DataLoader, positions: Sequence[int], dataset: Any = None) -> DataLoader:
    """A loader over the items of `dataset` (default: the training dataset) at `positions`, in that order,
    batched and collated as `train` is."""
    return DataLoader(ItemSubset(train.dataset if dataset is None else dataset, positions),
                      batch_size=train.batch_size or 1, shuffle=False, collate_fn=train.collate_fn,
                      num_workers=train.num_workers)


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
    if choose == "held_out" and choice.per_class >= MIN_PER_CLASS_TO_MEASURE:
        blocker = comparison_blocker(learn)
        if blocker is None:
            compare(learn, choice, auto_lr)
        elif not keep:
            choice.reason = f"{blocker}, so the recipes are not compared: {choice.reason}"
    # every rank of a DDP run follows rank 0, also in which probe it keeps (read from the scores)
    choice.recipe, choice.scores = broadcast_object((choice.recipe, choice.scores))
    if choice.recipe == "probe":
        keep_probe(learn, choice, feats, targs)
    choice.seconds = time.perf_counter() - start
    learn.fine_tune_choice = choice
    if verbose:
        print(f"fine_tune: {choice.reason} ({probe_summary(choice, len(targs))}{choice.seconds:.1f} s"
              + (f"; to fine-tune anyway, pass base_lr=, e.g. {auto_lr:.2e}" if choice.recipe == "probe" else "")
              + ").")
    return choice.base_lr, (None if choice.recipe == "stagewise" else KeepProbe())


def probe_summary(choice: FineTuneChoice, cached_items: int) -> str:
    """How the kept probe was fitted, for the printed decision ('' when no probe was kept)."""
    if choice.probe == "logistic regression":
        return (f"C={choice.C:.3g} by {FOLDS}-fold cross-validation, {choice.cv_accuracy:.1%} held-out accuracy "
                "on the training images, ")
    if choice.probe == "head":
        steps = (f"{probe_steps(cached_items)} full-batch steps" if cached_items <= PROBE_MAX_BATCH else
                 f"{probe_steps(cached_items)} steps of {PROBE_MAX_BATCH}")
        return f"{steps} over {cached_items} cached items, "
    return ""


def keep_probe(learn: BaseLearner, choice: FineTuneChoice, feats: torch.Tensor, targs: torch.Tensor) -> None:
    """Put the kept probe into the model: the logistic regression when the features separate the classes and
    the head can hold it, else the head fitted on the cached `feats` (`fit_probe`)."""
    if choice.features_separate:
        why = keep_logistic_probe(learn, choice)
        if not why:
            choice.probe = "logistic regression"
            choice.reason += (": a logistic regression of the average-pooled features of the un-augmented "
                              "training images is written into the head, and the body is not trained")
            return
        choice.reason += f": the head is fitted as a probe on the cached body features ({why})"
    fit_probe(learn, feats, targs)
    choice.probe = "head"


def compare_sample(learn: BaseLearner) -> np.ndarray:
    """The training positions the comparison and the logistic regression use: up to `MAX_COMPARE_ITEMS`,
    drawn from seed 0, sorted."""
    sample = torch.randperm(len(learn.dls.train.dataset), generator=torch.Generator().manual_seed(0))
    return sample[:MAX_COMPARE_ITEMS].sort().values.numpy()


def unaugmented_features(learn: BaseLearner) -> tuple[torch.Tensor, torch.Tensor]:
    """(body features, targets) of the sampled training items (`compare_sample`) made without random
    augmentation (`eval_view`; as the training loader makes them when it cannot tell), on the CPU."""
    train = learn.dls.train
    view = eval_view(train.dataset, getattr(learn.dls.valid, "dataset", None))
    with forked_rng(learn.device, seed=0):
        return body_features(learn, subset_loader(train, compare_sample(learn), view), storage="cpu")


def keep_logistic_probe(learn: BaseLearner, choice: FineTuneChoice) -> str:
    """Fit `logistic_probe` on the average-pooled `unaugmented_features` and write it into the head, checked on
    those features; records `C` and `cv_accuracy` in `choice`. Returns '' when written, else why not (the
    model then unchanged)."""
    head = learn.model.head
    parts, why = linear_head_layout(head, choice.n_classes)
    if parts is None:
        return why
    feats, targs = unaugmented_features(learn)
    fewest = int(torch.bincount(targs, minlength=choice.n_classes).min())
    if fewest < FOLDS:
        return f"a class has {fewest} of the sampled images, fewer than the {FOLDS} cross-validation needs"
    prefix, classifier = split_fixed_prefix(head)
    with torch.no_grad():
        pooled = prefix(feats.to(learn.device).float())
    averages = pooled[:, average_slice(parts, pooled.shape[1])].cpu()
    if not torch.isfinite(averages).all():
        return "the body's features are not all finite"
    probe = fit_logistic_probe(averages, targs, choice.n_classes)
    before = copy.deepcopy(head.state_dict())
    why = write_linear_classifier(head, pooled, probe.mean, probe.std, probe.weight, probe.bias)
    if not why:
        head.eval()
        with torch.no_grad():
            written = classifier(pooled).double().cpu()
        expected = probe.logits(averages)
        if not torch.allclose(written, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-5):
            why = "the head does not reproduce the logistic regression"
    if why:
        head.load_state_dict(before)
        return why
    head.load_state_dict(broadcast_object({k: v.cpu() for k, v in head.state_dict().items()}))
    choice.C, choice.cv_accuracy = probe.C, probe.cv_accuracy
    return ""


def held_out_split(targets: torch.Tensor, positions: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fitted positions, held-out positions): a stratified, seeded `HOLDOUT_FRACTION` of each class of
    `positions` held out (every class keeps an item on each side when it has two)."""
    fit_idx, held_idx = split_indices(targets.cpu().numpy(), HOLDOUT_FRACTION, seed=seed)
    return positions[fit_idx], positions[held_idx]


@torch.no_grad()
def held_out_score(learn: BaseLearner, loader: DataLoader) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the learner's model over `loader`, in eval mode. The accuracy is the
    exact ratio of two counts (24 right of 25 is 0.96, not float32's 0.959999979, which would miss the threshold)."""
    logits, targets = learn.get_preds(dl=loader, activation=False)
    loss = nn.functional.cross_entropy(logits.float(), targets).item()
    return int((logits.argmax(dim=1) == targets).sum()) / len(targets), loss


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
    sample = compare_sample(learn)
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
                         "classes, and training the body would distort them")
    elif choice.per_class >= MIN_PER_CLASS_TO_FINE_TUNE:
        choice.recipe = "stagewise"
        choice.reason = (f"{measured} (less than {PROBE_SEPARATES:.0%}): the body has to adapt, so fastai's recipe "
                         f"over the stage groups at the 'auto' base_lr {auto_lr:.2e}")
    else:
        choice.recipe = "probe"
        choice.reason = (f"{measured} (less than {PROBE_SEPARATES:.0%}), and {choice.per_class:.3g} training images "
                         f"per class are too few to fine-tune the body (fewer than {MIN_PER_CLASS_TO_FINE_TUNE}): the "
                         "head is fitted as a probe on the cached body features and the body is not trained")
