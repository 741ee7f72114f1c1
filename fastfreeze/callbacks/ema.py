"""An exponential moving average of the model's weights (timm's `ModelEmaV3`), validated, checkpointed and
exported on request (docs/regularisation.md).

`EMA(decay)` is a callback: give it to the Learner (`cbs=`) or to each fit. After every optimizer step it
moves the average towards the weights, `ema = decay * ema + (1 - decay) * weights`, for every floating
point parameter and buffer (BatchNorm statistics included); integer buffers are copied. As timm's training
script does, the first update copies the weights (the average starts from the trained model, not from the
weights before training), and `warmup=True` uses timm's warm-up, `decay_t = min(decay, 1 - (1 + t)**-power)`
at update t, so that a short fine-tune still gets an average of its later steps.

- validation: with `validate=True` (the default) every validation, in a fit or `learn.validate()`, runs on
  the averaged weights: they are swapped into the model for it and swapped back afterwards (exactly);
- anything else on the averaged weights: `with ema.applied(): learn.export(path)` (or `get_preds`,
  `push_to_hub`, `to_onnx`, `save`);
- checkpoints: the average and its update count are part of `learn.state_dict()` (`state_key`), so
  `CheckpointCallback` saves them and a resumed fit goes on exactly;
- the average spans every fit the callback takes part in (all phases of `fine_tune`); `reset()` starts over.
`lr_find` sweeps are left out. The average is of the whole model even when a fit trains the head on cached
features or under DDP (the callback runs before those wrappers and keeps the model it started with).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.utils.model_ema import ModelEmaV3

from ..core.callback import Callback
from ..core.loop import BaseLearner
from ..utils.checks import is_real


class EMA(Callback):
    """Keep `ema.module`, an exponential moving average of the model's weights (module docstring).

    Args:
        decay: the weight of the past at each optimizer step (timm's `ModelEmaV3` decay).
        warmup: timm's warm-up of the decay, `1 - (1 + t)**-warmup_power` at update t (capped at `decay`).
        warmup_power: 3/4 reaches a decay of 0.99 after about 460 updates, 2/3 after about 1,000.
        validate: run validation on the averaged weights.
    """
    order = -30  # before FeatureCache (-20) and DDP (-5) replace learn.model with their wrappers
    state_key = "ema"
    learn: BaseLearner

    def __init__(self, decay: float = 0.999, warmup: bool = True, warmup_power: float = 0.75,
                 validate: bool = True):
        if not is_real(decay) or not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be a number in [0, 1) (the weight of the past at each step, e.g. "
                             f"0.999), got {decay!r}")
        if not isinstance(warmup_power, (int, float)) or not 0 < warmup_power <= 1 or math.isnan(warmup_power):
            raise ValueError(f"warmup_power must be in (0, 1], got {warmup_power!r}")
        self.decay, self.warmup, self.warmup_power, self.validate = float(decay), warmup, float(warmup_power), validate
        self.ema: Optional[ModelEmaV3] = None
        self.updates = 0
        self.model: Optional[nn.Module] = None  # the model averaged (learn.model when the average started)
        self.active = False
        self.swapped = False

    def reset(self) -> None:
        """Forget the average: the next fit starts a new one."""
        self.ema, self.updates = None, 0

    # -- the average ---------------------------------------------------------------------------
    def _start(self) -> None:
        self.model = self.learn.model
        self.ema = ModelEmaV3(self.model, decay=self.decay, use_warmup=self.warmup, warmup_power=self.warmup_power)

    def before_fit(self) -> None:
        self.active = self.learn.phase != "lr_find"
        if not self.active:
            return
        if self.ema is None:
            self._start()
        self.model = self.learn.model

    def after_step(self) -> None:
        if not self.active:
            return
        self.updates += 1
        self.ema.update(self.model, step=self.updates)

    # -- validation on the average -------------------------------------------------------------
    def before_validate(self) -> None:
        if self.validate and self.ema is not None and self.updates and self.learn.phase != "lr_find":
            self._swap()

    def after_validate(self) -> None:
        if self.swapped:
            self._swap()

    after_cancel_validate = after_validate

    def after_fit(self) -> None:
        if self.swapped:  # an exception during validation
            self._swap()
        self.active = False

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the model's weights and the average's, tensor by tensor (exact both ways)."""
        for live, avg in zip(self.model.state_dict().values(), self.ema.module.state_dict().values()):
            kept = live.clone()
            live.copy_(avg)
            avg.copy_(kept)
        self.swapped = not self.swapped

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the block (e.g. `with ema.applied(): learn.export(path)`),
        the trained ones back afterwards."""
        if self.ema is None or not self.updates:
            raise RuntimeError("the EMA has no average yet: train with the callback first (learn.fit(..., "
                               "cbs=[ema]) or vision_learner(..., cbs=[ema]))")
        if self.swapped:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The averaged tensors (the live ones; None before the first fit) and the number of updates."""
        return {"weights": None if self.ema is None else self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        if state["weights"] is None:
            self.ema = None
            return
        if self.ema is None:
            self._start()
        self.ema.module.load_state_dict(state["weights"])
