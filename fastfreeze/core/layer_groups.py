"""Layer groups of any model: the default splitter, the check that a splitter put every parameter in exactly
one group, and the labels `show_groups` prints. (How a timm body is split into groups is models/groups.py.)"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable, Union

import torch.nn as nn

from ..utils.checks import WholeNumberError, is_int

Group = Union[nn.Module, Iterable[nn.Parameter]]
Splitter = Callable[[nn.Module], Sequence[Any]]


def default_splitter(model: nn.Module) -> list[nn.Module]:
    """One group per top-level child that has parameters (the whole model if it has no children)."""
    children = [c for c in model.children() if any(True for _ in c.parameters())]
    return children if children else [model]


def split_model(model: nn.Module, splitter: Splitter) -> list[list[nn.Parameter]]:
    """The layer groups `splitter(model)` gives, as lists of parameters, checked: every parameter of the model in
    exactly one group, every group with at least one."""
    raw = list(splitter(model))
    if not raw:
        raise ValueError("the splitter returned no layer groups")
    groups = [list(g.parameters()) if isinstance(g, nn.Module) else list(g) for g in raw]
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    for i, g in enumerate(groups):
        if not g:
            raise ValueError(f"layer group {i} has no parameters: every group needs at least one")
        for p in g:
            if id(p) not in names:
                raise ValueError(f"layer group {i} holds a parameter (shape {tuple(p.shape)}) that is not part "
                                 "of the model: the splitter must return the model's own parameters")
            if id(p) in seen:
                raise ValueError(f"parameter {names[id(p)]!r} is in layer groups {seen[id(p)]} and {i}: "
                                 "every parameter must be in exactly one group")
            seen[id(p)] = i
    missing = [n for i, n in names.items() if i not in seen]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"{len(missing)} parameters are in no layer group ({shown}): "
                         "the splitter must put every parameter in exactly one group")
    return groups


def frozen_count(n: Any, n_groups: int) -> int:
    """How many groups `freeze_to(n)` freezes: `n` if `n >= 0` else `n_groups + n`, for an int `n` in
    `[-n_groups, n_groups - 1]` (else a `WholeNumberError` naming the valid range)."""
    if not is_int(n):
        raise WholeNumberError(f"freeze_to takes an int group index, got {n!r}")
    g = n_groups
    if not -g <= n <= g - 1:
        raise WholeNumberError(f"freeze_to({n}) is out of range: this learner has {g} layer groups, so n must be in "
                               f"[{-g}, {g - 1}] (0 or {-g} unfreezes all, {g - 1} or -1 trains the last group only)")
    return int(n) if n >= 0 else g + int(n)


def group_names(model: nn.Module, groups: Sequence[Group], max_parts: int = 3) -> list[str]:
    """A short label per group: the outermost modules (or parameters) that lie wholly in that group,
    e.g. 'conv1, bn1', 'layer2', 'blocks.11, norm', 'head'; more than `max_parts` parts are shown as
    'first ... last (n parts)'. For a model made of a `body` and a `head` (a `TransferModel`) the 'body.' prefix
    is left out (except for a body's own `head` submodule, shown as 'body.head' so that 'head' is always the new
    head)."""
    names = {id(p): n for n, p in model.named_parameters()}
    body_and_head = [name for name, _ in model.named_children()] == ["body", "head"]
    group_of: dict[str, int] = {}
    for i, group in enumerate(groups):
        params = group.parameters() if isinstance(group, nn.Module) else group
        for p in params:
            if id(p) not in names:
                raise ValueError(f"group {i} holds a parameter that is not in the model")
            group_of[names[id(p)]] = i

    groups_under: dict[str, set[int]] = {}  # dotted prefix -> the groups of the parameters under it
    for name, i in group_of.items():
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            groups_under.setdefault(".".join(parts[:k]), set()).add(i)
    labels: list[list[str]] = [[] for _ in groups]
    for name, i in group_of.items():
        parts = name.split(".")
        prefixes = (".".join(parts[:k]) for k in range(1, len(parts) + 1))
        label = next(p for p in prefixes if groups_under[p] == {i})
        if body_and_head and label.startswith("body.") and not label.startswith("body.head"):
            label = label[len("body."):]  # 'body.' is implied, except for a body's own 'head' submodule
        if label not in labels[i]:
            labels[i].append(label)
    out = []
    for parts in labels:
        if len(parts) > max_parts:
            out.append(f"{parts[0]} ... {parts[-1]} ({len(parts)} parts)")
        else:
            out.append(", ".join(parts) or "(empty)")
    return out
