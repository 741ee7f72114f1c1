"""`fine_tune(..., strategy='lora')`: LoRA adapters on the body (through `peft`), trained with the head while the
body's own weights stay frozen (docs/lora.md).

`LoRA(r, alpha, targets, dropout, freeze_epochs)` is a `Strategy`: before its phases it puts adapters on the target
modules of the body (`models/lora.py`; by default the attention and MLP linears of a ViT, ConvNeXt's pointwise
linears, EfficientNet/MobileNet's 1x1 pointwise convs), files each adapter's parameters in the layer group of the
module it adapts, and marks every other parameter of the body `always_frozen`. Its phases are fastai's recipe
with LoRA in place of unfreezing: the head alone for `freeze_epochs`, then all groups, which then means the
adapters and the head, at `fine_tune`'s discriminative lrs of base_lr/2: each adapter at the lr of its group.

The body's own parameters are treated as those of a frozen group: under `norm='train'` (`train_bn`) their norm
parameters train and BatchNorm statistics move, as fastai's `train_bn` does; under `norm='frozen'` (or
`'recalibrate'`, which then recalibrates nothing) the body's norm layers run in eval mode and nothing of the body
changes but the adapters.

Adding adapters once is enough: a learner that has them (a second `fine_tune`, or a resume) keeps them.
`learn.export` merges them into the weights (`models.lora.merged_state_dict`), so the export is the plain
architecture and loads without peft.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from ..models.body import TransferModel
from ..models.lora import (ADAPTER_PARENTS, adapter_modules, adapter_parameters, add_adapters, default_targets,
                           find_targets)
from ..utils.checks import is_int
from .strategies import Discriminative, Phase, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from ..core.loop import BaseLearner


@dataclass(frozen=True)
class LoRASummary:
    """What trains under LoRA: `adapters` (LoRA parameters), `trainable` (the adapters, the head and, under
    `train_bn`, the body's norm parameters) and `total` (every parameter of the model, adapters included), with
    the number of `adapted_modules`."""
    adapters: int
    trainable: int
    total: int
    adapted_modules: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total

    def __str__(self) -> str:
        return (f"LoRA: {self.adapted_modules} adapted modules, {self.adapters:,} adapter parameters; "
                f"{self.trainable:,} of {self.total:,} parameters train ({100 * self.trainable_fraction:.2f}%)")


class LoRA(Strategy):
    """fastai's recipe with LoRA for the unfrozen phase: adapters of rank `r` (scaling `alpha / r`, `dropout` on
    their input) on `targets` (module names of the body, or their last dotted parts; default: the body family's,
    `models.lora.DEFAULT_TARGETS`). `freeze_epochs` epochs of the head only at `slice(base_lr)` (pct_start 0.99,
    div 25, as the default strategy), then `epochs` epochs of the adapters and the head at `disc(base_lr / 2)`
    (phase 'lora'); the body's own weights stay frozen throughout. `fine_tune(strategy='lora')` passes its
    `freeze_epochs`."""

    def __init__(self, r: int = 8, alpha: float = 16, targets: Optional[Sequence[str]] = None, dropout: float = 0.0,
                 freeze_epochs: int = 1):
        if not is_int(r) or r < 1:
            raise ValueError(f"LoRA's rank r must be an int >= 1 (e.g. 8), got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"LoRA's alpha must be a positive number (the scaling is alpha / r; e.g. 16), got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LoRA's dropout must be a number in [0, 1), got {dropout!r}")
        if targets is not None and (isinstance(targets, str) or not all(isinstance(t, str) for t in targets)):
            raise TypeError(f"LoRA's targets are a list of module names, e.g. ['qkv', 'fc1'], got {targets!r}")
        self.r, self.alpha, self.dropout = int(r), float(alpha), float(dropout)
        self.targets = None if targets is None else tuple(targets)
        if not is_int(freeze_epochs) or freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be an int >= 0, got {freeze_epochs!r}")
        self.freeze_epochs = int(freeze_epochs)

    def prepare(self, learn: "BaseLearner") -> None:
        """Add the adapters to `learn` (`add_lora`), unless it has them already."""
        add_lora(learn, self.r, self.alpha, self.targets, self.dropout)

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        if self.freeze_epochs > 0:
            yield Phase(self.freeze_epochs, learn.n_groups - 1, slice(base_lr), "frozen", pct_start=0.99, div=25.0)
        if epochs > 0:
            yield Phase(epochs, 0, disc(base_lr / 2), "lora")


def add_lora(learn: "BaseLearner", r: int = 8, alpha: float = 16, targets: Optional[Sequence[str]] = None,
             dropout: float = 0.0) -> list[str]:
    """Put LoRA adapters on the body of `learn.model` (the whole model for one that is not a body and a head),
    file each adapter's parameters in the layer group of the module it adapts, rebuild the optimizer, and keep the
    body's other parameters frozen (`learn.always_frozen`). Returns the adapted modules' names. A learner whose
    model has adapters already is left as it is (its adapters' names returned)."""
    model = learn.model
    present = adapter_modules(model)
    if present:
        _freeze_all_but_adapters(learn)
        return list(present)
    body = model.body if isinstance(model, TransferModel) else model
    if targets is None:
        names = find_targets(body, default_targets(body), within=ADAPTER_PARENTS)
    else:
        names = find_targets(body, targets)
    group_of = {id(p): i for i, group in enumerate(learn.layer_groups) for p in group}
    owners = {name: group_of[id(next(body.get_submodule(name).parameters()))] for name in names}
    add_adapters(body, names, r, alpha, dropout)
    if learn.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = [list(g) for g in learn.layer_groups]
    for name, module in adapter_modules(body).items():
        groups[owners[name]] += adapter_parameters(module)
    learn.set_layer_groups(lambda m: groups)
    _freeze_all_but_adapters(learn)
    return list(adapter_modules(model))


def _freeze_all_but_adapters(learn: "BaseLearner") -> None:
    """`always_frozen`: every parameter of the body (the whole model without a head) except the adapters'; then
    the current freeze state applied again."""
    model = learn.model
    body = model.body if isinstance(model, TransferModel) else model
    adapters = {id(p) for m in adapter_modules(body).values() for p in adapter_parameters(m)}
    learn.always_frozen = {id(p) for p in body.parameters() if id(p) not in adapters}
    learn.freeze_to(learn.frozen_groups)


def lora_summary(learn: "BaseLearner") -> LoRASummary:
    """How many parameters the adapters add and how many train in a LoRA phase (`LoRASummary`; print it)."""
    adapted = adapter_modules(learn.model)
    adapters = sum(p.numel() for m in adapted.values() for p in adapter_parameters(m))
    trainable = sum(p.numel() for p in learn.model.parameters()
                    if id(p) not in learn.always_frozen or (learn.train_bn and id(p) in learn.norm_param_ids))
    total = sum(p.numel() for p in learn.model.parameters())
    return LoRASummary(adapters=adapters, trainable=trainable, total=total, adapted_modules=len(adapted))


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters that require a gradient now, all parameters) of `model`."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
