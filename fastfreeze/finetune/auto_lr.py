"""`base_lr='auto'`: fine_tune picks its own learning rate from an lr sweep of the head.

How: run the (frozen) body once, in eval mode and without gradients, over up to `max_items` training
images and keep its features; then run `lr_find` `N_SWEEPS` times (different shuffles, `SWEEP_NUM_IT`
steps from `SWEEP_START_LR`) on *copies* of the head trained on those cached features, in batches of
`SWEEP_BS` whatever the training batch size (hundreds of head-only steps cost less than one batch through
the body), and take the median of their suggestions. The learner itself is not touched: weights, buffers,
optimizer state, `requires_grad` and the global RNG state stay as they were.
Models that are not a `TransferModel` (no body/head split) get a short sweep of the frozen learner instead,
restored exactly by `lr_find`.

The rule turning the sweep into `base_lr` is `pick_base_lr`; docs/auto-lr.md gives the reasoning and the
measurements behind each constant (benchmarks/transfer_quality.py).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..core.dataloaders import DataLoaders, seeded_loader
from ..core.loop import BaseLearner
from ..models.body import TransferModel
from ..utils.ranks import broadcast_object
from ..utils.seeds import forked_rng
from .feature_cache import body_features
from .lr_finder import lr_find, minimum, valley

# the range `pick_base_lr` clips to: below it a head barely moves in a few epochs, above it AdamW
# updates of the body (base_lr/2 for the head, base_lr/200 for the stem) stop being small perturbations
MIN_AUTO_LR, MAX_AUTO_LR = 1e-4, 3e-2
# the head sweep's batch size, whatever the training batch size: with small batches gradient noise makes the
# smoothed loss turn up earlier
SWEEP_BS = 64
# sweeps over different shuffles of the cached features; the rule takes the median of their suggestions
N_SWEEPS = 3
# each sweep: 60 steps from 1e-5 (a factor 1.26 per step, near fastai's 1.2 from 1e-7 in 100 steps); heads
# train at 1e-5 and below far too slowly to matter, and fewer steps keep the choice cheap
SWEEP_START_LR, SWEEP_NUM_IT = 1e-5, 60


def pick_base_lr(valley_lr: float, minimum_lr: float, train_bs: Optional[int] = None,
                 sweep_bs: Optional[int] = None) -> float:
    """The rule: fastai's `minimum` suggestion of the head sweep (a tenth of the lr at the lowest smoothed
    loss), times `sqrt(train_bs / sweep_bs)`, clipped to [MIN_AUTO_LR, MAX_AUTO_LR]; `valley` only when
    `minimum` found nothing; fastai's 2e-3 when the sweep found neither (NaN).

    `minimum` is Smith's rule (an order of magnitude below where the loss stops falling); fine_tune trains the
    body at base_lr/2 down to base_lr/200, so the head's tolerance sets the scale for every group. The square
    root: the sweep runs at batches of `sweep_bs`, training at `train_bs`, and for Adam the lr that keeps the
    same noise per update scales with the square root of the batch size (Malladi et al. 2022). Why these
    choices, measured: docs/auto-lr.md.
    """
    scale = math.sqrt(train_bs / sweep_bs) if train_bs and sweep_bs else 1.0
    for lr in (minimum_lr, valley_lr):
        if lr is not None and math.isfinite(lr) and lr > 0:
            return float(min(max(lr * scale, MIN_AUTO_LR), MAX_AUTO_LR))
    return 2e-3


def training_features(learn: BaseLearner, max_items: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The body features `choose_base_lr` sweeps on, on the CPU: up to `max_items` training items in the loader's
    order for seed 0, any random augmentation drawn from seed 0; the global RNG state is left as it was."""
    with forked_rng(learn.device, seed=0), seeded_loader(learn.dls.train, 0):  # the same items whatever the order
        return body_features(learn, learn.dls.train, max_items, storage="cpu")


