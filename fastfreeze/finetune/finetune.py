"""`fine_tune`: transfer learning in phases, one one-cycle fit per phase with `freeze_to` between them
(docs/schedules.md). Which groups train when, and at which lrs, is a `Strategy` (strategies.py); the default
is fastai's recipe."""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..core.callback import callback_list
from ..core.checkpoint import read_checkpoint
from ..core.layer_groups import frozen_count
from ..core.loop import BaseLearner
from ..core.lrs import check_lrs, expand_lrs
from ..utils.checks import WholeNumberError, check_epochs, check_wd, is_int
from .auto_lr import choose_base_lr
from .default_choice import CHOOSERS, choose_fine_tune
from .feature_cache import feature_cache_for
from .lora import LoRA
from .schedule import check_one_cycle, fit_one_cycle
from .strategies import Phase, Strategy, StrategySpec, discriminative, resolve_strategy


def fine_tune(learn: BaseLearner, epochs: int, base_lr: Union[float, str] = "auto", freeze_epochs: int = 1,
              lr_mult: float = 100, pct_start: float = 0.3, div: float = 5.0, strategy: StrategySpec = None,
              layer_decay: Optional[float] = None, resume_from: Optional[Union[str, Path]] = None,
              cache_features: Union[str, bool] = "auto", choose: str = "held_out", **kwargs: Any) -> None:
    """Fine-tune in phases, one `fit_one_cycle` per phase, `freeze_to` between them (see `strategies`).

    `base_lr='auto'` (default) first picks base_lr from an lr sweep of the head (`auto_lr`, docs/auto-lr.md);
    a number is used as given. With 'auto' and no strategy, a single-label classifier on a body + head
    chooses its recipe from the training set: a probe of the head on cached body features (no epoch runs) or
    the stage-wise recipe below at the 'auto' lr (`default_choice`, docs/few-shot.md); `learn.fine_tune_choice`
    records what it measured and chose.
    `strategy=None` with a number is fastai's recipe over the layer groups (docs/schedules.md):
    1. `freeze()`; one-cycle for `freeze_epochs` at `slice(base_lr)` with pct_start 0.99 (div 25);
    2. `base_lr /= 2`; `unfreeze()`; one-cycle for `epochs` at `slice(base_lr/lr_mult, base_lr)`.
    `freeze_epochs=0` skips phase 1. Other strategies: 'gentle' (phase 2 with the whole body at the first
    group's lr), 'freeze', 'no_freeze', ('freeze_unfreeze', e),
    ('unfreeze_milestones', ((e1, e2), k)), ('gradual', k), 'lora' (LoRA adapters on the body through peft,
    `finetune.lora.LoRA`; docs/lora.md) or a `Strategy` object; their phases use
    `pct_start` and `div` and add up to `epochs` (`freeze_epochs` is used by the default, 'gentle' and
    'lora' only).

    Discriminative lrs: `slice(head_lr/lr_mult, head_lr)` over all groups, or with `layer_decay=d`
    `head_lr * d**(G-1-i)` for group i (layer-wise lr decay) in place of the slice.
    Extra keyword arguments (moms, div_final, wd, cbs, accum_steps, clip_grad) go to every phase. Phases are labelled in the
    Recorder ('frozen', 'unfrozen', 'unfrozen from group k', or a custom strategy's labels).

    `cache_features`: 'auto' runs the frozen body once and trains the head on its cached features in frozen
    phases of 2+ epochs when that is exact (norm='frozen', data without random augmentation; see
    `feature_cache`), True accepts one fixed draw of augmentation, False never caches.

    `choose` (with base_lr='auto' and no strategy): 'held_out' (the default) keeps a probe of the head below 15
    training images per class; from there it fits a logistic regression of the un-augmented training features,
    its penalty chosen by 5-fold cross-validation, and keeps it (written into the head) when its cross-validated
    accuracy reaches 95.5% (89.5% below 25 images per class); below that, the stage-wise recipe from 25 images
    per class, the head probe under 25. 'by_size' keeps a probe below 25 images per class and runs the
    stage-wise recipe from there.

    `resume_from`: a checkpoint written during the same fine_tune (`CheckpointCallback`); the phases it
    completed are skipped and its phase goes on from its epoch, with the base_lr it recorded ('auto' is
    not chosen again).
    """
    if "phase" in kwargs:
        raise ValueError("fine_tune labels its phases itself: pass no `phase`, or define a Strategy with labels")
    check_epochs(epochs, "epochs")
    _check_base_lr(base_lr)
    _check_hyper_parameters(pct_start, div, kwargs)
    if choose not in CHOOSERS:
        raise ValueError(f"choose must be one of {', '.join(map(repr, CHOOSERS))}, got {choose!r}")
    first_phase = 0
    if resume_from is not None:
        first_phase, base_lr = _resume_point(learn, resume_from, base_lr)
    feature_cache_for(learn, cache_features, 0)  # reject a bad value before any training
    learn.fine_tune_choice = None
    accum_steps = kwargs.get("accum_steps", 1)
    disc = discriminative(lr_mult, layer_decay)
    if isinstance(base_lr, str) and strategy is None:  # the default: choose the recipe from the training set
        base_lr, strategy = choose_fine_tune(learn, accum_steps=accum_steps, choose=choose)
    elif isinstance(base_lr, str):
        base_lr = choose_base_lr(learn, accum_steps=accum_steps)
    if isinstance(strategy, str) and strategy == "lora":
        plan: Strategy = LoRA(freeze_epochs=freeze_epochs)
    else:
        plan = resolve_strategy(strategy, freeze_epochs)
    plan.prepare(learn)
    phases = list(plan.phases(learn, epochs, base_lr, disc))
    for phase in phases:  # check them all before training starts
        _check_phase(learn, phase, plan)
    if resume_from is not None and first_phase >= len(phases):
        raise ValueError(f"{resume_from} was written in phase {first_phase} of a fine_tune, but this one has "
                         f"{len(phases)} phases: resume with the same arguments")
    every_phase = {"phase_epochs": [p.epochs for p in phases],  # what a callback (ProgressiveResize) needs
                   "phase_frozen": [frozen_count(p.freeze_to, learn.n_groups) for p in phases]}
    try:
        for i, phase in enumerate(phases[first_phase:], start=first_phase):
            learn.fine_tune_state = {"phase": i, "n_phases": len(phases), "base_lr": base_lr, **every_phase}
            learn.freeze_to(phase.freeze_to)
            cache = feature_cache_for(learn, cache_features, phase.epochs)
            phase_kwargs = dict(kwargs, cbs=cache + callback_list(kwargs.get("cbs")))
            fit_one_cycle(learn, phase.epochs, phase.lr,
                          pct_start=pct_start if phase.pct_start is None else phase.pct_start,
                          div=div if phase.div is None else phase.div, phase=phase.label,
                          resume_from=resume_from if i == first_phase else None, **phase_kwargs)
    finally:
        learn.fine_tune_state = None


