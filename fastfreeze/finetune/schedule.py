"""Schedules: cosine annealing and the one-cycle policy, exactly as fastai computes them (docs/schedules.md).

A schedule is a callback that writes each group's lr and momentum into `learn.opt.param_groups`
before every training batch; it touches nothing else.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Union

from ..core.callback import Callback, callback_list
from ..core.loop import BaseLearner, Callbacks
from ..core.lrs import LrSpec, expand_lrs
from ..core.optim import check_decay_rate, set_momentum
from ..utils.checks import check_div, check_moms, check_pct_start, check_wd
from .auto_lr import choose_base_lr

Schedule = Callable[[float], float]  # position in [0, 1) -> value


def cos_anneal(start: float, end: float, pos: float) -> float:
    """Cosine from `start` (pos 0) to `end` (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pct: float, start: float, middle: float, end: float) -> Schedule:
    """Cosine from `start` to `middle` over the first `pct` of training, then from `middle` to `end`."""
    def schedule(pos: float) -> float:
        if pos < pct:
            return cos_anneal(start, middle, pos / pct)
        return cos_anneal(middle, end, (pos - pct) / (1 - pct))
    return schedule


class ParamScheduler(Callback):
    """Sets, before each training batch, `lr` of group i to `lr_scheds[i](pos)` and the momentum of
    every group to `mom_sched(pos)`, where `pos = step_iter / total_steps` (the first step uses pos 0).
    Positions count optimizer steps: under gradient accumulation (`accum_steps`) the batches of one step
    share its values, and `total_steps` is `n_epoch * learn.steps_per_epoch()`."""
    order = 10

    def __init__(self, lr_scheds: Sequence[Schedule], mom_sched: Optional[Schedule] = None):
        self.lr_scheds, self.mom_sched = list(lr_scheds), mom_sched

    def before_fit(self) -> None:
        try:
            steps_per_epoch = self.learn.steps_per_epoch()
        except TypeError:
            raise TypeError("a scheduled fit needs a training set with a length (len(dls.train)) to know "
                            "the number of steps; wrap it in a torch DataLoader") from None
        self.total_steps = max(self.learn.n_epoch * steps_per_epoch, 1)
        if len(self.lr_scheds) != len(self.learn.opt.param_groups):
            raise ValueError(f"{len(self.lr_scheds)} lr schedules for {len(self.learn.opt.param_groups)} param groups")

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        pos = self.learn.step_iter / self.total_steps
        for group, sched in zip(self.learn.opt.param_groups, self.lr_scheds):
            group["lr"] = sched(pos)
            if self.mom_sched is not None:
                set_momentum(group, self.mom_sched(pos))


def check_one_cycle(div: float, div_final: float, pct_start: float, moms: Optional[Sequence[float]]
                    ) -> tuple[float, float, float, Optional[tuple[float, float, float]]]:
    """The one-cycle hyper-parameters checked (`utils.checks`: the same messages from every entry point) and
    returned as floats: `div` and `div_final` finite and >= 1, `pct_start` in (0, 1], `moms` 3 values in [0, 1)
    or None."""
    return check_div(div, "div"), check_div(div_final, "div_final"), check_pct_start(pct_start), check_moms(moms)


def one_cycle_scheduler(lrs: Sequence[float], div: float = 25.0, div_final: float = 1e5, pct_start: float = 0.25,
                        moms: Optional[tuple[float, float, float]] = (0.95, 0.85, 0.95)) -> ParamScheduler:
    """The one-cycle policy: each group's lr warms up from lr/div to lr over `pct_start` of the steps,
    then anneals to lr/div_final; momentum goes moms[0] -> moms[1] -> moms[2] (cosine both ways)."""
    div, div_final, pct_start, moms = check_one_cycle(div, div_final, pct_start, moms)
    lr_scheds = [combined_cos(pct_start, lr / div, lr, lr / div_final) for lr in lrs]
    mom_sched = combined_cos(pct_start, *moms) if moms is not None else None
    return ParamScheduler(lr_scheds, mom_sched)


def fit_one_cycle(learn: BaseLearner, n_epoch: int, lr_max: Union[None, LrSpec, str] = None, div: float = 25.0,
                  div_final: float = 1e5, pct_start: float = 0.25, wd: Optional[float] = None,
                  moms: Optional[tuple[float, float, float]] = (0.95, 0.85, 0.95), cbs: Callbacks = None,
                  phase: Optional[str] = None, resume_from: Optional[Union[str, Path]] = None, accum_steps: int = 1,
                  clip_grad: Optional[float] = None) -> None:
    """Fit `n_epoch` epochs with the one-cycle policy (docs/schedules.md): each group's lr warms up from
    lr/div to its peak over `pct_start` of the steps, then anneals to peak/div_final; momentum goes
    moms[0] -> moms[1] -> moms[2]. `lr_max` is a float, a slice or one peak lr per group (default `learn.lr`;
    'auto': `auto_lr.choose_base_lr`). `resume_from`: a checkpoint of this same fit to go on from;
    `accum_steps` (gradient accumulation; the schedule counts optimizer steps) and `clip_grad`: see `fit`."""
    check_one_cycle(div, div_final, pct_start, moms)  # before an 'auto' lr is chosen
    if wd is not None:
        wd = check_wd(wd)
    cbs = callback_list(cbs)
    if isinstance(lr_max, str) and lr_max == "auto":
        lr_max = choose_base_lr(learn, accum_steps=accum_steps)
    lrs = expand_lrs(learn.lr if lr_max is None else lr_max, learn.n_groups)
    for lr, group in zip(lrs, learn.opt.param_groups):  # the peak lr meets the decay at pct_start
        check_decay_rate(lr, group.get("wd", 0.0) if wd is None else wd)
    scheduler = one_cycle_scheduler(lrs, div=div, div_final=div_final, pct_start=pct_start, moms=moms)
    learn.fit(n_epoch, wd=wd, cbs=[scheduler] + callback_list(cbs), phase=phase, resume_from=resume_from,
              accum_steps=accum_steps, clip_grad=clip_grad)
