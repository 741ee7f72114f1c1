"""Export a trained learner for inference and load it back, without pickle.

`export_learner(learn, path)` (also `learn.export(path)`) writes a folder with two files:

- `model.safetensors`: every tensor of the model's state dict (safetensors holds tensors only: loading it
  runs no code);
- `config.json`: how to rebuild the model and use it, as plain JSON:

```
{"format": "fastfreeze-export", "format_version": 1, "fastfreeze_version": "0.1.0",
 "model": {"kind": "transfer",
           "body": {"kind": "timm", "arch": "resnet18", "timm_kwargs": {"global_pool": ""}, "removed": []},
           "head": {"kind": "default", "n_out": 3, "lin_ftrs": null, "ps": 0.5, ...}},
 "body_info": {"num_features": 512, "pooled": false},
 "n_out": 3, "vocab": ["cat", "dog", "fox"], "activation": "softmax", "channels_last": true,
 "preprocessing": {"data_config": {"input_size": [3, 224, 224], "mean": [...], ...}, "resize_method": "crop"}}
```

The body is a timm architecture name with the keyword arguments given to `timm.create_model` (rebuilt with
`pretrained=False`; the modules `create_timm_body` took out as unused are listed in `removed`), or, for a
torchvision or user model, the importable name `module:qualname` of the function that builds it, with its
keyword arguments (`factory=`): `load_learner` then needs that same function passed in (`factory=`), so no
code named in a file is ever imported. The head is fastai's default head (`create_head` arguments), a
projection head (`output_dim`), or a tree of plain torch layers (`LAYERS`). A plain `Learner` whose model is
not a body and a head can be exported with `factory=` for its whole model.

`load_learner(path)` rebuilds the model, loads the weights strictly and returns a `Predictor` whose
`predict(item)` gives `(label, index, probabilities)` with the learner's evaluation preprocessing: on the
CPU, bit for bit what the exporting learner's `predict` gives (both in fp32). A config of a newer format,
weights that do not fit, a config with unknown keys or wrong types, and a folder that is not an export
each give a clear error (`InvalidExportError`, `FileNotFoundError`).

The export is verified before it is put in place: it is written to a temporary folder, loaded back with
`load_learner`, and its outputs compared with the learner's on a fixed input (`verify=False` skips this).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import check_state_dict
from .head import AdaptiveConcatPool2d, create_head, projection_head

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

FORMAT_NAME = "fastfreeze-export"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
ACTIVATIONS = ("softmax", "sigmoid", "none")
RESIZE_METHODS = ("crop", "squish")
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


INT: Check = ("an int", _is_int)
POSITIVE_INT: Check = ("a positive int", lambda v: _is_int(v) and v > 0)
NUMBER: Check = ("a finite number", _is_number)
BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
STR: Check = ("a string", lambda v: isinstance(v, str))
DICT: Check = ("a JSON object", lambda v: isinstance(v, dict))
INT_LIST: Check = ("a list of ints", lambda v: isinstance(v, list) and all(_is_int(x) for x in v))
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
                                 and all(x is None or _is_int(x) for x in v))),
    "size": POSITIVE_INT,
}


def _check_object(obj: Any, where: str, fields: dict[str, Check]) -> dict[str, Any]:
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
        layers = _check_object(spec, where, {"type": STR, "layers": ("a list", lambda v: isinstance(v, list))})["layers"]
        return nn.Sequential(*(build_layer(s, f"{where}.layers[{i}]", depth + 1) for i, s in enumerate(layers)))
    if kind not in LAYERS:
        raise InvalidExportError(f"{where}: unknown layer type {kind!r}; an export holds only {', '.join(LAYERS)} "
                                 "and Sequential")
    cls, arg_names = LAYERS[kind]
    args = _check_object(spec, where, {"type": STR, **{a: LAYER_ARGS[a] for a in arg_names}})
    kwargs = {a: tuple(args[a]) if isinstance(args[a], list) else args[a] for a in arg_names}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidExportError(f"{where}: cannot build {kind}({kwargs}): {e}") from e


# -------------------------------------------------------------------------------------------------
# what the learner is made of, as JSON
# -------------------------------------------------------------------------------------------------
def _plain_json(value: Any, what: str) -> Any:
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


def _activation_name(learn: "Learner") -> str:
    """What `Learner.activation` applies for this loss."""
    if isinstance(learn.loss_func, nn.CrossEntropyLoss):
        return "softmax"
    if isinstance(learn.loss_func, nn.BCEWithLogitsLoss):
        return "sigmoid"
    return "none"


def _body_spec(learn: "Learner", build: dict[str, Any], timm_kwargs: Optional[dict[str, Any]],
               factory: Optional[tuple[str, Callable]], factory_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
    info = learn.body_info
    if factory is not None:
        return {"kind": "cut", "factory": factory[0],
                "kwargs": _plain_json(dict(factory_kwargs or {}), "factory_kwargs"),
                "input_size": [int(s) for s in learn.data_config["input_size"]]}
    import timm
    arch = build.get("arch") or info.arch
    is_timm_body = type(info.body).__module__.startswith("timm.")
    if not (isinstance(arch, str) and is_timm_body and timm.is_model(arch)):
        raise InvalidExportError(
            f"the body ({info.arch}) is not a timm architecture built by name, so the config cannot say how to "
            "rebuild it. Pass factory=<the function that builds the model you gave vision_learner, e.g. "
            "torchvision.models.resnet18> and factory_kwargs=<its arguments, e.g. {'weights': None}>; "
            "load_learner then needs the same factory=")
    kwargs = dict(build.get("timm_kwargs", {}) if timm_kwargs is None else timm_kwargs)
    bad = [k for k in kwargs if k in FORBIDDEN_TIMM_KWARGS]
    if bad:
        raise InvalidExportError(f"timm_kwargs {bad} cannot be exported: the weights come from the export itself")
    if not info.pooled and "global_pool" not in kwargs:
        kwargs["global_pool"] = ""  # create_timm_body's spatial body
    return {"kind": "timm", "arch": arch, "timm_kwargs": _plain_json(kwargs, "timm_kwargs"),
            "removed": list(info.removed)}


def build_spec(arch: Any, timm_kwargs: Optional[dict[str, Any]] = None, head: Any = None,
               output_dim: Optional[int] = None, n_out: Optional[int] = None, lin_ftrs: Optional[Sequence[int]] = None,
               ps: Union[float, Sequence[float]] = 0.5, concat_pool: bool = True, first_bn: bool = True,
               bn_final: bool = False, lin_first: bool = False) -> dict[str, Any]:
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
                     "first_bn": first_bn, "bn_final": bn_final, "lin_first": lin_first}
    return {"arch": arch if isinstance(arch, str) else None, "timm_kwargs": dict(timm_kwargs or {}),
            "head": head_spec}


def _head_spec(learn: "Learner", build: dict[str, Any]) -> dict[str, Any]:
    head = build.get("head")
    if head is not None and head.get("kind") == "default":
        keys = ("n_out", "lin_ftrs", "ps", "concat_pool", "first_bn", "bn_final", "lin_first")
        return _plain_json({"kind": "default", **{k: head[k] for k in keys}}, "the head's arguments")
    if head is not None and head.get("kind") == "projection":
        return {"kind": "projection", "output_dim": int(head["output_dim"])}
    return {"kind": "layers", "module": layer_spec(learn.model.head)}


def export_config(learn: "Learner", timm_kwargs: Optional[dict[str, Any]] = None, factory: Optional[Factory] = None,
                  factory_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The `config.json` of `learn` (see the module docstring)."""
    from . import __version__
    from .body import TransferModel
    named = factory_name(factory) if factory is not None else None
    build = dict(getattr(learn, "build_spec", None) or {})
    body_info = getattr(learn, "body_info", None)
    if isinstance(learn.model, TransferModel) and body_info is not None:
        model = {"kind": "transfer", "body": _body_spec(learn, build, timm_kwargs, named, factory_kwargs),
                 "head": _head_spec(learn, build)}
        info = {"num_features": int(body_info.num_features), "pooled": bool(body_info.pooled)}
    elif named is not None:
        model = {"kind": "factory", "factory": named[0], "kwargs": _plain_json(dict(factory_kwargs or {}),
                                                                              "factory_kwargs")}
        info = None
    else:
        raise InvalidExportError(
            f"this learner's model ({type(learn.model).__name__}) is not a vision_learner body and head, so the "
            "config cannot say how to rebuild it: pass factory=<an importable function returning the model> and "
            "factory_kwargs=<its arguments>")
    data_config = getattr(learn, "data_config", None) or getattr(learn.dls, "data_config", None)
    preprocessing = None
    if data_config:
        from .image_data import with_input_size
        resize = getattr(learn.dls, "resize_method", "crop")
        preprocessing = {"data_config": _plain_json(with_input_size(dict(data_config), None), "data_config"),
                         "resize_method": resize}
    vocab = getattr(learn.dls, "vocab", None)
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastfreeze_version": __version__,
            "model": model, "body_info": info, "n_out": _n_out(learn),
            "vocab": None if vocab is None else [str(v) for v in vocab],
            "preprocessing": preprocessing, "activation": _activation_name(learn),
            "channels_last": bool(learn.channels_last)}


