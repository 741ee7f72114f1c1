"""The default `fine_tune` of a classifier on a pretrained body: with few images per class, keep a probe.

A linear probe (a classifier fitted on the frozen body's features) is the baseline few-shot fine-tuning has
to beat (Tian et al. 2020), and with a few images per class fastai's recipe does not beat it: with about
ten optimizer steps per epoch the head is still far from what a probe finds when the body unfreezes, the
first unfrozen steps distort the pretrained features to fit it (Kumar et al. 2022), and batches of 8 give
the body's BatchNorm layers noisy statistics to train on. Fine-tuning from a probe head (LP-FT) did not
fix it either (docs/few-shot.md has the measurements). So when `fine_tune` chooses for itself
(`base_lr='auto'`, no strategy) on a single-label classifier with a body and a head (`TransferModel`,
cross-entropy loss), it decides from the size of the training set:

- at least `MIN_PER_CLASS_TO_FINE_TUNE` training images per class: fastai's recipe at the 'auto' base_lr,
  exactly as before (no probe is fitted);
- fewer: the probe. The head itself (whatever it is) is fitted on the body's features of the training
  images, cached once for the 'auto' lr sweep anyway: `PROBE_STEPS` full-batch AdamW steps at `PROBE_LR`
  (a head fitted longer overfits a few dozen images). The body is not trained and no epoch runs.

It prints what it decided and why, and records it in `learn.fine_tune_choice` (a `FineTuneChoice`). Only the
training set is read (its length, its classes, its cached features): never the validation set.
Multi-label and regression learners, other losses, `base_lr=<float>` and explicit strategies are not
concerned: they get fastai's recipe (or the strategy) as before.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..core.divergence import ADVICE
from ..core.loop import BaseLearner
from ..core.norm import no_decay_param_ids
from ..core.optim import adamw
from ..core.tasks import SINGLE_LABEL, task_of
from ..models.body import TransferModel
from ..models.head import AdaptiveConcatPool2d
from ..utils.ranks import broadcast_object
from .auto_lr import choose_base_lr, training_features
from .strategies import Discriminative, Phase, Strategy

# the decision: fine-tune with at least this many training images per class, else keep the probe
MIN_PER_CLASS_TO_FINE_TUNE = 25
# the probe: this many AdamW steps at this lr, each over all the cached features (a random
# `PROBE_MAX_BATCH` of them when there are more)
PROBE_STEPS, PROBE_LR, PROBE_MAX_BATCH = 25, 3e-3, 512


@dataclass
class FineTuneChoice:
    """What the default `fine_tune` decided: `probe_kept` True when the head was fitted as a probe on cached
    body features and no epoch ran (the body untouched), False for fastai's recipe; `reason` says why;
    `probe_seconds` is the time the probe fit took (0 when none was fitted)."""
    probe_kept: bool
    reason: str
    n_items: int
    n_classes: int
    probe_seconds: float = 0.0

    @property
    def per_class(self) -> float:
        return self.n_items / max(self.n_classes, 1)


class KeepProbe(Strategy):
    """No phase: the probe fitted on cached features is the result (the body is not trained)."""

    def phases(self, learn: BaseLearner, epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        return iter(())

    def __repr__(self) -> str:
        return "KeepProbe()"


def probe_blocker(learn: BaseLearner) -> Optional[str]:
    """Why the few-images rule does not apply to this learner (None when it does): it was measured on
    single-label classifiers with a body and a head trained with cross-entropy only."""
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


def decide(n_items: int, n_classes: int) -> tuple[bool, str]:
    """(keep the probe?, why) for a training set of `n_items` images in `n_classes` classes."""
    per_class = n_items / max(n_classes, 1)
    if per_class < MIN_PER_CLASS_TO_FINE_TUNE:
        return True, (f"{per_class:.3g} training images per class (fewer than {MIN_PER_CLASS_TO_FINE_TUNE}): "
                      "too few to fine-tune the body, which would then lose to a probe on its features; the "
                      "head is fitted as a probe on the cached body features and the body is not trained")
    return False, (f"{per_class:.3g} training images per class (at least {MIN_PER_CLASS_TO_FINE_TUNE}): "
                   "fine-tuning with fastai's recipe")


def split_fixed_prefix(head: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(pooling prefix, rest) of a Sequential head: its leading parameter-free, deterministic layers (pooling,
    flatten), which the probe fit runs once over the cached features rather than at every step."""
    fixed = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, AdaptiveConcatPool2d, nn.Flatten, nn.Identity)
    if not isinstance(head, nn.Sequential):
        return nn.Identity(), head
    k = 0
    while k < len(head) and isinstance(head[k], fixed):
        k += 1
    return head[:k], head[k:]


