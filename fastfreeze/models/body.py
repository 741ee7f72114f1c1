"""The body of a transfer model: a pretrained network with its classifier taken off.

`create_timm_body` builds one from a timm architecture name, `cut_classifier` from any other model
(torchvision, a user's `nn.Module`), and `inspect_body` describes a body that already has no classifier.
Each returns a `BodyInfo`: the body, the number of features it outputs, whether those features are
already pooled to `(B, C)` or still spatial `(B, C, H, W)`, and the preprocessing the weights expect.

Every body is checked with one dummy forward and backward pass (batch of 1, eval mode):
parameters that get no gradient are never used by the forward, so training them is pointless.
A submodule none of whose parameters is used (an auxiliary classifier, a norm the pooling skips) is
replaced by `nn.Identity()` and its parameter names are listed in `BodyInfo.removed`; a parameter that is
unused although its module runs cannot be taken out safely, so it stays, is listed in `BodyInfo.unused`,
and a warning names it (torch optimizers skip parameters whose `.grad` is None, so it never changes).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..data.preprocess import with_input_size
from ..utils.hub import HUB_PREFIXES

InputSize = Union[int, tuple[int, int, int]]

# Attributes torchvision (and many user models) give their final classifier, in the order they are tried.
CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")


class TransferModel(nn.Module):
    """`head(body(x))`: a pretrained body followed by a new head."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def transfer_model_problem(model: nn.Module) -> Optional[str]:
    """Why `model` is not a body + head (None when it is a `TransferModel`), in the words of the features that need
    one (the feature cache, the few-images probe)."""
    if isinstance(model, TransferModel):
        return None
    return f"the model is a {type(model).__name__}, not a TransferModel (body + head)"


@dataclass
class BodyInfo:
    """A body and what a head needs to know about it.

    `num_features`: channels (spatial body) or features (pooled body) of the body's output.
    `pooled`: True when the body outputs `(B, num_features)`, False for `(B, num_features, H, W)`.
    `data_config`: timm-style preprocessing (`input_size`, `mean`, `std`, `interpolation`, `crop_pct`, ...).
    `removed`: parameter names of submodules the forward never used, replaced by `nn.Identity()`.
    `unused`: parameter names the forward never used that could not be removed (see the module docstring).
    """
    body: nn.Module
    num_features: int
    pooled: bool
    data_config: dict[str, Any]
    arch: str
    removed: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _as_input_size(input_size: InputSize) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) != 3:
        raise ValueError(f"input_size must be an int or (channels, height, width), got {input_size!r}")
    return size  # type: ignore[return-value]


def _probe(body: nn.Module, input_size: tuple[int, int, int], check_unused: bool = True
           ) -> tuple[torch.Tensor, list[str]]:
    """Run one image through `body` in eval mode; return the output (detached) and the names of the
    parameters that got no gradient (empty when `check_unused` is False)."""
    first = next(body.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.randn(1, *input_size, device=device, dtype=dtype)
    was_training = body.training
    body.eval()
    try:
        if not check_unused:
            with torch.no_grad():
                out = body(x)
            return _check_output(out), []
        named = [(n, p) for n, p in body.named_parameters() if p.requires_grad]
        with torch.enable_grad():
            out = _check_output(body(x))
            if not named or not out.requires_grad:  # nothing trainable, or a forward that detaches: no verdict
                return out.detach(), []
            grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
        return out.detach(), [n for (n, _), g in zip(named, grads) if g is None]
    finally:
        body.train(was_training)


def _check_output(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the body's forward returned a {type(out).__name__}, not a tensor: a body must return "
                         "one feature tensor, (B, C) or (B, C, H, W)")
    return out


def remove_unused(body: nn.Module, unused: list[str]) -> tuple[list[str], list[str]]:
    """Replace by `nn.Identity()` every outermost submodule all of whose parameters are unused.
    Returns (removed parameter names, unused parameter names left in place)."""
    unused_set = set(unused)
    removed_modules: list[str] = []
    removed: list[str] = []
    for name, module in list(body.named_modules()):  # parents come before their children
        if not name or any(name.startswith(done + ".") for done in removed_modules):
            continue
        names = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in unused_set for n in names):
            _set_submodule(body, name, nn.Identity())
            removed_modules.append(name)
            removed.extend(names)
    removed_set = set(removed)
    return removed, [n for n in unused if n not in removed_set]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _describe(body: nn.Module, input_size: tuple[int, int, int], data_config: dict[str, Any], arch: str,
              check_unused: bool) -> BodyInfo:
    """Probe `body`, take out unused modules, and decide spatial vs pooled from its output shape."""
    out, unused = _probe(body, input_size, check_unused)
    return _finish(body, out, unused, data_config, arch)