def _n_out(learn: "Learner") -> int:
    """The model's output width: the last Linear of the head, else `dls.c`."""
    head = getattr(learn.model, "head", learn.model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    n_out = linears[-1].out_features if linears else getattr(learn.dls, "c", None)
    if not isinstance(n_out, int):
        raise InvalidExportError("cannot tell the model's number of outputs: give DataLoaders a `c` or `vocab`")
    return n_out


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
    if not _is_int(version) or version < 1:
        raise InvalidExportError(f"{where} has format_version {version!r}: expected a positive int")
    if version > FORMAT_VERSION:
        raise InvalidExportError(
            f"{where} is format version {version}, written by a newer fastfreeze ({config.get('fastfreeze_version')}); "
            f"this one reads up to version {FORMAT_VERSION}: upgrade fastfreeze (pip install -U fastfreeze)")
    _check_object(config, where, {
        "format": STR, "format_version": INT, "fastfreeze_version": STR, "model": DICT,
        "body_info": _or_none(DICT), "n_out": POSITIVE_INT, "vocab": _or_none(STR_LIST),
        "preprocessing": _or_none(DICT), "activation": _one_of(ACTIVATIONS), "channels_last": BOOL})
    model = config["model"]
    kind = model.get("kind")
    if kind == "transfer":
        _check_object(model, f"{where}:model", {"kind": STR, "body": DICT, "head": DICT})
        if config["body_info"] is None:
            raise InvalidExportError(f"{where}: a transfer model needs body_info")
        _check_object(config["body_info"], f"{where}:body_info", {"num_features": POSITIVE_INT, "pooled": BOOL})
        _check_body(model["body"], f"{where}:model.body")
        _check_head(model["head"], f"{where}:model.head")
    elif kind == "factory":
        _check_object(model, f"{where}:model", {"kind": STR, "factory": STR, "kwargs": DICT})
    else:
        raise InvalidExportError(f"{where}:model.kind must be 'transfer' or 'factory', found {kind!r}")
    if config["preprocessing"] is not None:
        pre = _check_object(config["preprocessing"], f"{where}:preprocessing",
                            {"data_config": DICT, "resize_method": _one_of(RESIZE_METHODS)})
        _check_object(pre["data_config"], f"{where}:preprocessing.data_config", DATA_CONFIG_FIELDS)
    vocab = config["vocab"]
    if vocab is not None and config["activation"] != "none" and len(vocab) != config["n_out"]:
        raise InvalidExportError(f"{where}: vocab has {len(vocab)} classes but n_out is {config['n_out']}")
    return config


def _check_body(body: Any, where: str) -> None:
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind == "timm":
        _check_object(body, where, {"kind": STR, "arch": STR, "timm_kwargs": DICT, "removed": STR_LIST})
        bad = [k for k in body["timm_kwargs"] if k in FORBIDDEN_TIMM_KWARGS]
        if bad:
            raise InvalidExportError(f"{where}.timm_kwargs may not hold {bad}")
    elif kind == "cut":
        _check_object(body, where, {"kind": STR, "factory": STR, "kwargs": DICT,
                                    "input_size": ("a list of 3 positive ints",
                                                   lambda v: INT_LIST[1](v) and len(v) == 3 and min(v) > 0)})
    else:
        raise InvalidExportError(f"{where}.kind must be 'timm' or 'cut', found {kind!r}")


def _check_head(head: Any, where: str) -> None:
    kind = head.get("kind") if isinstance(head, dict) else None
    if kind == "default":
        _check_object(head, where, {
            "kind": STR, "n_out": POSITIVE_INT, "lin_ftrs": _or_none(INT_LIST),
            "ps": _either(NUMBER, NUMBER_LIST), "concat_pool": BOOL, "first_bn": BOOL, "bn_final": BOOL,
            "lin_first": BOOL})
    elif kind == "projection":
        _check_object(head, where, {"kind": STR, "output_dim": POSITIVE_INT})
    elif kind == "layers":
        _check_object(head, where, {"kind": STR, "module": DICT})
    else:
        raise InvalidExportError(f"{where}.kind must be 'default', 'projection' or 'layers', found {kind!r}")


def build_model(config: dict[str, Any], factory: Optional[Callable[..., nn.Module]] = None) -> nn.Module:
    """The model a checked config describes, with fresh weights (on the CPU)."""
    model = config["model"]
    if model["kind"] == "factory":
        return _call_factory(model, factory)(**model["kwargs"])
    from .body import TransferModel
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
        from .body import cut_classifier
        return cut_classifier(_call_factory(spec, factory)(**spec["kwargs"]), input_size=tuple(spec["input_size"]),
                              inplace=True).body
    import timm
    from .body import _remove_unused
    if not timm.is_model(spec["arch"]):
        raise InvalidExportError(f"timm {timm.__version__} has no architecture {spec['arch']!r}: install the timm "
                                 "version the export was made with")
    body = timm.create_model(spec["arch"], pretrained=False, num_classes=0, **spec["timm_kwargs"])
    _remove_unused(body, spec["removed"])
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
# export and load
# -------------------------------------------------------------------------------------------------
def export_learner(learn: "Learner", path: Union[str, Path], timm_kwargs: Optional[dict[str, Any]] = None,
                   factory: Optional[Factory] = None, factory_kwargs: Optional[dict[str, Any]] = None,
                   verify: bool = True) -> Path:
    """Write `learn`'s model and how to use it to the folder `path` (`model.safetensors` + `config.json`;
    a relative `path` is taken from `learn.path`, as `learn.save` does).

    `timm_kwargs`: the keyword arguments the timm body was built with (default: what `vision_learner`
    recorded in `learn.build_spec`, else none). `factory`/`factory_kwargs`: for a body that is not a timm
    architecture (torchvision, your own module), the importable function that builds the model given to
    `vision_learner` and its arguments; for a plain Learner, the one that builds the whole model.
    `verify`: load the export back and compare its outputs with the learner's before putting it in place.
    Returns the folder.
    """
    from safetensors.torch import save_file
    folder = learn.path / path  # an absolute path stays as it is
    if folder.exists() and not folder.is_dir():
        raise InvalidExportError(f"{folder} is a file: an export is a folder (it holds {WEIGHTS_FILE} and {CONFIG_FILE})")
    config = check_config(export_config(learn, timm_kwargs, factory, factory_kwargs), "the export config")
    state = {}
    for key, value in learn.model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise InvalidExportError(f"the model's state dict holds a {type(value).__name__} at {key!r}: only "
                                     "tensors can be exported")
        state[key] = value.detach().to("cpu", copy=True).contiguous()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, allow_nan=False)
        if verify:
            _verify(learn, Path(tmp), factory_name(factory)[1] if factory is not None else None)
        folder.mkdir(exist_ok=True)
        os.replace(os.path.join(tmp, WEIGHTS_FILE), folder / WEIGHTS_FILE)
        os.replace(os.path.join(tmp, CONFIG_FILE), folder / CONFIG_FILE)  # last: the export is complete
    return folder


