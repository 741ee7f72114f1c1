"""The optimizer: one torch param group per layer group, fastai's AdamW by default, momentum read and
written alike for Adam-style and SGD-style optimizers, and decoupled weight decay (docs/freezing.md).

Weight decay is applied by `DecoupledWeightDecay`, a step pre-hook of the optimizer: just before each step,
`p *= 1 - lr * wd` for the decayed parameters of every param group, at that group's own lr and `wd`
(what torch's AdamW does inside its step). Doing it here rather than inside the optimizer is what lets
normalization parameters and biases be exempt while each layer group stays one param group; doing it in a
step hook means a step that does not happen (a GradScaler skipping an overflowing fp16 step) decays nothing.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn


def adamw(param_groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The default optimizer: torch AdamW with betas (0.9, 0.99) and eps 1e-5 (fastai's Adam), fused on CUDA.

    Weight decay is 0 inside torch's optimizer: the Learner applies it (`DecoupledWeightDecay`)."""
    on_cuda = all(p.is_cuda for g in param_groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.0,
                             fused=True if on_cuda else None)


def momentum_of(group: dict[str, Any]) -> float:
    """The momentum of a param group: `betas[0]` for Adam-style optimizers, `momentum` for SGD-style (nan if none)."""
    if "betas" in group:
        return float(group["betas"][0])
    return float(group.get("momentum", math.nan))


def set_momentum(group: dict[str, Any], mom: float) -> None:
    """Write momentum into a param group: `betas[0]` for Adam-style optimizers, `momentum` for SGD-style."""
    if "betas" in group:
        group["betas"] = (mom, *tuple(group["betas"])[1:])
    elif "momentum" in group:
        group["momentum"] = mom


def check_single_weight_decay(opt: torch.optim.Optimizer, wd: float) -> None:
    """Refuse an optimizer that decays the weights itself while the Learner does too (`wd > 0`): every step
    would decay twice."""
    own = sorted({float(g.get("weight_decay", 0.0)) for g in opt.param_groups} - {0.0})
    if own and wd:
        raise ValueError(
            f"the optimizer built by opt_func applies its own weight_decay={own[0]:g}, and the Learner applies "
            f"wd={wd:g} too: the weights would be decayed twice. Pass the decay to the Learner (wd={own[0]:g}; it "
            "exempts normalization parameters and biases) and build the optimizer with weight_decay=0 (e.g. "
            "opt_func=functools.partial(torch.optim.AdamW, weight_decay=0)), or pass wd=0 to the Learner to let the "
            "optimizer decay every parameter itself")


def check_decay_rate(lr: float, wd: float) -> None:
    """Refuse a weight decay of 1 or more that multiplies the weights by `1 - lr*wd <= 0` (zeroes or flips them) at
    this lr. (With a usual wd, an lr that large is the lr's fault: the divergence check stops that fit and says
    to lower the lr.)"""
    if wd >= 1 and lr * wd >= 1:
        raise ValueError(
            f"weight decay would multiply the weights by 1 - lr*wd = {1 - lr * wd:g} at each step (lr={lr:g}, "
            f"wd={wd:g}): lr*wd must stay below 1, or every step zeroes or flips the weights. Lower wd (typical "
            "values are 1e-2 to 1e-4) or the learning rate")


class DecoupledWeightDecay:
    """`p *= 1 - lr * wd` before each optimizer step, for each param group's decayed parameters that get a step
    (a gradient), with the group's current `lr` and `'wd'`.

    Registered as a step pre-hook on `opt`: it runs only for steps that happen. Fused optimizers that skip an
    overflowing fp16 step inside their own kernel are told so by GradScaler (`opt.found_inf`); the decay then
    multiplies by 1 on that step, without waiting for the GPU."""

    def __init__(self, opt: torch.optim.Optimizer, params: Sequence[Sequence[nn.Parameter]]):
        if len(params) != len(opt.param_groups):
            raise ValueError(f"{len(params)} lists of decayed parameters for {len(opt.param_groups)} param groups")
        self.params = [list(g) for g in params]  # per param group: the parameters that are decayed
        self.handle = opt.register_step_pre_hook(self)

    def __call__(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        found_inf = getattr(opt, "found_inf", None)
        for group, decayed in zip(opt.param_groups, self.params):
            rate = group["lr"] * group.get("wd", 0.0)
            if rate == 0:
                continue
            params = [p for p in decayed if p.grad is not None]
            if not params:
                continue
            if isinstance(found_inf, torch.Tensor):  # 1 on a step the fused kernel skips
                factor: Any = 1 - rate * (1 - found_inf.clamp(max=1).to(params[0].device, params[0].dtype))
            else:
                factor = 1 - rate
            with torch.no_grad():  # a `with`, not a decorator: the mutation check skips decorated functions
                torch._foreach_mul_(params, factor)