def _finish(body: nn.Module, out: torch.Tensor, unused: list[str], data_config: dict[str, Any],
            arch: str) -> BodyInfo:
    removed, left = remove_unused(body, unused)
    if left:
        warnings.warn(f"{arch}: the forward pass never uses these parameters, which stay in the model but "
                      f"will never change: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
    if out.ndim == 4:
        pooled = False
    elif out.ndim == 2:
        pooled = True
    else:
        raise ValueError(f"{arch}: the body outputs shape {tuple(out.shape)}; a body must output pooled features "
                         "(B, C) or a spatial map (B, C, H, W). Pool or select tokens in the body first.")
    return BodyInfo(body=body, num_features=int(out.shape[1]), pooled=pooled, data_config=data_config,
                    arch=arch, removed=removed, unused=left)


def _timm_data_config(model: nn.Module, timm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """timm's data config, with the image size and channels the model was actually built with."""
    from timm.data import resolve_data_config
    args: dict[str, Any] = {}
    in_chans = timm_kwargs.get("in_chans")
    img_size = timm_kwargs.get("img_size")
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        args["input_size"] = (in_chans or 3, h, w)
    elif in_chans is not None:
        args["in_chans"] = in_chans
    return dict(resolve_data_config(args, model=model))


def _is_timm_spatial(model: nn.Module, out: torch.Tensor) -> bool:
    """NCHW output whose channel count is the model's feature count (not NHWC, not tokens)."""
    widths = {getattr(model, "num_features", None), getattr(model, "head_hidden_size", None)}
    return out.ndim == 4 and out.shape[1] in widths


def create_timm_body(arch: str, pretrained: bool = False, check_unused: bool = True,
                     **timm_kwargs: Any) -> BodyInfo:
    """A timm model without its classifier (`num_classes=0`), spatial when the architecture allows.

    The model is first built with `global_pool=''`; when that yields an NCHW map with `num_features`
    channels (CNNs, ConvNeXt, MaxViT...) the body is spatial (`pooled=False`) and the head does the pooling.
    Otherwise (ViT/DeiT/EVA/BEiT tokens, Swin's NHWC maps, models that cannot switch pooling off) it is
    rebuilt with timm's own default pooling and outputs `(B, num_features)` (`pooled=True`).
    Pass `global_pool=...` yourself to skip the choice. Other keyword arguments go to `timm.create_model`
    (`img_size`, `in_chans`, `drop_path_rate`, `pretrained_cfg_overlay`, ...). A pooled body is built twice,
    so with `pretrained=True` its weights are loaded twice (from timm's cache).
    The probe runs at the model's input size (`data_config['input_size']`); `check_unused=False` skips
    its backward pass (and so the unused-parameter check).
    """
    import timm
    if "num_classes" in timm_kwargs:
        raise ValueError("create_timm_body always builds the model with num_classes=0 (the head is separate): "
                         "do not pass num_classes")
    if not arch.startswith((*HUB_PREFIXES, "local-dir:")) and not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0]}*")[:8]
        hint = f" Close names: {', '.join(close)}." if close else " See timm.list_models('*name*')."
        raise ValueError(f"timm has no architecture named {arch!r}.{hint}")

    def build(**pool: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=pretrained, num_classes=0, **pool, **timm_kwargs)

    if "global_pool" not in timm_kwargs:
        try:
            model = build(global_pool="")
            data_config = _timm_data_config(model, timm_kwargs)
            out, unused = _probe(model, tuple(data_config["input_size"]), check_unused)
            if _is_timm_spatial(model, out):
                return _finish(model, out, unused, data_config, arch)
        except (AssertionError, TypeError, ValueError, NotImplementedError, RuntimeError):
            pass  # this architecture cannot switch its pooling off: an error here resurfaces below if it is real
    model = build()
    data_config = _timm_data_config(model, timm_kwargs)
    out, unused = _probe(model, tuple(data_config["input_size"]), check_unused)
    return _finish(model, out, unused, data_config, arch)