@torch.no_grad()
def _verify(learn: "Learner", folder: Path, factory: Optional[Callable[..., nn.Module]]) -> None:
    """Load the export from `folder` and compare its outputs with the learner's model on a fixed input."""
    hint = ("the config does not rebuild this model exactly. Pass the timm_kwargs the body was built with, or "
            "factory= for a model timm does not build by name")
    try:
        predictor = load_learner(folder, factory=factory)
    except InvalidExportError as e:
        raise InvalidExportError(f"the export does not load back: {e}\n{hint}") from e
    x = _example_input(learn, predictor)
    if x is None:
        return
    model = learn.model
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        xb = x.to(learn.device)
        if learn.channels_last and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        expected = model(xb).float().cpu()
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    got = predictor.forward(x).float()
    scale = float(expected.abs().max()) + 1e-6
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else math.inf
    if not diff <= 1e-3 * scale:  # exact on the CPU; GPU kernels (TF32) differ slightly
        raise InvalidExportError(
            f"the exported model does not reproduce the learner's outputs (largest difference {diff:.3g} for outputs "
            f"up to {scale:.3g}): {hint}. Config: {predictor.config['model']}")


def _example_input(learn: "Learner", predictor: "Predictor") -> Optional[torch.Tensor]:
    if predictor.data_config is not None:
        size = tuple(predictor.data_config["input_size"])
        return torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    valid = getattr(learn.dls, "valid", None)
    if valid is None:
        return None
    with torch.random.fork_rng(devices=[]):  # starting a DataLoader draws a seed from the global RNG
        return next(iter(valid))[0][:2].cpu()


