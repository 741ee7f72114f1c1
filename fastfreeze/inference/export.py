"""Export a trained learner for inference and load it back, without pickle.

`export_learner(learn, path)` (also `learn.export(path)`) writes a folder with two files:

- `model.safetensors`: every tensor of the model's state dict (safetensors holds tensors only: loading it
  runs no code), with the sha256 of `config.json` and a copy of it in its metadata (`weights_metadata`), so that
  `load_learner` refuses a config edited after the export, naming what changed;
  LoRA adapters merged into the weights they adapt (`models.lora.merged_state_dict`);
- `config.json`: how to rebuild the model and use it, as plain JSON:

```
{"format": "fastfreeze-export", "format_version": 3, "fastfreeze_version": "0.1.0",
 "model": {"kind": "transfer",
           "body": {"kind": "timm", "arch": "resnet18", "timm_kwargs": {"global_pool": ""}, "removed": []},
           "head": {"kind": "default", "n_out": 3, "lin_ftrs": null, "ps": 0.5, ..., "y_range": null}},
 "body_info": {"num_features": 512, "pooled": false},
 "n_out": 3, "vocab": ["cat", "dog", "fox"], "activation": "softmax", "channels_last": true,
 "task": "single_label", "threshold": null,
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
`predict(item)` gives what the learner's `predict` gives for its task (`task`, and `threshold` for
multi-label: docs/export.md) with the learner's evaluation preprocessing: on the CPU, bit for bit (both in
fp32). A config of a newer format,
weights that do not fit, a config with unknown keys or wrong types, and a folder that is not an export
each give a clear error (`InvalidExportError`, `FileNotFoundError`).

The export is verified before it is put in place: it is written to a temporary folder, loaded back with
`load_learner`, and its outputs compared with the learner's on a fixed input (`verify=False` skips this).
Like every file fastfreeze writes, it goes through `utils.files.write_files`: rank 0 only, never half-written.
The format itself lives in `export_format`, loading in `predictor`.

`push_to_hub(learn, 'org/name')` (also `learn.push_to_hub`) uploads that folder, with a model card, to a
Hugging Face Hub model repository; `load_learner('hf-hub:org/name')` loads it back (see `hub`). A body built
from a Hub name (`vision_learner(dls, 'hf-hub:timm/...')`) is exported as the timm architecture and arguments
its Hub config names, so the export loads without the Hub.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
import torch.nn as nn

from ..core.device import as_model_input
from ..core.loop import BaseLearner
from ..core.losses import activation_for
from ..core.tasks import MULTI_LABEL, task_of
from ..data.preprocess import with_input_size
from ..models.body import TransferModel
from ..models.lora import merged_state_dict
from ..utils.files import write_files
from ..utils.hub import hub_repo_id, model_card, timm_model_config, upload_folder
from ..utils.ranks import is_rank_zero
from ..version import __version__
from .export_format import (CONFIG_FILE, FORBIDDEN_TIMM_KWARGS, FORMAT_NAME, FORMAT_VERSION, Factory,
                            InvalidExportError, WEIGHTS_FILE, check_config, factory_name, layer_spec, plain_json,
                            weights_metadata)
from .predictor import Predictor, load_learner


def _body_spec(learn: BaseLearner, build: dict[str, Any], timm_kwargs: Optional[dict[str, Any]],
               factory: Optional[tuple[str, Callable]], factory_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
    info = learn.body_info
    if factory is not None:
        return {"kind": "cut", "factory": factory[0],
                "kwargs": plain_json(dict(factory_kwargs or {}), "factory_kwargs"),
                "input_size": [int(s) for s in learn.data_config["input_size"]]}
    arch = build.get("arch") or info.arch
    kwargs = dict(build.get("timm_kwargs", {}) if timm_kwargs is None else timm_kwargs)
    if hub_repo_id(arch) is not None:  # a Hub model: the timm architecture and arguments its config.json names
        _, arch, model_args = timm_model_config(arch)
        kwargs = {**model_args, **kwargs}
    is_timm_body = type(info.body).__module__.startswith("timm.")
    if not (isinstance(arch, str) and is_timm_body and timm.is_model(arch)):
        raise InvalidExportError(
            f"the body ({info.arch}) is not a timm architecture built by name, so the config cannot say how to "
            "rebuild it. Pass factory=<the function that builds the model you gave vision_learner, e.g. "
            "torchvision.models.resnet18> and factory_kwargs=<its arguments, e.g. {'weights': None}>; "
            "load_learner then needs the same factory=")
    bad = [k for k in kwargs if k in FORBIDDEN_TIMM_KWARGS]
    if bad:
        raise InvalidExportError(f"timm_kwargs {bad} cannot be exported: the weights come from the export itself")
    if not info.pooled and "global_pool" not in kwargs:
        kwargs["global_pool"] = ""  # create_timm_body's spatial body
    return {"kind": "timm", "arch": arch, "timm_kwargs": plain_json(kwargs, "timm_kwargs"),
            "removed": list(info.removed)}


def _head_spec(learn: BaseLearner, build: dict[str, Any]) -> dict[str, Any]:
    head = build.get("head")
    if head is not None and head.get("kind") == "default":
        keys = ("n_out", "lin_ftrs", "ps", "concat_pool", "first_bn", "bn_final", "lin_first", "y_range")
        return plain_json({"kind": "default", **{k: head[k] for k in keys}}, "the head's arguments")
    if head is not None and head.get("kind") == "projection":
        return {"kind": "projection", "output_dim": int(head["output_dim"])}
    return {"kind": "layers", "module": layer_spec(learn.model.head)}


def export_config(learn: BaseLearner, timm_kwargs: Optional[dict[str, Any]] = None, factory: Optional[Factory] = None,
                  factory_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The `config.json` of `learn` (see the module docstring)."""
    named = factory_name(factory) if factory is not None else None
    build = dict(getattr(learn, "build_spec", None) or {})
    body_info = getattr(learn, "body_info", None)
    if isinstance(learn.model, TransferModel) and body_info is not None:
        model = {"kind": "transfer", "body": _body_spec(learn, build, timm_kwargs, named, factory_kwargs),
                 "head": _head_spec(learn, build)}
        info = {"num_features": int(body_info.num_features), "pooled": bool(body_info.pooled)}
    elif named is not None:
        model = {"kind": "factory", "factory": named[0], "kwargs": plain_json(dict(factory_kwargs or {}),
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
        resize = getattr(learn.dls, "resize_method", "crop")
        preprocessing = {"data_config": plain_json(with_input_size(dict(data_config), None), "data_config"),
                         "resize_method": resize}
    vocab = getattr(learn.dls, "vocab", None)
    task = task_of(learn.loss_func, learn.dls)
    threshold = float(getattr(learn.loss_func, "thresh", 0.5)) if task == MULTI_LABEL else None
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "fastfreeze_version": __version__,
            "model": model, "body_info": info, "n_out": _n_out(learn),
            "vocab": None if vocab is None else [str(v) for v in vocab],
            "preprocessing": preprocessing, "activation": activation_for(learn.loss_func),
            "channels_last": bool(learn.channels_last), "task": task, "threshold": threshold}


def _n_out(learn: BaseLearner) -> int:
    """The model's output width: the last Linear of the head, else `dls.c`."""
    head = getattr(learn.model, "head", learn.model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    n_out = linears[-1].out_features if linears else getattr(learn.dls, "c", None)
    if not isinstance(n_out, int):
        raise InvalidExportError("cannot tell the model's number of outputs: give DataLoaders a `c` or `vocab`")
    return n_out


# -------------------------------------------------------------------------------------------------
# export and load
# -------------------------------------------------------------------------------------------------
def export_learner(learn: BaseLearner, path: Union[str, Path], timm_kwargs: Optional[dict[str, Any]] = None,
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
    for key, value in merged_state_dict(learn.model).items():  # LoRA adapters merged in: no peft to load
        if not isinstance(value, torch.Tensor):
            raise InvalidExportError(f"the model's state dict holds a {type(value).__name__} at {key!r}: only "
                                     "tensors can be exported")
        state[key] = value.detach().to("cpu", copy=True).contiguous()

    def fill(tmp: Path) -> list[str]:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=weights_metadata(config))
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, allow_nan=False)
        if verify:
            _verify(learn, tmp, factory_name(factory)[1] if factory is not None else None)
        return [WEIGHTS_FILE, CONFIG_FILE]  # the config last: the export is complete once it is in place

    return write_files(folder, fill, "the export to")


@torch.no_grad()
def _verify(learn: BaseLearner, folder: Path, factory: Optional[Callable[..., nn.Module]]) -> None:
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
        expected = model(as_model_input(x.to(learn.device), learn.channels_last)).float().cpu()
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


def _example_input(learn: BaseLearner, predictor: "Predictor") -> Optional[torch.Tensor]:
    if predictor.data_config is not None:
        size = tuple(predictor.data_config["input_size"])
        return torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    valid = getattr(learn.dls, "valid", None)
    if valid is None:
        return None
    with torch.random.fork_rng(devices=[]):  # starting a DataLoader draws a seed from the global RNG
        return next(iter(valid))[0][:2].cpu()


def push_to_hub(learn: BaseLearner, repo_id: str, token: Optional[str] = None, private: Optional[bool] = None,
                commit_message: str = "Upload fastfreeze export", timm_kwargs: Optional[dict[str, Any]] = None,
                factory: Optional[Factory] = None, factory_kwargs: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Export `learn` (`export_learner`, verified) with a model card (`README.md`: architecture, layer groups,
    preprocessing, the Recorder's per-epoch history) and upload the folder to the Hub model repository
    `repo_id` ('owner/name', created if needed). `token`: default the one `huggingface-cli login` saved, or
    `HF_TOKEN`. Returns the commit's URL (None on ranks other than 0, which upload nothing). Load it back with
    `load_learner('hf-hub:owner/name')`."""
    hub_repo_id(f"hf-hub:{repo_id}")  # a clear error for a malformed id, before exporting
    if "@" in repo_id:
        raise ValueError(f"push_to_hub takes a repository id 'owner/name' without a revision, got {repo_id!r}")
    if not is_rank_zero():
        return None
    with tempfile.TemporaryDirectory(prefix="fastfreeze-hub-") as tmp:
        folder = export_learner(learn, Path(tmp) / "export", timm_kwargs=timm_kwargs, factory=factory,
                                factory_kwargs=factory_kwargs)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        card = model_card(repo_id, config, learn.groups_table(), learn.recorder.values)
        (folder / "README.md").write_text(card, encoding="utf-8")
        return upload_folder(folder, repo_id, token=token, private=private, commit_message=commit_message)
