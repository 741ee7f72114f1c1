"""Schedules: cosine annealing, the one-cycle policy (SPEC.md §5) and fastai's `fine_tune` recipe (§6).

A schedule is a callback that writes each group's lr and momentum into `learn.opt.param_groups`
before every training batch; it touches parameters only through those values and `freeze_to`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .feature_cache import feature_cache_for
from .callback import Callback
from .lrs import LrSpec, expand_lrs
from .strategies import Phase, Strategy, StrategySpec, discriminative, resolve_strategy

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

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
    every group to `mom_sched(pos)`, where `pos = train_iter / total_steps` (the first step uses pos 0)."""
    order = 10

    def __init__(self, lr_scheds: Sequence[Schedule], mom_sched: Optional[Schedule] = None):
        self.lr_scheds, self.mom_sched = list(lr_scheds), mom_sched

    def before_fit(self) -> None:
        try:
            n_batches = len(self.learn.dls.train)
        except TypeError:
            raise TypeError("a scheduled fit needs a training set with a length (len(dls.train)) to know "
                            "the number of steps; wrap it in a torch DataLoader") from None
        self.total_steps = max(self.learn.n_epoch * n_batches, 1)
        if len(self.lr_scheds) != len(self.learn.opt.param_groups):
            raise ValueError(f"{len(self.lr_scheds)} lr schedules for {len(self.learn.opt.param_groups)} param groups")

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        pos = self.learn.train_iter / self.total_steps
        for group, sched in zip(self.learn.opt.param_groups, self.lr_scheds):
            group["lr"] = sched(pos)
            if self.mom_sched is not None:
                set_momentum(group, self.mom_sched(pos))


def set_momentum(group: dict[str, Any], mom: float) -> None:
    """Write momentum into a param group: `betas[0]` for Adam-style optimizers, `momentum` for SGD-style."""
    if "betas" in group:
        group["betas"] = (mom, *tuple(group["betas"])[1:])
    elif "momentum" in group:
        group["momentum"] = mom


def one_cycle_scheduler(lrs: Sequence[float], div: float = 25.0, div_final: float = 1e5, pct_start: float = 0.25,
                        moms: Optional[tuple[float, float, float]] = (0.95, 0.85, 0.95)) -> ParamScheduler:
    """The one-cycle policy: each group's lr warms up from lr/div to lr over `pct_start` of the steps,
    then anneals to lr/div_final; momentum goes moms[0] -> moms[1] -> moms[2] (cosine both ways)."""
    if not 0 < pct_start <= 1:
        raise ValueError(f"pct_start must be in (0, 1], got {pct_start}")
    lr_scheds = [combined_cos(pct_start, lr / div, lr, lr / div_final) for lr in lrs]
    mom_sched = combined_cos(pct_start, *moms) if moms is not None else None
    return ParamScheduler(lr_scheds, mom_sched)


def _as_list(cbs: Optional[Union[Callback, Sequence[Callback]]]) -> list[Callback]:
    return [] if cbs is None else ([cbs] if isinstance(cbs, Callback) else list(cbs))


def fit_one_cycle(learn: "Learner", n_epoch: int, lr_max: Optional[LrSpec] = None, div: float = 25.0,
                  div_final: float = 1e5, pct_start: float = 0.25, wd: Optional[float] = None,
                  moms: Optional[tuple[float, float, float]] = (0.95, 0.85, 0.95),
                  cbs: Optional[Union[Callback, Sequence[Callback]]] = None, phase: Optional[str] = None,
                  resume_from: Optional[Union[str, Path]] = None) -> None:
    """Fit `n_epoch` epochs with the one-cycle policy; `lr_max` is a float, a slice or one lr per group
    (default: `learn.lr`). `resume_from`: a checkpoint of this same fit to go on from (see `Learner.fit`)."""
    if lr_max == "auto":
        from .auto_lr import choose_base_lr
        lr_max = choose_base_lr(learn)
    lrs = expand_lrs(learn.lr if lr_max is None else lr_max, learn.n_groups)
    scheduler = one_cycle_scheduler(lrs, div=div, div_final=div_final, pct_start=pct_start, moms=moms)
    learn.fit(n_epoch, wd=wd, cbs=[scheduler] + _as_list(cbs), phase=phase, resume_from=resume_from)