def inspect_body(body: nn.Module, input_size: InputSize = (3, 224, 224), arch: Optional[str] = None,
                 data_config: Optional[dict[str, Any]] = None, check_unused: bool = True) -> BodyInfo:
    """Describe a module that already outputs features (no classifier): feature count and pooled or not,
    from one dummy forward at `input_size`. Unused submodules are removed in place (see module docstring).
    `data_config` defaults to ImageNet preprocessing at `input_size`."""
    size = _as_input_size(input_size)
    if data_config is None:
        data_config = with_input_size({"input_size": size}, None)  # the rest from timm's ImageNet defaults
    return _describe(body, size, data_config, arch or type(body).__name__, check_unused)


def cut_classifier(model: nn.Module, input_size: InputSize = (3, 224, 224), inplace: bool = False,
                   check_unused: bool = True) -> BodyInfo:
    """Take the final classifier off `model` (works on a deep copy unless `inplace=True`).

    The classifier is the first of the attributes `fc`, `classifier`, `head`, `heads` that holds an
    `nn.Linear`, else the last `nn.Linear` of the model in module order. A classifier that is itself an
    `nn.Linear` becomes `nn.Identity()`. An `nn.Sequential` classifier is cut just before its last Linear,
    dropping any Dropout right before it: what precedes stays in the body (torchvision ConvNeXt keeps its
    LayerNorm2d and Flatten, MobileNetV3 its 1024-wide pre-logits layer, EfficientNet becomes empty).
    Any other classifier module has its last Linear replaced by `nn.Identity()`.
    A timm model (one with `reset_classifier`) gets `reset_classifier(0)` and keeps its pooling.
    `num_features` and `pooled` come from one dummy forward at `input_size` (an int or (C, H, W)).
    """
    body = model if inplace else copy.deepcopy(model)
    size = _as_input_size(input_size)
    arch = type(model).__name__
    if hasattr(body, "reset_classifier") and type(body).__module__.startswith("timm."):
        body.reset_classifier(0)
        return inspect_body(body, size, arch=arch, data_config=_timm_data_config(body, {}),
                            check_unused=check_unused)
    _cut(body, arch)
    return inspect_body(body, size, arch=arch, check_unused=check_unused)


def _cut(body: nn.Module, arch: str) -> None:
    for attr in CLASSIFIER_ATTRS:
        classifier = getattr(body, attr, None)
        if isinstance(classifier, nn.Module) and _last_linear(classifier) is not None:
            setattr(body, attr, _without_last_linear(classifier))
            return
    last = _last_linear(body)
    if last is None:
        raise ValueError(f"{arch} has no nn.Linear classifier to cut (looked at the attributes "
                         f"{', '.join(CLASSIFIER_ATTRS)} and the whole model). If it already outputs features, "
                         "use inspect_body(model) instead.")
    if not last:
        raise ValueError(f"{arch} is itself an nn.Linear: there is no body left once the classifier is cut")
    _set_submodule(body, last, nn.Identity())


def _last_linear(module: nn.Module) -> Optional[str]:
    """Qualified name of the last nn.Linear in `module` ('' when `module` is one), or None."""
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _without_last_linear(classifier: nn.Module) -> nn.Module:
    if isinstance(classifier, nn.Linear):
        return nn.Identity()
    if isinstance(classifier, nn.Sequential):
        children = list(classifier.children())
        k = max(i for i, m in enumerate(children) if _last_linear(m) is not None)
        if isinstance(children[k], nn.Linear):
            while k > 0 and isinstance(children[k - 1], nn.Dropout):
                k -= 1
            return classifier[:k]
    last = _last_linear(classifier)
    _set_submodule(classifier, last, nn.Identity())  # type: ignore[arg-type]
    return classifier
