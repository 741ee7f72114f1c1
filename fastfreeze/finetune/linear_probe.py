"""A probe of the head: the head (whatever it is) fitted on cached features of the frozen body.

A linear probe is the baseline transfer learning has to beat (Tian et al. 2020), and one of the candidates
the default `fine_tune` chooses between (`default_choice`, docs/few-shot.md): `PROBE_STEPS` passes of AdamW at
`PROBE_LR` over the cached features (full-batch steps up to 512 items; a head fitted longer overfits a few
dozen images), the body untouched.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..core.divergence import ADVICE
from ..core.loop import BaseLearner
from ..core.norm import no_decay_param_ids
from ..core.optim import adamw
from ..models.head import AdaptiveConcatPool2d
from ..utils.ranks import broadcast_object
from ..utils.seeds import forked_rng

# the probe: this many passes of AdamW at this lr over the cached features, a step over all of them (over a
# random `PROBE_MAX_BATCH` of them when there are more: `probe_steps`)
PROBE_STEPS, PROBE_LR, PROBE_MAX_BATCH = 25, 3e-3, 512


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


def probe_steps(n_items: int, max_batch: int = PROBE_MAX_BATCH) -> int:
    """The probe's steps: `PROBE_STEPS` passes over the cached items, a step taking all of them up to
    `max_batch` (25 full-batch steps), a random `max_batch` of them above (25 x ceil(n_items / max_batch):
    100 steps for 2,048 items), so that a larger training set is not fitted less."""
    return PROBE_STEPS * max(1, math.ceil(n_items / max_batch))


def fit_head(head: nn.Module, feats: torch.Tensor, targs: torch.Tensor, loss_func: Callable,
             steps: Optional[int] = None, lr: float = PROBE_LR, wd: float = 0.01, max_batch: int = PROBE_MAX_BATCH,
             seed: int = 0) -> None:
    """Train `head` in place on cached features: `steps` AdamW steps (default `probe_steps`; betas 0.9/0.99,
    eps 1e-5 and decoupled weight decay `wd` on weights, none on norm parameters and biases, as the Learner
    trains), each over all the items, or a random `max_batch` of them (drawn from `seed`) when there are more.
    Leaves it in eval mode. Raises `FloatingPointError` at a non-finite loss, before that step touches the
    weights."""
    steps = probe_steps(len(targs), max_batch) if steps is None else steps
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
    with forked_rng(learn.device, seed=0):
        with torch.no_grad():
            pooled = prefix(feats.to(learn.device).float())
        probe = copy.deepcopy(rest)
        try:
            fit_head(probe, pooled, targs.to(learn.device), learn.loss_func, wd=learn.wd)
        except FloatingPointError as e:
            raise FloatingPointError(f"training diverged: {e}. The model was left as it was. {ADVICE}") from None
    rest.load_state_dict(broadcast_object({k: v.cpu() for k, v in probe.state_dict().items()}))
    return time.perf_counter() - start