def fit_head(head: nn.Module, feats: torch.Tensor, targs: torch.Tensor, loss_func: Callable,
             steps: int = PROBE_STEPS, lr: float = PROBE_LR, wd: float = 0.01, max_batch: int = PROBE_MAX_BATCH,
             seed: int = 0) -> None:
    """Train `head` in place on cached features: `steps` AdamW steps (betas 0.9/0.99, eps 1e-5 and decoupled
    weight decay `wd` on weights, none on norm parameters and biases, as the Learner trains), each over all
    the items, or a random `max_batch` of them (drawn from `seed`) when there are more. Leaves it in eval mode.
    Raises `FloatingPointError` at a non-finite loss, before that step touches the weights."""
    no_decay = no_decay_param_ids(head)
    params = [p for p in head.parameters() if p.requires_grad]
    # the Learner's optimizer (`optim.adamw`), with torch's own decoupled decay per group: the same
    # `p *= 1 - lr * wd` before each step that the Learner's `DecoupledWeightDecay` applies
    opt = adamw([{"params": [p for p in params if id(p) not in no_decay], "weight_decay": wd},
                 {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}], lr)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    try:
        for step in range(steps):
            idx = torch.randperm(len(targs), generator=generator)[:max_batch] if len(targs) > max_batch else slice(None)
            with torch.enable_grad():
                loss = loss_func(head(feats[idx]), targs[idx])
            value = loss.detach().item()
            if not math.isfinite(value):
                raise FloatingPointError(f"the probe fit on cached body features diverged: loss {value} at "
                                         f"step {step + 1} of {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        head.eval()


def fit_probe(learn: BaseLearner, feats: torch.Tensor, targs: torch.Tensor) -> float:
    """Fit the learner's head on cached body features (`fit_head` on a copy, put into the model once it has
    finished); returns the seconds it took. Deterministic: the global RNG (dropout) is seeded inside and put
    back as it was; under DDP every rank gets rank 0's head. When the fit diverges, the model is left as it
    was and a `FloatingPointError` says so (as `DivergenceGuard` stops a fit)."""
    start = time.perf_counter()
    prefix, rest = split_fixed_prefix(learn.model.head)
    with torch.random.fork_rng(devices=[learn.device] if learn.device.type == "cuda" else []):
        torch.manual_seed(0)
        with torch.no_grad():
            pooled = prefix(feats.to(learn.device).float())
        probe = copy.deepcopy(rest)
        try:
            fit_head(probe, pooled, targs.to(learn.device), learn.loss_func, wd=learn.wd)
        except FloatingPointError as e:
            raise FloatingPointError(f"training diverged: {e}. The model was left as it was. {ADVICE}") from None
    rest.load_state_dict(broadcast_object({k: v.cpu() for k, v in probe.state_dict().items()}))
    return time.perf_counter() - start


def choose_fine_tune(learn: BaseLearner, verbose: bool = True,
                     accum_steps: int = 1) -> tuple[float, Optional[Strategy]]:
    """The default `fine_tune`'s choice (see the module docstring): `(base_lr, strategy)`, with `strategy`
    None for fastai's recipe (also when the rule does not apply: `probe_blocker`, or targets that are not
    class indices) or `KeepProbe()` once the probe is fitted into the model. `base_lr` is the 'auto' lr
    (`choose_base_lr`, which reads the same cached features; `accum_steps` as there). Records `learn.fine_tune_choice` when it
    decided, and sets it to None when the rule does not apply."""
    learn.fine_tune_choice = None
    if probe_blocker(learn) is not None:
        return choose_base_lr(learn, verbose=verbose, accum_steps=accum_steps), None
    feats, targs = training_features(learn)
    base_lr = choose_base_lr(learn, verbose=verbose, accum_steps=accum_steps, features=(feats, targs))
    if targs.ndim != 1 or targs.is_floating_point():
        return base_lr, None
    n_items, n_classes = training_set_size(learn, targs)
    keep, why = decide(n_items, n_classes)
    seconds = fit_probe(learn, feats, targs) if keep else 0.0
    learn.fine_tune_choice = FineTuneChoice(keep, why, n_items, n_classes, seconds)
    if verbose:
        done = "" if not keep else (f" ({PROBE_STEPS} full-batch steps over {len(targs)} cached items, "
                                    f"{seconds:.1f} s; to fine-tune anyway, pass base_lr=, e.g. {base_lr:.2e})")
        print(f"fine_tune: {why}{done}.")
    return base_lr, (KeepProbe() if keep else None)
