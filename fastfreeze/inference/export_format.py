"""The export format: what `config.json` of an export holds, how it is checked, and how a model is rebuilt
from it (docs/export.md). Plain JSON only: building a model from a config imports nothing the config names.

`check_config` checks a parsed config entirely (format, version, every key and type, and values that cannot be
right even when the config is intact: a std of 0, an activation timm does not know, a body built with
`features_only`, dropout outside [0, 1), a vocabulary that is not the head's outputs) before anything is built;
`check_config_matches_weights` compares it with the checksum and the copy of the exported config that
`model.safetensors` keeps in its metadata (`weights_metadata`), naming every value that was changed; `build_model` rebuilds the model with fresh weights; `layer_spec`/`build_layer` turn a head made of
plain torch layers into JSON and back; `build_spec` records how `vision_learner` built a learner.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch.nn as nn

from ..core.losses import ACTIVATIONS
from ..core.tasks import SINGLE_LABEL, TASKS
from ..data.preprocess import RESIZE_METHODS
from ..models.body import TransferModel, cut_classifier, remove_unused
from ..models.head import AdaptiveConcatPool2d, create_head, projection_head
from ..utils.checks import check_dropout, check_layer_sizes, is_int

FORMAT_NAME = "fastfreeze-export"
FORMAT_VERSION = 3  # 2: the task, the multi-label threshold and the head's y_range (a version 1 config reads as
# a single-label model, as it was written); 3: model.safetensors' metadata holds config.json's checksum and a copy
# (checked by load_learner; exports of formats 1 and 2 have none and load without the check)
CHECKSUM_SINCE = 3
# the keys of model.safetensors' metadata (safetensors keeps a str -> str dict in the file's header)
METADATA_FORMAT, METADATA_CHECKSUM, METADATA_CONFIG = "format", "config_sha256", "config"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
# timm arguments an export never passes on: the weights come from model.safetensors, the head is separate
FORBIDDEN_TIMM_KWARGS = ("pretrained", "checkpoint_path", "num_classes", "pretrained_cfg", "pretrained_cfg_overlay")
MAX_DEPTH = 16  # nesting of Sequential heads

Factory = Union[str, Callable[..., nn.Module]]


class InvalidExportError(ValueError):
    """A folder or config that is not a valid fastfreeze export (or one this version cannot read)."""


# -------------------------------------------------------------------------------------------------
# plain layers of a head: type name -> (class, constructor arguments read from the module)
# -------------------------------------------------------------------------------------------------
LAYERS: dict[str, tuple[type, tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "LayerNorm": (nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias")),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "ReLU": (nn.ReLU, ("inplace",)),
    "GELU": (nn.GELU, ("approximate",)),
    "SiLU": (nn.SiLU, ("inplace",)),
    "Tanh": (nn.Tanh, ()),
    "Sigmoid": (nn.Sigmoid, ()),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Identity": (nn.Identity, ()),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size",)),
    "AdaptiveConcatPool2d": (AdaptiveConcatPool2d, ("size",)),
}


# -------------------------------------------------------------------------------------------------
# checking JSON values: (description, predicate) pairs
# -------------------------------------------------------------------------------------------------
Check = tuple[str, Callable[[Any], bool]]


def _is_number(v: Any) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


INT: Check = ("an int", is_int)
POSITIVE_INT: Check = ("a positive int", lambda v: is_int(v) and v > 0)
NUMBER: Check = ("a finite number", _is_number)
BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
STR: Check = ("a string", lambda v: isinstance(v, str))
DICT: Check = ("a JSON object", lambda v: isinstance(v, dict))
INT_LIST: Check = ("a list of ints", lambda v: isinstance(v, list) and all(is_int(x) for x in v))
NUMBER_LIST: Check = ("a list of numbers", lambda v: isinstance(v, list) and all(_is_number(x) for x in v))
STR_LIST: Check = ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))


def _or_none(check: Check) -> Check:
    return (f"{check[0]} or null", lambda v: v is None or check[1](v))


def _either(a: Check, b: Check) -> Check:
    return (f"{a[0]} or {b[0]}", lambda v: a[1](v) or b[1](v))


def _one_of(values: Sequence[str]) -> Check:
    return (f"one of {list(values)}", lambda v: v in values)


# the type of every constructor argument in LAYERS
LAYER_ARGS: dict[str, Check] = {
    "in_features": POSITIVE_INT, "out_features": POSITIVE_INT, "num_features": POSITIVE_INT, "bias": BOOL,
    "eps": NUMBER, "momentum": _or_none(NUMBER), "affine": BOOL, "track_running_stats": BOOL,
    "normalized_shape": INT_LIST, "elementwise_affine": BOOL, "p": NUMBER, "inplace": BOOL,
    "approximate": _one_of(("none", "tanh")), "start_dim": INT, "end_dim": INT,
    "output_size": _either(INT, ("a list of ints or nulls", lambda v: isinstance(v, list)
                                 and all(x is None or is_int(x) for x in v))),
    "size": POSITIVE_INT,
}


def check_object(obj: Any, where: str, fields: dict[str, Check]) -> dict[str, Any]:
    """`obj` must be a JSON object with exactly the keys of `fields`, each passing its check."""
    if not isinstance(obj, dict):
        raise InvalidExportError(f"{where} must be a JSON object, found {type(obj).__name__}")
    unknown = sorted(set(obj) - set(fields))
    missing = sorted(set(fields) - set(obj))
    if unknown or missing:
        raise InvalidExportError(f"{where} has unknown keys {unknown} and lacks keys {missing}: the config was "
                                 f"edited or written by another program (expected exactly {sorted(fields)})")
    for key, (description, ok) in fields.items():
        if not ok(obj[key]):
            raise InvalidExportError(f"{where}.{key} must be {description}, found {obj[key]!r}")
    return obj


# -------------------------------------------------------------------------------------------------
# layers <-> JSON
# -------------------------------------------------------------------------------------------------
def layer_spec(module: nn.Module, name: str = "head") -> dict[str, Any]:
    """A plain layer (one of `LAYERS`) or an `nn.Sequential` of them, as JSON: `{"type": ..., args...}`."""
    if type(module) is nn.Sequential:
        return {"type": "Sequential", "layers": [layer_spec(m, f"{name}.{i}") for i, m in enumerate(module)]}
    for type_name, (cls, arg_names) in LAYERS.items():
        if type(module) is cls:
            spec: dict[str, Any] = {"type": type_name}
            for arg in arg_names:
                value = getattr(module, arg)
                if arg == "bias":
                    value = value is not None
                spec[arg] = list(value) if isinstance(value, tuple) else value
            return spec
    raise InvalidExportError(
        f"{name} is a {type(module).__module__}.{type(module).__qualname__}, which an export cannot rebuild from a "
        f"config: a head must be fastai's default head, a projection head, or an nn.Sequential of these plain "
        f"layers: {', '.join(LAYERS)}. Build the head from them (vision_learner(head=[...]))")


def build_layer(spec: Any, where: str = "model.head.module", depth: int = 0) -> nn.Module:
    """The module a `layer_spec` describes; an unknown type or a wrong argument is an InvalidExportError."""
    if depth > MAX_DEPTH:
        raise InvalidExportError(f"{where} nests Sequential layers more than {MAX_DEPTH} deep")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise InvalidExportError(f"{where} must be a JSON object with a 'type', found {spec!r}")
    kind = spec["type"]
    if kind == "Sequential":
        layers = check_object(spec, where, {"type": STR, "layers": ("a list", lambda v: isinstance(v, list))})["layers"]
        return nn.Sequential(*(build_layer(s, f"{where}.layers[{i}]", depth + 1) for i, s in enumerate(layers)))
    if kind not in LAYERS:
        raise InvalidExportError(f"{where}: unknown layer type {kind!r}; an export holds only {', '.join(LAYERS)} "
                                 "and Sequential")
    cls, arg_names = LAYERS[kind]
    args = check_object(spec, where, {"type": STR, **{a: LAYER_ARGS[a] for a in arg_names}})
    kwargs = {a: tuple(args[a]) if isinstance(args[a], list) else args[a] for a in arg_names}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidExportError(f"{where}: cannot build {kind}({kwargs}): {e}") from e


# -------------------------------------------------------------------------------------------------
# what the learner is made of, as JSON
# -------------------------------------------------------------------------------------------------
def plain_json(value: Any, what: str) -> Any:
    """`value` if JSON can hold it exactly (tuples become lists), else a clear error."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidExportError(f"{what} must be plain JSON values (numbers, strings, lists, dicts): {e}") from e


