"""LoRA adapters on a model through `peft` (docs/lora.md): which modules of a timm body get one by default, adding
them, finding them, and the model's weights with the adapters merged in (what `export` writes).

peft is an optional extra (`pip install 'fastfreeze[peft]'`), imported only to add adapters: finding and merging
adapters already in a model needs no import (their modules are peft's own classes, which bring their methods).

A LoRA adapter on a Linear `W` (out x in) adds `B @ A * alpha / r` to it, with `A` (r x in) drawn at random and
`B` (out x r) zero, so the adapted model starts out as the pretrained one; on a Conv2d (kernel k x k, one group)
`A` is a conv of `in -> r` channels with the base kernel and `B` a 1x1 conv of `r -> out` channels:
`r * (in * k * k + out)` parameters.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn

# timm family (the body's class name) -> the names, relative to the body, of the modules that get adapters
# by default: their last dotted parts, within the body's `blocks`/`stages`.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "VisionTransformer": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),  # attention and MLP linears
    "ConvNeXt": ("mlp.fc1", "mlp.fc2"),  # the pointwise (inverted bottleneck) linears of each block
    "EfficientNet": ("conv_pw", "conv_pwl"),  # the 1x1 pointwise convs of each block
    "MobileNetV3": ("conv_pw", "conv_pwl"),
}
ADAPTER_PARENTS = ("blocks", "stages")  # default targets lie under these top-level children of the body
PEFT_HINT = "pip install 'fastfreeze[peft]' (or pip install peft)"


def default_targets(body: nn.Module) -> tuple[str, ...]:
    """The default target suffixes for a timm body's family (`DEFAULT_TARGETS`, read from its class name); a
    ValueError naming the supported families, and `targets=`, for any other body."""
    family = type(body).__name__
    if family not in DEFAULT_TARGETS:
        supported = ", ".join(f"{name} ({'/'.join(t)})" for name, t in DEFAULT_TARGETS.items())
        raise ValueError(f"LoRA has no default target modules for a {family} body: the supported timm families "
                         f"are {supported}. Name the modules yourself with LoRA(targets=[...]): module names or "
                         "their last dotted parts, e.g. targets=['fc1', 'fc2'] (Linear or Conv2d modules)")
    return DEFAULT_TARGETS[family]


def find_targets(model: nn.Module, suffixes: Sequence[str], within: Optional[Sequence[str]] = None) -> list[str]:
    """The full names of the Linear and Conv2d modules of `model` whose name is one of `suffixes` or ends with
    `.<suffix>`, in order; with `within`, only those below one of these module names. A suffix that names no
    module, or names another kind of module, is a ValueError."""
    if isinstance(suffixes, str) or not suffixes:
        raise ValueError(f"targets must be a non-empty list of module names, got {suffixes!r}")
    found: list[str] = []
    for suffix in suffixes:
        matches = [(name, m) for name, m in model.named_modules()
                   if (name == suffix or name.endswith("." + suffix))
                   and (within is None or any(name.startswith(w + ".") for w in within))]
        wrong = [f"{name} ({type(m).__name__})" for name, m in matches if type(m) not in (nn.Linear, nn.Conv2d)]
        if wrong:
            raise ValueError(f"LoRA target {suffix!r} names modules that are neither nn.Linear nor nn.Conv2d: "
                             f"{', '.join(wrong[:4])}: name only Linear or Conv2d modules (more dotted parts "
                             "make a name more specific, e.g. 'attn.proj')")
        if not matches:
            raise ValueError(f"LoRA target {suffix!r} names no module of the model: give module names as "
                             "model.named_modules() prints them, or their last dotted parts (e.g. 'fc1')")
        found += [name for name, _ in matches if name not in found]
    return found


def add_adapters(model: nn.Module, module_names: Sequence[str], r: int, alpha: float, dropout: float) -> None:
    """Put a LoRA adapter (rank `r`, scaling `alpha / r`, `dropout` on its input) on each module named in
    `module_names` (full names), in place, with peft's `inject_adapter_in_model`. The base weights stay the same
    tensors; each adapted module becomes a peft layer holding its `base_layer`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ImportError(f"LoRA needs the peft package ({e}): {PEFT_HINT}") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(module_names), bias="none")
    inject_adapter_in_model(config, model)


def is_adapter(module: nn.Module) -> bool:
    """True for a module peft put in place of an adapted one (it holds the original as `base_layer`)."""
    return type(module).__module__.startswith("peft.") and hasattr(module, "get_base_layer")


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted modules of `model` by name (empty for a model without adapters)."""
    return {name: m for name, m in model.named_modules() if is_adapter(m)}


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an adapted module adds (its LoRA matrices), not those of its base layer."""
    return [p for name, p in module.named_parameters() if not name.startswith("base_layer.")]


def merged_model(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter merged into its base layer (`W + B @ A * alpha / r`) and the base layer
    back in its place: the plain architecture, loadable without peft. `model` itself (without adapters: returned
    as it is) is unchanged."""
    adapted = adapter_modules(model)
    if not adapted:
        return model
    merged = copy.deepcopy(model)
    for name in adapted:
        module = merged.get_submodule(name)
        with torch.no_grad():
            module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()`, with the adapters merged in when it has any (`merged_model`): the keys and shapes of
    the model without adapters."""
    return merged_model(model).state_dict()
