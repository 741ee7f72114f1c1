"""Splitting a model into ordered layer groups, for discriminative learning rates and `freeze_to`.

A timm body is split by its own `group_matcher()`: the stem, then one group per stage (`level='coarse'`)
or per block (`level='fine'`), in forward order. Parameters timm's matcher leaves unmatched (a final norm,
a pre-logits layer: timm puts them in a trailing group of their own) join the last body group.
Forward order holds as far as timm's matchers allow; known exceptions, all timm's own choices: CaiT's
class-attention blocks (run last) share the groups of the last self-attention blocks; CoaT's conv position
encodings sit in each stage's stem group but run inside its blocks; EfficientViM's per-stage output norms
are unmatched, so they go last.
Any other body (torchvision, a user's `nn.Module`) is split by `generic_groups` (see there).
The head is always the last group of a `TransferModel`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from ..core.norm import norm_param_ids
from .body import TransferModel

DEFAULT_MAX_GROUPS = {"coarse": 6, "fine": 12}  # for models split without a timm matcher
_UNMATCHED = "\x00unmatched"  # a name no group matcher recognises: timm gives it the last ('inf') group id


def body_groups(body: nn.Module, level: str = "coarse", max_groups: Optional[int] = None) -> list[list[str]]:
    """Parameter names of `body`, one list per group, groups in forward order.

    `level`: 'coarse' (timm: stem + one group per stage) or 'fine' (timm: one group per block).
    `max_groups`: cap on the number of groups; adjacent groups are merged (smallest combined parameter
    count first) until it holds. None keeps timm's groups as they are and splits other models into at
    most 6 ('coarse') or 12 ('fine') groups (see `generic_groups`).
    """
    if level not in ("coarse", "fine"):
        raise ValueError(f"level must be 'coarse' or 'fine', got {level!r}")
    if max_groups is not None and max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    if not any(True for _ in body.parameters()):
        raise ValueError(f"{type(body).__name__} has no parameters to put in layer groups")
    groups = timm_groups(body, level)
    if groups is None:
        groups = generic_groups(body, max_groups=max_groups or DEFAULT_MAX_GROUPS[level])
    elif max_groups is not None:
        groups = merge_groups(groups, _sizes(body, groups), max_groups)
    return groups


def timm_groups(body: nn.Module, level: str = "coarse") -> Optional[list[list[str]]]:
    """Groups from timm's `group_matcher(coarse=...)`, or None when the model has no usable matcher
    (none at all, or one that puts every parameter in a single group)."""
    matcher_fn = getattr(body, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    from timm.models._manipulate import group_with_matcher
    try:
        matcher = matcher_fn(coarse=(level == "coarse"))
    except (NotImplementedError, AssertionError, TypeError):
        if level == "coarse":  # some models (e.g. RDNet) only group per block: merge those instead
            fine = timm_groups(body, "fine")
            return None if fine is None else merge_groups(fine, _sizes(body, fine), DEFAULT_MAX_GROUPS["coarse"])
        return None
    names = [name for name, _ in body.named_parameters()]
    grouped = group_with_matcher([(n, None) for n in names] + [(_UNMATCHED, None)], matcher)
    groups = [list(grouped[k]) for k in sorted(grouped)]
    if _UNMATCHED in groups[-1]:  # the parameters timm's matcher did not place share the sentinel's group
        unmatched = [n for n in groups.pop() if n != _UNMATCHED]
        if groups:  # none left: the matcher placed nothing, which counts as no matcher (below)
            groups[-1].extend(unmatched)
    else:  # a matcher that places every name somewhere
        groups = [[n for n in g if n != _UNMATCHED] for g in groups]
        groups = [g for g in groups if g]
    if len(groups) < 2:
        return None
    return groups


def generic_groups(body: nn.Module, max_groups: int = DEFAULT_MAX_GROUPS["coarse"]) -> list[list[str]]:
    """Groups for a model without a timm matcher, in module registration order (the forward order of
    nearly every model):

    1. units: the top-level children holding parameters; parameters owned directly by a module form a
       unit of their own, placed before its children.
    2. while there are fewer units than `max_groups`, a unit that is a module with submodules and holds
       more than half of all parameters (torchvision's `features`, a ViT `encoder`...) is replaced by
       its own units.
    3. a unit holding only normalization parameters joins the unit before it (a conv and its BatchNorm,
       the last stage and a final norm stay together).
    4. adjacent units are merged, smallest combined parameter count first, down to `max_groups`.
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    sizes = {name: p.numel() for name, p in body.named_parameters()}
    total = sum(sizes.values())
    units = _units(body, "", sizes)
    while len(units) < max_groups:
        dominant = [i for i, u in enumerate(units) if u.module is not None
                    and any(True for _ in u.module.children()) and 2 * sum(sizes[n] for n in u.names) > total]
        if not dominant:
            break
        i = dominant[0]
        units[i:i + 1] = _units(units[i].module, units[i].prefix, sizes)
    norm_ids = norm_param_ids(body)
    params = dict(body.named_parameters())
    groups: list[list[str]] = []
    for unit in units:
        if groups and all(id(params[n]) in norm_ids for n in unit.names):
            groups[-1].extend(unit.names)
        else:
            groups.append(list(unit.names))
    return merge_groups(groups, [sum(sizes[n] for n in g) for g in groups], max_groups)


@dataclass
class _Unit:
    """Parameter names that move together; `module` is set when they are exactly one submodule's."""
    names: list[str]
    module: Optional[nn.Module] = None
    prefix: str = ""


def _units(module: nn.Module, prefix: str, sizes: dict[str, int]) -> list[_Unit]:
    """One unit for `module`'s own parameters (if any), then one per child holding parameters."""
    def qualified(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    units: list[_Unit] = []
    own = [qualified(n) for n, _ in module.named_parameters(recurse=False)]
    own = [n for n in own if n in sizes]  # a shared parameter belongs where named_parameters first lists it
    if own:
        units.append(_Unit(own))
    for child_name, child in module.named_children():
        name = qualified(child_name)
        names = [n for n in (f"{name}.{k}" for k, _ in child.named_parameters()) if n in sizes]
        if names:
            units.append(_Unit(names, child, name))
    return units


def merge_groups(groups: list[list[str]], sizes: Sequence[int], max_groups: int) -> list[list[str]]:
    """Merge adjacent groups, the pair with the smallest combined size first, until at most `max_groups`."""
    groups = [list(g) for g in groups]
    sizes = list(sizes)
    while len(groups) > max_groups:
        i = min(range(len(groups) - 1), key=lambda j: sizes[j] + sizes[j + 1])
        groups[i:i + 2] = [groups[i] + groups[i + 1]]
        sizes[i:i + 2] = [sizes[i] + sizes[i + 1]]
    return groups


def _sizes(body: nn.Module, groups: list[list[str]]) -> list[int]:
    params = dict(body.named_parameters())
    return [sum(params[n].numel() for n in g) for g in groups]


def layer_groups(model: TransferModel, level: str = "coarse", max_groups: Optional[int] = None
                 ) -> list[list[nn.Parameter]]:
    """The parameters of `model` in layer groups: the body's groups (see `body_groups`), then the head."""
    if not isinstance(model, TransferModel):
        raise TypeError(f"layer_groups needs a TransferModel (body + head), got {type(model).__name__}; "
                        "for other models pass a splitter to the Learner")
    params = dict(model.body.named_parameters())
    groups = [[params[n] for n in names] for names in body_groups(model.body, level, max_groups)]
    head = list(model.head.parameters())
    if not head:
        raise ValueError("the head has no parameters: there would be nothing to train in the last group")
    return groups + [head]