def factory_name(factory: Factory) -> tuple[str, Callable[..., nn.Module]]:
    """`(module:qualname, the function)` for a function given by itself or by that name; the name must import
    back to the same function (not a lambda, a local function, or a method of an instance)."""
    if isinstance(factory, str):
        module_name, _, qualname = factory.partition(":")
        if not module_name or not qualname:
            raise InvalidExportError(f"factory must be 'module:qualname' (e.g. 'torchvision.models:resnet18'), "
                                     f"got {factory!r}")
        return factory, _import(module_name, qualname)
    if not callable(factory):
        raise TypeError(f"factory must be a function building the model, or its name 'module:qualname'; got "
                        f"{type(factory).__name__}")
    name = f"{getattr(factory, '__module__', None)}:{getattr(factory, '__qualname__', None)}"
    try:
        found = _import(*name.split(":"))
    except InvalidExportError:
        found = None
    if found is not factory:
        raise InvalidExportError(f"the factory {factory!r} cannot be found again by its name {name!r}: define it at "
                                 "the top level of an importable module (not a lambda or a local function)")
    return name, factory


def _import(module_name: str, qualname: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise InvalidExportError(f"cannot import {module_name}:{qualname}: {e}") from e
    return obj


def build_spec(arch: Any, timm_kwargs: Optional[dict[str, Any]] = None, head: Any = None,
               output_dim: Optional[int] = None, n_out: Optional[int] = None, lin_ftrs: Optional[Sequence[int]] = None,
               ps: Union[float, Sequence[float]] = 0.5, concat_pool: bool = True, first_bn: bool = True,
               bn_final: bool = False, lin_first: bool = False,
               y_range: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """How `vision_learner` built a learner, from its own arguments, kept as `learn.build_spec` for export:
    the timm name and keyword arguments, and the head (default head arguments, projection `output_dim`,
    or None for a head given as layers or a module, which export reads from the model)."""
    if output_dim is not None:
        head_spec: Optional[dict[str, Any]] = {"kind": "projection", "output_dim": output_dim}
    elif head is not None:
        head_spec = None
    else:
        head_spec = {"kind": "default", "n_out": n_out, "lin_ftrs": None if lin_ftrs is None else list(lin_ftrs),
                     "ps": ps if isinstance(ps, (int, float)) else list(ps), "concat_pool": concat_pool,
                     "first_bn": first_bn, "bn_final": bn_final, "lin_first": lin_first,
                     "y_range": None if y_range is None else [float(v) for v in y_range]}
    return {"arch": arch if isinstance(arch, str) else None, "timm_kwargs": dict(timm_kwargs or {}),
            "head": head_spec}


# -------------------------------------------------------------------------------------------------
# config checking and model building
# -------------------------------------------------------------------------------------------------
DATA_CONFIG_FIELDS: dict[str, Check] = {
    "input_size": ("a list of 3 positive ints", lambda v: INT_LIST[1](v) and len(v) == 3 and min(v) > 0),
    "interpolation": STR, "mean": NUMBER_LIST, "std": NUMBER_LIST, "crop_pct": NUMBER, "crop_mode": STR}


def check_config(config: Any, where: str = "config.json") -> dict[str, Any]:
    """Check a parsed `config.json` entirely (format, version, every key and type) before anything is built."""
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise InvalidExportError(f"{where} is not a fastfreeze export config (its 'format' is not {FORMAT_NAME!r})")
    version = config.get("format_version")
    if not is_int(version) or version < 1:
        raise InvalidExportError(f"{where} has format_version {version!r}: expected a positive int")
    if version > FORMAT_VERSION:
        raise InvalidExportError(
            f"{where} is format version {version}, written by a newer fastfreeze ({config.get('fastfreeze_version')}); "
            f"this one reads up to version {FORMAT_VERSION}: upgrade fastfreeze (pip install -U fastfreeze)")
    fields = {"format": STR, "format_version": INT, "fastfreeze_version": STR, "model": DICT,
              "body_info": _or_none(DICT), "n_out": POSITIVE_INT, "vocab": _or_none(STR_LIST),
              "preprocessing": _or_none(DICT), "activation": _one_of(ACTIVATIONS), "channels_last": BOOL}
    if version >= 2:
        fields.update(task=_one_of(TASKS), threshold=_or_none(NUMBER))
    check_object(config, where, fields)
    if version == 1:  # read as it was written: a single-label model
        config.update(task=SINGLE_LABEL, threshold=None)
    model = config["model"]
    kind = model.get("kind")
    if kind == "transfer":
        check_object(model, f"{where}:model", {"kind": STR, "body": DICT, "head": DICT})
        if config["body_info"] is None:
            raise InvalidExportError(f"{where}: a transfer model needs body_info")
        check_object(config["body_info"], f"{where}:body_info", {"num_features": POSITIVE_INT, "pooled": BOOL})
        _check_body(model["body"], f"{where}:model.body")
        _check_head(model["head"], f"{where}:model.head", version)
    elif kind == "factory":
        check_object(model, f"{where}:model", {"kind": STR, "factory": STR, "kwargs": DICT})
    else:
        raise InvalidExportError(f"{where}:model.kind must be 'transfer' or 'factory', found {kind!r}")
    if config["preprocessing"] is not None:
        pre = check_object(config["preprocessing"], f"{where}:preprocessing",
                            {"data_config": DICT, "resize_method": _one_of(RESIZE_METHODS)})
        check_object(pre["data_config"], f"{where}:preprocessing.data_config", DATA_CONFIG_FIELDS)
    vocab = config["vocab"]
    if vocab is not None and config["activation"] != "none" and len(vocab) != config["n_out"]:
        raise InvalidExportError(f"{where}: vocab has {len(vocab)} classes but n_out is {config['n_out']}")
    _check_values(config, where)
    return config


def _check_values(config: dict[str, Any], where: str) -> None:
    """Values of a well-formed config that cannot be right, whether or not the config was edited: each named
    with what it breaks and what to do."""
    again = "put back the value the export wrote, or export the learner again (learn.export)"
    model = config["model"]
    if model["kind"] == "transfer":
        outputs = _head_outputs(model["head"])
        if outputs is not None and outputs != config["n_out"]:
            raise InvalidExportError(f"{where}: the head has {outputs} outputs but n_out is {config['n_out']}: the "
                                     f"vocabulary and predictions would not match the model; {again}")
    if config["preprocessing"] is not None:
        data_config = config["preprocessing"]["data_config"]
        if not data_config["std"] or not all(s > 0 for s in data_config["std"]) or \
                len(data_config["mean"]) != len(data_config["std"]):
            raise InvalidExportError(
                f"{where}:preprocessing.data_config.std is {data_config['std']} (mean {data_config['mean']}): every "
                "image is divided by the std, so each value must be > 0 (ImageNet's are [0.229, 0.224, 0.225]), one "
                f"per mean; {again}")
    threshold = config["threshold"]
    if threshold is not None and not 0 <= threshold <= 1:
        raise InvalidExportError(f"{where}: threshold is {threshold}, but it is a probability (a multi-label tag "
                                 f"is reported above it): it must be in [0, 1]; {again}")


def _head_outputs(head: dict[str, Any]) -> Optional[int]:
    """The number of outputs a checked head spec gives (None when its layers do not say)."""
    if head["kind"] == "default":
        return head["n_out"]
    if head["kind"] == "projection":
        return head["output_dim"]
    linears = [spec for spec in _layer_specs(head["module"]) if spec.get("type") == "Linear"]
    return linears[-1].get("out_features") if linears else None


def _layer_specs(spec: Any, depth: int = 0) -> list[dict[str, Any]]:
    """The plain layers of a `layer_spec` tree, in order."""
    if not isinstance(spec, dict) or depth > MAX_DEPTH:
        return []
    if spec.get("type") == "Sequential" and isinstance(spec.get("layers"), list):
        return [s for layer in spec["layers"] for s in _layer_specs(layer, depth + 1)]
    return [spec]


def _check_body(body: Any, where: str) -> None:
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind == "timm":
        check_object(body, where, {"kind": STR, "arch": STR, "timm_kwargs": DICT, "removed": STR_LIST})
        kwargs = body["timm_kwargs"]
        bad = [k for k in kwargs if k in FORBIDDEN_TIMM_KWARGS]
        if bad:
            raise InvalidExportError(f"{where}.timm_kwargs may not hold {bad}")
        if kwargs.get("features_only"):
            raise InvalidExportError(
                f"{where}.timm_kwargs has features_only={kwargs['features_only']!r}: such a body returns a list of "
                "feature maps, not the features a head takes, and an export never has one. Remove it, or export "
                "the learner again (learn.export)")
        if isinstance(kwargs.get("act_layer"), str) and not _timm_knows_activation(kwargs["act_layer"]):
            raise InvalidExportError(
                f"{where}.timm_kwargs.act_layer is {kwargs['act_layer']!r}, an activation timm does not know (e.g. "
                "'relu', 'gelu', 'silu'). Put back the value the export wrote, or export the learner again "
                "(learn.export)")
    elif kind == "cut":
        check_object(body, where, {"kind": STR, "factory": STR, "kwargs": DICT,
                                    "input_size": ("a list of 3 positive ints",
                                                   lambda v: INT_LIST[1](v) and len(v) == 3 and min(v) > 0)})
    else:
        raise InvalidExportError(f"{where}.kind must be 'timm' or 'cut', found {kind!r}")


def _timm_knows_activation(name: str) -> bool:
    from timm.layers import get_act_layer
    try:
        get_act_layer(name)
    except (KeyError, ValueError):
        return False
    return True


def _check_head(head: Any, where: str, version: int = FORMAT_VERSION) -> None:
    kind = head.get("kind") if isinstance(head, dict) else None
    if kind == "default":
        fields = {"kind": STR, "n_out": POSITIVE_INT, "lin_ftrs": _or_none(INT_LIST),
                  "ps": _either(NUMBER, NUMBER_LIST), "concat_pool": BOOL, "first_bn": BOOL, "bn_final": BOOL,
                  "lin_first": BOOL}
        if version >= 2:
            fields["y_range"] = _or_none(("a list of 2 numbers", lambda v: NUMBER_LIST[1](v) and len(v) == 2))
        check_object(head, where, fields)
        if version == 1:
            head["y_range"] = None
        try:
            check_dropout(head["ps"]), check_layer_sizes(head["lin_ftrs"])
        except (TypeError, ValueError) as e:
            raise InvalidExportError(f"{where}: {e}. Put back the value the export wrote, or export the learner "
                                     "again (learn.export)") from e
    elif kind == "projection":
        check_object(head, where, {"kind": STR, "output_dim": POSITIVE_INT})
    elif kind == "layers":
        check_object(head, where, {"kind": STR, "module": DICT})
    else:
        raise InvalidExportError(f"{where}.kind must be 'default', 'projection' or 'layers', found {kind!r}")


def build_model(config: dict[str, Any], factory: Optional[Callable[..., nn.Module]] = None) -> nn.Module:
    """The model a checked config describes, with fresh weights (on the CPU)."""
    model = config["model"]
    if model["kind"] == "factory":
        return _call_factory(model, factory)(**model["kwargs"])
    info = config["body_info"]
    return TransferModel(_build_body(model["body"], factory), _build_head(model["head"], info))


def _call_factory(spec: dict[str, Any], factory: Optional[Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    if factory is None:
        raise InvalidExportError(
            f"this export rebuilds its model with {spec['factory']}(**{spec['kwargs']}): pass that function, "
            f"load_learner(path, factory=...). (Code named in a file is never imported by load_learner.)")
    name = f"{getattr(factory, '__module__', None)}:{getattr(factory, '__qualname__', None)}"
    if name != spec["factory"]:
        raise InvalidExportError(f"the export was made with factory {spec['factory']}, but {name} was passed")
    return factory


def _build_body(spec: dict[str, Any], factory: Optional[Callable[..., nn.Module]]) -> nn.Module:
    if spec["kind"] == "cut":
        return cut_classifier(_call_factory(spec, factory)(**spec["kwargs"]), input_size=tuple(spec["input_size"]),
                              inplace=True).body
    if not timm.is_model(spec["arch"]):
        raise InvalidExportError(f"timm {timm.__version__} has no architecture {spec['arch']!r}: install the timm "
                                 "version the export was made with")
    try:
        body = timm.create_model(spec["arch"], pretrained=False, num_classes=0, **spec["timm_kwargs"])
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        raise InvalidExportError(f"timm cannot build {spec['arch']!r} with the config's timm_kwargs "
                                 f"{spec['timm_kwargs']} ({type(e).__name__}: {e}): put back the values the export "
                                 "wrote, or export the learner again (learn.export)") from e
    remove_unused(body, spec["removed"])
    return body


def _build_head(spec: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    nf, pool = info["num_features"], not info["pooled"]
    if spec["kind"] == "default":
        args = {k: v for k, v in spec.items() if k != "kind"}
        return create_head(nf, pool=pool, **args)
    if spec["kind"] == "projection":
        return projection_head(nf, spec["output_dim"], pool=pool)
    return build_layer(spec["module"])


# -------------------------------------------------------------------------------------------------
# the config's checksum, kept in the weights file
# -------------------------------------------------------------------------------------------------
def canonical_json(config: dict[str, Any]) -> str:
    """The config as the text its checksum is taken of: sorted keys, no spaces, UTF-8 characters as they are."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_checksum(config: dict[str, Any]) -> str:
    """The sha256 (hex) of `canonical_json(config)`."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def weights_metadata(config: dict[str, Any]) -> dict[str, str]:
    """What `export` writes into model.safetensors' metadata: the format, the config's checksum and a copy of the
    config (so that a changed value can be named)."""
    return {METADATA_FORMAT: FORMAT_NAME, METADATA_CHECKSUM: config_checksum(config),
            METADATA_CONFIG: canonical_json(config)}


def read_weights_metadata(file: Path) -> dict[str, str]:
    """The metadata of a safetensors file (empty when it has none); an unreadable file is an InvalidExportError."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidExportError(f"{file} is not a readable safetensors file ({e})") from e


def check_config_matches_weights(config: dict[str, Any], weights_file: Path, where: str = CONFIG_FILE) -> None:
    """Refuse a config that is not the one exported with `weights_file`: its checksum must be the one the weights'
    metadata keeps, and the values that differ from the copy kept there are named. A config of format 1 or 2 with
    weights without a checksum (an older export) is not checked."""
    metadata = read_weights_metadata(weights_file)
    stored = metadata.get(METADATA_CHECKSUM)
    if stored is None:
        if config["format_version"] < CHECKSUM_SINCE:
            return
        raise InvalidExportError(
            f"{weights_file} holds no checksum of {where}, which every export of format {CHECKSUM_SINCE} writes "
            "into it: the weights file was replaced or rewritten by another program (without its metadata), so "
            "nothing says the config describes these weights. Export the learner again (learn.export), or put back "
            "the original model.safetensors")
    if config_checksum(config) == stored:
        return
    copy_text = metadata.get(METADATA_CONFIG, "")
    if hashlib.sha256(copy_text.encode("utf-8")).hexdigest() != stored:
        raise InvalidExportError(f"{where} does not match the checksum {weights_file} keeps of the exported config, "
                                 "and the copy kept beside it is damaged: export the learner again (learn.export)")
    changes = config_changes(json.loads(copy_text), config, Path(where).name)
    more = f" (and {len(changes) - 5} more)" if len(changes) > 5 else ""
    raise InvalidExportError(
        f"{where} was changed after the export (its checksum is not the one {Path(weights_file).name} keeps): "
        f"{'; '.join(changes[:5])}{more}. load_learner rebuilds the model and reads its outputs as the config "
        "says, so an edited config gives wrong predictions without an error: put back the exported values, or "
        "export the learner again with the settings you want (learn.export)")


def config_changes(exported: Any, current: Any, name: str, path: str = "") -> list[str]:
    """Each value of `current` that differs from `exported`, in words (`name` is the file's name); lists are
    compared whole."""
    if isinstance(exported, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(exported) | set(current)):
            where = f"{path}.{key}" if path else str(key)
            if key not in current:
                out.append(f"{name} lacks {where}, which the export wrote as {exported[key]!r}")
            elif key not in exported:
                out.append(f"{name}'s {where} is {current[key]!r}, which the export did not write")
            else:
                out += config_changes(exported[key], current[key], name, where)
        return out
    if exported == current and type(exported) is type(current):
        return []
    return [f"{name}'s {path or 'content'} is {current!r} but the export wrote {exported!r}"]