def _check_base_lr(base_lr: Any) -> None:
    """base_lr is one number, the head's peak lr (the strategy spreads it over the groups), or 'auto'."""
    if isinstance(base_lr, str):
        if base_lr != "auto":
            raise ValueError(f"base_lr must be a positive number or 'auto', got {base_lr!r}")
        return
    if isinstance(base_lr, (slice, list, tuple, np.ndarray)) or not isinstance(base_lr, numbers.Real):
        raise TypeError(f"base_lr is one number, the head's lr (fine_tune spreads it over the layer groups with "
                        f"lr_mult or layer_decay), or 'auto'; got {base_lr!r}. For your own lr per group use "
                        "learn.fit_one_cycle(n, lr_max=[...]), or a Strategy whose phases give an lr spec")
    check_lrs([base_lr], "base_lr")


def _check_hyper_parameters(pct_start: Any, div: Any, kwargs: dict[str, Any]) -> None:
    """Every phase's one-cycle arguments and the extra keyword arguments, checked before anything runs (the
    'auto' lr, the probe, a first phase), with the messages `fit_one_cycle` gives."""
    check_one_cycle(div, kwargs.get("div_final", 1e5), pct_start, kwargs.get("moms"))
    if kwargs.get("wd") is not None:
        check_wd(kwargs["wd"])
    if "cbs" in kwargs:
        kwargs["cbs"] = callback_list(kwargs["cbs"])  # a list: every phase gets them


def _resume_point(learn: BaseLearner, resume_from: Union[str, Path], base_lr: Union[float, str]) -> tuple[int, float]:
    """The phase a fine_tune checkpoint was written in, and the base_lr it used (checked against `base_lr`)."""
    file = learn.file_path(resume_from)
    state = read_checkpoint(file)["loop"]["fine_tune_state"]
    if state is None:
        raise ValueError(f"{file} was not written during fine_tune: resume it with the fit or fit_one_cycle call "
                         "that wrote it")
    if base_lr != "auto" and not math.isclose(float(base_lr), state["base_lr"], rel_tol=1e-12):
        raise ValueError(f"{file} was written by a fine_tune with base_lr={state['base_lr']:g}, not {base_lr!r}: "
                         "pass the same base_lr, or 'auto' to reuse the one it recorded")
    return state["phase"], state["base_lr"]


def _check_phase(learn: BaseLearner, phase: Any, plan: Strategy) -> None:
    if not isinstance(phase, Phase):
        raise TypeError(f"{plan!r}.phases() must yield Phase objects, got {type(phase).__name__}")
    if not is_int(phase.epochs) or phase.epochs < 0:
        raise ValueError(f"{plan!r} gave a phase of {phase.epochs!r} epochs: a phase needs an int >= 0")
    g = learn.n_groups
    try:
        frozen_count(phase.freeze_to, g)
    except WholeNumberError:
        raise ValueError(f"{plan!r} gave phase {phase.label!r} freeze_to={phase.freeze_to!r}, but this learner has "
                         f"{g} layer groups: it must be an int in [{-g}, {g - 1}]") from None
    expand_lrs(phase.lr, g)  # a clear error now rather than after the first phases
    try:
        check_one_cycle(25.0 if phase.div is None else phase.div, 1e5,
                        0.25 if phase.pct_start is None else phase.pct_start, None)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{plan!r} gave phase {phase.label!r} a one-cycle argument that cannot be used: {e}") from None
