"""The learning-rate finder (docs/lr-find.md): a short sweep with an exponentially growing lr, then everything
put back as it was, in memory, and suggestions read off the loss curve.

Unlike fastai, which sweeps one lr shared by every group, the sweep moves the head group (the last one)
along `start_lr * (end_lr/start_lr) ** (i/num_it)` and every other group along with it, keeping the ratio
to the head lr it has when `lr_find` is called (`lr_g / lr_head`). A learner whose groups all hold the
same lr (a new `Learner`) therefore sweeps exactly as fastai does, and one holding discriminative lrs
(after `set_lrs(slice(lo, hi))` or a `fit_one_cycle` at a slice) sweeps all its groups together.
Frozen groups are not stepped, whatever their lr.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch

from ..core.callback import Callback, CancelFitException
from ..core.loop import BaseLearner
from ..core.recorder import DebiasedEMA
from ..utils.ranks import broadcast_object
from ..utils.seeds import forked_rng
from ..utils.state_dicts import to_cpu_copy

SuggestFunc = Callable[[Sequence[float], Sequence[float], int], float]


# -------------------------------------------------------------------------------------------------
# suggestions: (lrs, losses, num_it) -> one lr, from the whole recorded sweep
# -------------------------------------------------------------------------------------------------
def sweep_window(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of a sweep the suggestions look at (as fastai): drop the first `num_it // 10` points
    (the smoothed loss is still settling) and the last 5 (the divergence), and cut at the first
    non-finite loss."""
    lrs_arr = np.asarray(lrs, dtype=float)[num_it // 10:-5]
    losses_arr = np.asarray(losses, dtype=float)[num_it // 10:-5]
    bad = np.flatnonzero(~np.isfinite(losses_arr))
    if len(bad):
        lrs_arr, losses_arr = lrs_arr[:bad[0]], losses_arr[:bad[0]]
    return lrs_arr, losses_arr


def _too_short(name: str, n_points: int, needed: int) -> float:
    warnings.warn(f"lr_find: the sweep window holds {n_points} points, '{name}' needs at least {needed}: "
                  "no suggestion (nan). Raise num_it, or lower end_lr if the sweep diverged early.")
    return math.nan


def valley(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> float:
    """fastai's default suggestion: the middle of the longest valley of the loss curve.

    On `sweep_window(lrs, losses, num_it)`: `length[i]` is the length of the longest strictly decreasing
    subsequence of losses ending at point i (O(n²) dynamic programme); `end` is the first point with the
    largest length, `start = end - length[end]` (as fastai), and the suggestion is `lrs[idx]` with
    `idx = start + (end-start)//3 + (end-start)//6` (clipped at 0).
    """
    lrs_w, losses_w = sweep_window(lrs, losses, num_it)
    n = len(losses_w)
    if n < 1:
        return _too_short("valley", n, 1)
    length = [1] * n
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses_w[i] < losses_w[j]:
                length[i] = max(length[i], length[j] + 1)
        if length[i] > length[end]:
            end = i
    start = end - length[end] if length[end] > 1 else end  # no decrease at all: end == 0, idx 0
    idx = max(start + (end - start) // 3 + (end - start) // 6, 0)
    return float(lrs_w[idx])


def minimum(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> float:
    """A tenth of the lr where the (smoothed) loss is lowest in `sweep_window`."""
    lrs_w, losses_w = sweep_window(lrs, losses, num_it)
    if len(losses_w) < 1:
        return _too_short("minimum", len(losses_w), 1)
    return float(lrs_w[int(np.argmin(losses_w))]) / 10


def steep(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> float:
    """The lr where the loss falls fastest against log(lr) in `sweep_window`: the slope between points
    i and i+1 is `(loss[i+1] - loss[i]) / (log lr[i+1] - log lr[i])`; the lr of point i of the most
    negative slope."""
    lrs_w, losses_w = sweep_window(lrs, losses, num_it)
    if len(losses_w) < 2:
        return _too_short("steep", len(losses_w), 2)
    slopes = np.diff(losses_w) / np.diff(np.log(lrs_w))
    return float(lrs_w[int(np.argmin(slopes))])


def slide(lrs: Sequence[float], losses: Sequence[float], num_it: int, lr_diff: int = 15, thresh: float = 0.005,
          adjust_value: float = 1.0) -> float:
    """fastai's interval slide rule, on `sweep_window`.

    `grad` is the gradient of the losses along the sweep (`np.gradient`, per step). A window of
    `lr_diff` steps starts at the end of the sweep, `[n-1-lr_diff, n-1]`, and slides one step left
    while the gradients at its two ends differ by more than `thresh`; the suggestion is the lr at the
    left end of the last window that still differed (the first window's left end if that one is already
    flat; the first point if no window is), times `adjust_value`.
    """
    lrs_w, losses_w = sweep_window(lrs, losses, num_it)
    n = len(losses_w)
    if n < lr_diff + 1 or n < 2:
        return _too_short("slide", n, max(lr_diff + 1, 2))
    grad = np.gradient(losses_w)
    right, left = n - 1, n - 1 - lr_diff
    suggestion = lrs_w[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        suggestion = lrs_w[left]
        right, left = right - 1, left - 1
    return float(suggestion) * adjust_value


def _suggestion_name(func: Callable) -> str:
    name = getattr(func, "__name__", None) or getattr(getattr(func, "func", None), "__name__", None)
    if not name or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"cannot name the suggestion function {func!r}: give lr_find plain functions "
                         "(a def with a name such as `valley`), whose names label the results")
    return name


# -------------------------------------------------------------------------------------------------
# the sweep
# -------------------------------------------------------------------------------------------------
class _RepeatedBatches:
    """Exactly `n` batches from `dl`, iterating it again from the start as often as needed."""

    def __init__(self, dl: Iterable, n: int):
        self.dl, self.n = dl, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        produced = 0
        while produced < self.n:
            produced_before = produced
            for batch in self.dl:
                yield batch
                produced += 1
                if produced == self.n:
                    return
            if produced == produced_before:
                raise ValueError("lr_find: dls.train yielded no batches: it needs training data")


class LRFinder(Callback):
    """Sets the lrs of step i before the batch (head group: `head_lrs[i]`, group g: `ratios[g] * head_lrs[i]`),
    records (head lr, smoothed loss) after it, and ends the fit after `len(head_lrs)` steps or, with
    `stop_div`, when the smoothed loss is non-finite or above 4x its best.

    Runs between the schedulers (10) and the Recorder (50). The smoothed loss is the debiased EMA of the
    training loss (beta 0.98, `recorder.DebiasedEMA`), as the Recorder's.
    """
    order = 20

    def __init__(self, head_lrs: Sequence[float], ratios: Sequence[float], stop_div: bool = True, beta: float = 0.98):
        self.head_lrs, self.ratios, self.stop_div, self.beta = list(head_lrs), list(ratios), stop_div, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def before_fit(self) -> None:
        self.lrs, self.losses = [], []
        self.smoother, self.best = DebiasedEMA(self.beta), math.inf

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        head_lr = self.head_lrs[self.learn.train_iter]
        for group, ratio in zip(self.learn.opt.param_groups, self.ratios):
            group["lr"] = ratio * head_lr  # the head's ratio is 1.0, so its lr is head_lrs[i] exactly

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        smooth = self.smoother.update(float(self.learn.loss.detach().float()))
        self.lrs.append(self.learn.opt.param_groups[-1]["lr"])
        self.losses.append(smooth)
        if math.isfinite(smooth):
            self.best = min(self.best, smooth)
        if self.stop_div and (not math.isfinite(smooth) or smooth > 4 * self.best):
            raise CancelFitException()
        if len(self.lrs) >= len(self.head_lrs):
            raise CancelFitException()


def lr_find(learn: BaseLearner, start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100, stop_div: bool = True,
            suggest_funcs: Optional[Sequence[SuggestFunc]] = (valley,)) -> tuple:
    """Sweep the lr exponentially, `start_lr * (end_lr/start_lr) ** (i/num_it)` for step i = 0..num_it-1,
    on the head group (other groups keep their current ratio to it, see the module docstring), one step
    per training batch (`dls.train` is iterated again as often as needed; no validation); stop early
    when `stop_div` and the smoothed loss exceeds 4x its best or is not finite.

    Afterwards everything is exactly as before, restored in memory (no file is written): parameters and
    buffers, gradients, `requires_grad`, `frozen_groups`, optimizer state and hyper-parameters, module
    train/eval modes, the Recorder's history, the torch (CPU and CUDA), Python and NumPy random states
    and the random state of `dls.train`'s sampler, so a fit after `lr_find` draws the same batches and
    gives the same result as without it. Callbacks of the learner run during the sweep (a fit labelled
    'lr_find'); the progress bar does not.

    The sweep lands in `learn.recorder.lr_find_results` (`lrs`: head lrs, `losses`: smoothed losses,
    `suggestions`: {name: lr}, `num_it`), which `learn.recorder.plot_lr_find()` draws.

    Returns a namedtuple `SuggestedLRs` with one field per suggestion function, named after it
    (`lr_find(learn).valley`; `suggest_funcs=(valley, minimum, steep, slide)` for all four).
    """
    if not start_lr > 0 or not math.isfinite(start_lr):
        raise ValueError(f"start_lr must be a positive number, got {start_lr}")
    if not end_lr > start_lr or not math.isfinite(end_lr):
        raise ValueError(f"end_lr must be larger than start_lr ({start_lr}), got {end_lr}")
    if not isinstance(num_it, int) or isinstance(num_it, bool) or num_it < 1:
        raise ValueError(f"num_it must be a positive int (the number of sweep steps), got {num_it!r}")
    funcs = list((valley,) if suggest_funcs is None else suggest_funcs)
    names = [_suggestion_name(f) for f in funcs]
    if len(set(names)) != len(names):
        raise ValueError(f"two suggestion functions share a name in {names}: each result needs its own name")
    head_now = learn.opt.param_groups[-1]["lr"]
    if not head_now > 0 or not math.isfinite(head_now):
        raise ValueError(f"the head group's lr is {head_now}: lr_find keeps each group's ratio to it, so it must be "
                         "positive (set one first, e.g. learn.set_lrs(1e-3))")
    ratios = [1.0 if i == learn.n_groups - 1 else g["lr"] / head_now for i, g in enumerate(learn.opt.param_groups)]
    head_lrs = [start_lr * (end_lr / start_lr) ** (i / num_it) for i in range(num_it)]

    finder = LRFinder(head_lrs, ratios, stop_div=stop_div)
    non_finite_at: Optional[float] = None
    with everything_restored(learn), learn.no_bar():
        sweep_dls = copy.copy(learn.dls)
        sweep_dls.train, sweep_dls.valid = _RepeatedBatches(learn.dls.train, num_it), None
        learn.dls = sweep_dls
        try:
            learn.fit(1, cbs=[finder], phase="lr_find")
        except FloatingPointError:
            # the Learner refused a step on a non-finite loss (before it reached the weights): the sweep ends here
            non_finite_at = head_lrs[len(finder.lrs)]
    if non_finite_at is not None and not stop_div:
        warnings.warn(f"lr_find: the training loss became non-finite at lr {non_finite_at:.3g}; the sweep ended there")

    lrs, losses = list(finder.lrs), list(finder.losses)
    suggestions = {name: float(f(lrs, losses, num_it)) for name, f in zip(names, funcs)}
    suggestions = broadcast_object(suggestions)  # every rank of a DDP run uses rank 0's numbers
    learn.recorder.lr_find_results = {"lrs": lrs, "losses": losses, "suggestions": suggestions, "num_it": num_it}
    return namedtuple("SuggestedLRs", names)(*(suggestions[n] for n in names))


# -------------------------------------------------------------------------------------------------
# exact, in-memory restore
# -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def everything_restored(learn: BaseLearner) -> Iterator[None]:
    """Snapshot the learner's training state (`learn.state_dict()`, copied to the CPU) and what a fit changes
    beyond it (`requires_grad`, gradients, train/eval modes, the loaders, the last smoothed loss); put it all
    back exactly on exit (also after an error)."""
    model = learn.model
    params = list(model.parameters())
    saved = to_cpu_copy(learn.state_dict())
    requires_grad = [p.requires_grad for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    modes = [m.training for m in model.modules()]
    dls, smooth_loss = learn.dls, learn.smooth_loss
    try:
        with forked_rng(learn.device):
            yield
    finally:
        learn.dls, learn.smooth_loss = dls, smooth_loss
        learn.load_state_dict(saved)
        for p, flag, grad in zip(params, requires_grad, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, mode in zip(model.modules(), modes):
            m.training = mode
