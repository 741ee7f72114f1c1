"""Weights that fit a model, and copies of them: `check_state_dict` names everything that does not fit before
`load_state_dict` runs; `to_cpu_copy` keeps a snapshot off the GPU."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

SHOWN_KEYS = 10


def _listing(count_and_title: str, items: Sequence[str]) -> str:
    more = f", ... and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    return f"  {count_and_title}: {', '.join(items[:SHOWN_KEYS])}{more}"


FIT_HINT = ("Were they saved from another architecture, head or number of classes? Build the learner exactly as the "
            "one that saved them.")


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], source: str,
                     hint: str = FIT_HINT, strict: bool = True) -> None:
    """Raise a ValueError naming everything that does not fit when `given` (read from `source`) cannot be
    loaded into a model whose state dict is `expected`: keys missing from the file and keys the model does not
    have (`strict` only: otherwise they are skipped), tensors of another shape, values that are not tensors.
    `hint` ends the message."""
    missing = [k for k in expected if k not in given] if strict else []
    extra = [k for k in given if k not in expected] if strict else []
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}" for k in expected
              if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != expected[k].shape]
    not_tensors = [k for k in given if k in expected and not isinstance(given[k], torch.Tensor)]
    if not (missing or extra or shapes or not_tensors):
        return
    parts = [f"the weights in {source} do not fit this model:"]
    for title, items in (("keys of the model missing from the file", missing),
                         ("keys in the file that the model does not have", extra),
                         ("keys with a different shape", shapes), ("values in the file that are not tensors",
                                                                   not_tensors)):
        if items:
            parts.append(_listing(f"{len(items)} {title}", items))
    parts.append(hint)
    raise ValueError("\n".join(parts))


def to_cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor copied to the CPU (so a GPU model is not held twice on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)