def choose_base_lr(learn: BaseLearner, max_items: int = 2048, num_it: int = SWEEP_NUM_IT,
                   verbose: bool = True, accum_steps: int = 1,
                   features: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> float:
    """Pick `base_lr` for `fine_tune` (see the module docstring); records `learn.auto_lr` with the details.
    `accum_steps`: the training accumulates that many batches per step, so a step sees `accum_steps` times the
    loader's batch size (the batch size the rule scales to). `features`: this learner's
    `training_features(learn, max_items)`, when already computed."""
    start = time.perf_counter()
    loader_bs = getattr(learn.dls.train, "batch_size", None)
    train_bs = loader_bs * accum_steps if loader_bs else loader_bs
    # the choice depends on the data and the weights only, not on the RNG stream
    with forked_rng(learn.device, seed=0):
        if isinstance(learn.model, TransferModel):
            if features is None:
                features = training_features(learn, max_items)
            feats, targs = features
            bs = max(2, min(SWEEP_BS, len(targs) // 2)) if len(targs) >= 4 else len(targs)
            how = (f"the median of {N_SWEEPS} lr_find sweeps of the head on cached body features of "
                   f"{len(targs)} training items, batches of {bs}")
            features = TensorDataset(feats.float(), targs)
            runs = [_head_sweep(learn, features, bs, seed, num_it) for seed in range(N_SWEEPS)]
            minimums = [found.minimum for found, _ in runs]
            valley_lr, minimum_lr = finite_median([found.valley for found, _ in runs]), finite_median(minimums)
            sweep = runs[0][1]
        else:
            frozen_before = learn.frozen_groups
            bs = loader_bs  # the sweep runs on the training batches themselves
            how = "lr_find of the learner with all groups but the last frozen"
            _refreeze(learn, max(learn.n_groups - 1, 0))
            try:
                found = lr_find(learn, start_lr=SWEEP_START_LR, num_it=num_it, suggest_funcs=(valley, minimum))
            finally:
                _refreeze(learn, frozen_before)
            sweep = learn.recorder.lr_find_results
            valley_lr, minimum_lr = found.valley, found.minimum
            minimums = [minimum_lr]
    base_lr = broadcast_object(pick_base_lr(valley_lr, minimum_lr, train_bs, bs))  # rank 0's
    seconds = time.perf_counter() - start
    learn.auto_lr = {"base_lr": base_lr, "valley": valley_lr, "minimum": minimum_lr,
                     "minimums": minimums, "how": how, "sweep_bs": bs, "train_bs": train_bs, "seconds": seconds,
                     "sweep": sweep}
    learn.recorder.lr_find_results = dict(sweep, suggestions={**sweep["suggestions"], "auto": base_lr})
    if verbose:
        scaled = f" x sqrt({train_bs}/{bs})" if train_bs and bs and train_bs != bs else ""
        print(f"base_lr={base_lr:.2e} chosen by {how} (its 'minimum' suggestion {minimum_lr:.2e}{scaled}; "
              f"valley was {valley_lr:.2e}; {seconds:.1f} s)")
    return base_lr


def _head_sweep(learn: BaseLearner, features: TensorDataset, bs: int, seed: int, num_it: int) -> tuple[Any, dict]:
    """lr_find of a copy of the learner's head over the cached `features`, shuffled by `seed`."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    feature_dl = DataLoader(features, batch_size=bs, shuffle=True, drop_last=True, generator=generator)
    head_learner = BaseLearner(copy.deepcopy(learn.model.head), DataLoaders(feature_dl), loss_func=learn.loss_func,
                           opt_func=learn.opt_func, wd=learn.wd, wd_bn_bias=learn.wd_bn_bias,
                           device=learn.device, precision="fp32", progress=False)
    suggestions = lr_find(head_learner, start_lr=SWEEP_START_LR, num_it=num_it, suggest_funcs=(valley, minimum))
    return suggestions, head_learner.recorder.lr_find_results


def finite_median(values: list[Optional[float]]) -> float:
    """The median of the finite values (NaN when there are none); of an even number of them, the geometric mean
    of the middle two (lrs are compared on a log scale)."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return float("nan")
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else math.sqrt(finite[mid - 1] * finite[mid])


def _refreeze(learn: BaseLearner, frozen_groups: int) -> None:
    """`freeze_to` without resetting the optimizer state (which must come out of the choice unchanged)."""
    reset, learn.reset_opt = learn.reset_opt, False
    try:
        learn.freeze_to(frozen_groups)
    finally:
        learn.reset_opt = reset
