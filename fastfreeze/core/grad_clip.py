"""Gradient clipping: the gradients the optimizer is about to step with, rescaled so that their global norm is
at most `max_norm` (torch's `clip_grad_norm_`).

`GradientClip` acts in the `before_step` event, which the loop calls once per optimizer step, after a
GradScaler has unscaled the gradients (fp16) and after the last batch of a gradient accumulation: the norm it
clips is the true one under every precision (a clip in `after_backward` would see fp16 gradients still
multiplied by the loss scale). `fit(..., clip_grad=max_norm)` adds one for that fit (docs/callbacks.md).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..utils.checks import is_real
from .callback import Callback


class GradientClip(Callback):
    """Clip the global `norm_type` norm of the gradients of every parameter that has one to `max_norm`, just
    before each optimizer step. `total_norm` holds the last norm before clipping (a tensor on the device:
    reading it waits for the GPU)."""
    order = 0

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if not is_real(max_norm) or not 0 < max_norm < math.inf:
            raise ValueError(f"clip_grad (max_norm) must be a positive finite number, got {max_norm!r}")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.total_norm: Optional[torch.Tensor] = None

    def before_step(self) -> None:
        params = [p for g in self.learn.opt.param_groups for p in g["params"] if p.grad is not None]
        if params:
            self.total_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