def fine_tune(learn: "Learner", epochs: int, base_lr: Union[float, str] = "auto", freeze_epochs: int = 1, lr_mult: float = 100,
              pct_start: float = 0.3, div: float = 5.0, strategy: StrategySpec = None,
              layer_decay: Optional[float] = None, resume_from: Optional[Union[str, Path]] = None,
              cache_features: Union[str, bool] = "auto", **kwargs: Any) -> None:
    """Fine-tune in phases, one `fit_one_cycle` per phase, `freeze_to` between them (see `strategies`).

    `base_lr='auto'` (default) first picks base_lr from an lr sweep of the head (see `auto_lr`); a number
    is used as given. The default (`strategy=None`) is fastai's recipe (SPEC.md §6):
    1. `freeze()`; one-cycle for `freeze_epochs` at `slice(base_lr)` with pct_start 0.99 (div 25);
    2. `base_lr /= 2`; `unfreeze()`; one-cycle for `epochs` at `slice(base_lr/lr_mult, base_lr)`.
    `freeze_epochs=0` skips phase 1. Other strategies: 'freeze', 'no_freeze', ('freeze_unfreeze', e),
    ('unfreeze_milestones', ((e1, e2), k)), ('gradual', k) or a `Strategy` object; their phases use
    `pct_start` and `div` and add up to `epochs` (`freeze_epochs` is the default's only).

    Discriminative lrs: `slice(head_lr/lr_mult, head_lr)` over all groups, or with `layer_decay=d`
    `head_lr * d**(G-1-i)` for group i (layer-wise lr decay) in place of the slice.
    Extra keyword arguments (moms, div_final, wd, cbs) go to every phase. Phases are labelled in the
    Recorder ('frozen', 'unfrozen', 'unfrozen from group k', or a custom strategy's labels).

    `cache_features`: 'auto' runs the frozen body once and trains the head on its cached features in frozen
    phases of 2+ epochs when that is exact (norm='frozen', data without random augmentation; see
    `feature_cache`), True accepts one fixed draw of augmentation, False never caches.

    `resume_from`: a checkpoint written during the same fine_tune (`CheckpointCallback`); the phases it
    completed are skipped and its phase goes on from its epoch, with the base_lr it recorded ('auto' is
    not chosen again).
    """
    if "phase" in kwargs:
        raise ValueError("fine_tune labels its phases itself: pass no `phase`, or define a Strategy with labels")
    first_phase = 0
    if resume_from is not None:
        first_phase, base_lr = _resume_point(learn, resume_from, base_lr)
    if base_lr == "auto":
        from .auto_lr import choose_base_lr
        base_lr = choose_base_lr(learn)
    if isinstance(base_lr, str) or not base_lr > 0:
        raise ValueError(f"base_lr must be a positive number or 'auto', got {base_lr!r}")
    feature_cache_for(learn, cache_features, 0)  # reject a bad value before any training
    plan = resolve_strategy(strategy, freeze_epochs)
    phases = list(plan.phases(learn, epochs, base_lr, discriminative(lr_mult, layer_decay)))
    for phase in phases:  # check them all before training starts
        _check_phase(learn, phase, plan)
    if first_phase >= len(phases):
        raise ValueError(f"{resume_from} was written in phase {first_phase} of a fine_tune, but this one has "
                         f"{len(phases)} phases: resume with the same arguments")
    try:
        for i, phase in enumerate(phases[first_phase:], start=first_phase):
            learn.fine_tune_state = {"phase": i, "n_phases": len(phases), "base_lr": base_lr}
            learn.freeze_to(phase.freeze_to)
            cache = feature_cache_for(learn, cache_features, phase.epochs)
            phase_kwargs = dict(kwargs, cbs=cache + _as_list(kwargs.get("cbs")))
            fit_one_cycle(learn, phase.epochs, phase.lr,
                          pct_start=pct_start if phase.pct_start is None else phase.pct_start,
                          div=div if phase.div is None else phase.div, phase=phase.label,
                          resume_from=resume_from if i == first_phase else None, **phase_kwargs)
    finally:
        learn.fine_tune_state = None


def _resume_point(learn: "Learner", resume_from: Union[str, Path], base_lr: Union[float, str]) -> tuple[int, float]:
    """The phase a fine_tune checkpoint was written in, and the base_lr it used (checked against `base_lr`)."""
    from .checkpoint import read_checkpoint
    file = learn._file(resume_from)
    state = read_checkpoint(file)["fine_tune"]
    if state is None:
        raise ValueError(f"{file} was not written during fine_tune: resume it with the fit or fit_one_cycle call "
                         "that wrote it")
    if base_lr != "auto" and not math.isclose(float(base_lr), state["base_lr"], rel_tol=1e-12):
        raise ValueError(f"{file} was written by a fine_tune with base_lr={state['base_lr']:g}, not {base_lr!r}: "
                         "pass the same base_lr, or 'auto' to reuse the one it recorded")
    return state["phase"], state["base_lr"]


def _check_phase(learn: "Learner", phase: Any, plan: Strategy) -> None:
    if not isinstance(phase, Phase):
        raise TypeError(f"{plan!r}.phases() must yield Phase objects, got {type(phase).__name__}")
    if not isinstance(phase.epochs, int) or isinstance(phase.epochs, bool) or phase.epochs < 0:
        raise ValueError(f"{plan!r} gave a phase of {phase.epochs!r} epochs: a phase needs an int >= 0")
    g = learn.n_groups
    if not isinstance(phase.freeze_to, int) or isinstance(phase.freeze_to, bool) or not -g <= phase.freeze_to <= g - 1:
        raise ValueError(f"{plan!r} gave phase {phase.label!r} freeze_to={phase.freeze_to!r}, but this learner has "
                         f"{g} layer groups: it must be an int in [{-g}, {g - 1}]")
    expand_lrs(phase.lr, g)  # a clear error now rather than after the first phases
