"""Which modules count as normalization layers.

Every normalization type is treated alike by the freezing and weight-decay rules:
BatchNorm (1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d), InstanceNorm, LayerNorm
(timm's LayerNorm2d), GroupNorm and RMSNorm. fastai leaves GroupNorm out; we do not.
"""
from __future__ import annotations

import torch.nn as nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, timm BatchNormAct2d
    nn.LayerNorm,                    # also timm LayerNorm / LayerNorm2d (subclasses)
    nn.GroupNorm,                    # also timm GroupNormAct
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)


def _timm_norm_types() -> tuple[type[nn.Module], ...]:
    """timm norm layers that do not subclass a torch norm (e.g. its own RMSNorm)."""
    try:
        import timm.layers as tl
    except ImportError:  # pragma: no cover - timm is a declared dependency
        return ()
    names = ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d", "FrozenBatchNormAct2d")
    return tuple(getattr(tl, n) for n in names if isinstance(getattr(tl, n, None), type))


def is_norm(module: nn.Module) -> bool:
    """True for any normalization layer (torch's or timm's)."""
    return isinstance(module, NORM_TYPES + _timm_norm_types())


def norm_param_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that belong directly to normalization layers of `model`."""
    return {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}


def no_decay_param_ids(model: nn.Module) -> set[int]:
    """ids of parameters exempt from weight decay by default: norm parameters and biases."""
    ids = norm_param_ids(model)
    ids.update(id(p) for name, p in model.named_parameters() if name.endswith("bias"))
    return ids