def _export_folder(path: Union[str, Path]) -> Path:
    """The export folder for `path` (the folder, or one of its two files)."""
    path = Path(path)
    if path.name in (CONFIG_FILE, WEIGHTS_FILE) and path.is_file():
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"no export at {path}: learn.export(path) writes a folder with {WEIGHTS_FILE} and "
                                f"{CONFIG_FILE}")
    if not path.is_dir():
        raise InvalidExportError(f"{path} is a file, not a fastfreeze export (a folder with {WEIGHTS_FILE} and "
                                 f"{CONFIG_FILE}); a file written by learn.save loads with learn.load")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise InvalidExportError(f"{path} is not a fastfreeze export: it has no {' and no '.join(missing)} "
                                 "(learn.export(path) writes both)")
    return path


def load_learner(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                 factory: Optional[Callable[..., nn.Module]] = None) -> "Predictor":
    """Rebuild an exported model, load its weights strictly, and return a `Predictor` on `device`.

    Needs nothing but fastfreeze (and timm): no training code, no data, no pickle. `factory`: the function the
    model was exported with `factory=`, for a body timm does not build by name (see the module docstring).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    folder = _export_folder(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidExportError(f"{folder / CONFIG_FILE} is not valid JSON ({e}): the file is damaged") from e
    check_config(config, str(folder / CONFIG_FILE))
    model = build_model(config, factory)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidExportError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file ({e})") from e
    try:
        check_state_dict(model.state_dict(), state, str(folder / WEIGHTS_FILE))
    except ValueError as e:
        raise InvalidExportError(str(e)) from e
    model.load_state_dict(state, strict=True)
    return Predictor(model, config, device)


class Predictor:
    """An exported model ready for inference: `predict(item)` -> `(label, index, probabilities)`.

    `item` is an image file path, a PIL image, or an array/tensor image (preprocessed as the learner's
    validation data was), or an already preprocessed `(C, H, W)` float tensor. `predict_batch(x)` takes a
    preprocessed batch and returns the activated outputs (probabilities for a classifier).
    Attributes: `model` (eval mode), `vocab`, `n_out`, `data_config`, `resize_method`, `config`.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], device: Union[str, torch.device] = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.channels_last = config["channels_last"]
        self.model = model.to(self.device, memory_format=torch.channels_last) if self.channels_last else \
            model.to(self.device)
        self.model.eval()
        self.vocab: Optional[list[str]] = config["vocab"]
        self.n_out: int = config["n_out"]
        self.activation_name: str = config["activation"]
        pre = config["preprocessing"]
        self.data_config: Optional[dict[str, Any]] = None if pre is None else dict(pre["data_config"])
        self.resize_method: str = "crop" if pre is None else pre["resize_method"]

    def __repr__(self) -> str:
        return f"Predictor({type(self.model).__name__}, n_out={self.n_out}, vocab={self.vocab}, device={self.device})"

    def preprocess(self, item: Any) -> torch.Tensor:
        """One item as the model's `(C, H, W)` input (what `VisionLearner.predict` does)."""
        if self.data_config is None:
            if not isinstance(item, torch.Tensor):
                raise TypeError(f"this model takes tensors (it was exported without image preprocessing), "
                                f"got {type(item).__name__}")
            return item
        if isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim == 3 and \
                tuple(item.shape) == tuple(self.data_config["input_size"]):
            return item  # already preprocessed
        from .image_data import preprocess_image
        return preprocess_image(item, self.data_config, resize_method=self.resize_method)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model outputs for a preprocessed batch, on the CPU."""
        x = x.to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).cpu()

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """What the learner's loss implies: softmax (cross-entropy), sigmoid (BCE with logits), or nothing."""
        if self.activation_name == "softmax":
            return torch.softmax(out.float(), dim=-1)
        if self.activation_name == "sigmoid":
            return torch.sigmoid(out.float())
        return out.float()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (or activated outputs) for a preprocessed batch `(B, C, H, W)`."""
        return self.activation(self.forward(x))

    def predict(self, item: Any) -> tuple[Any, int, torch.Tensor]:
        """`(label, index, probabilities)` for one item; `label` is the class name when the vocab is known."""
        probs = self.predict_batch(self.preprocess(item).unsqueeze(0))[0]
        index = int(probs.argmax())
        return (self.vocab[index] if self.vocab and index < len(self.vocab) else index), index, probs
