"""Using an exported model: `load_learner(path)` rebuilds it from its folder (config.json + model.safetensors,
see `export_format`) without pickle and without the training code, and returns a `Predictor`.

`Predictor.predict(item)` gives what the learner's `predict` gives (`(label, index, probabilities)` for a
single-label classifier; multi-label and regression: `tasks.decode_prediction`) with the exporting learner's evaluation
preprocessing: on the CPU, bit for bit what the learner's own `predict` gives (both in fp32). A config of a
newer format, weights that do not fit, a config with unknown keys or wrong types, and a folder that is not an
export each give a clear error (`InvalidExportError`, `FileNotFoundError`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..core.device import as_model_input
from ..core.losses import activate
from ..core.tasks import decode_prediction
from ..data.preprocess import item_to_model_input
from ..utils.hub import download_files, hub_repo_id
from ..utils.state_dicts import check_state_dict
from .export_format import (CONFIG_FILE, InvalidExportError, WEIGHTS_FILE, build_model, check_config,
                            check_config_matches_weights)


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

    `path`: an export folder, or `'hf-hub:owner/name[@revision]'` for one pushed to the Hugging Face Hub
    (`learn.push_to_hub`), downloaded into the Hub cache or read from it (`HF_HUB_OFFLINE=1`; see `hub`).
    Needs nothing but fastfreeze (and timm): no training code, no data, no pickle. `factory`: the function the
    model was exported with `factory=`, for a body timm does not build by name (see the module docstring).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if hub_repo_id(path) is not None:
        path = download_files(str(path), [CONFIG_FILE, WEIGHTS_FILE])
    folder = _export_folder(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidExportError(f"{folder / CONFIG_FILE} is not valid JSON ({e}): the file is damaged") from e
    check_config(config, str(folder / CONFIG_FILE))
    model = build_model(config, factory)
    check_config_matches_weights(config, folder / WEIGHTS_FILE, str(folder / CONFIG_FILE))
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
    """An exported model ready for inference: `predict(item)` -> `(label, index, probabilities)` for a
    single-label classifier (multi-label: `(labels, mask, probabilities)`; regression: `(value, values, values)`).

    `item` is an image file path, a PIL image, or an array/tensor image (preprocessed as the learner's
    validation data was), or an already preprocessed `(C, H, W)` float input: which one an array or tensor is
    depends on its dtype and range only (`preprocess.is_preprocessed`, docs/input.md); NaN or infinite values
    are refused, naming the item. `predict_batch(x)` takes a
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
        self.task: str = config["task"]
        self.threshold: float = config["threshold"] if config["threshold"] is not None else 0.5
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
            if item.is_floating_point() and not bool(torch.isfinite(item).all()):
                raise ValueError(f"cannot predict on this tensor of shape {tuple(item.shape)}: it holds "
                                 f"{int((~torch.isfinite(item)).sum())} NaN or infinite value(s), for which every "
                                 f"output would be NaN. Fix the input first, or leave it out")
            return item
        return item_to_model_input(item, self.data_config, resize_method=self.resize_method)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model outputs for a preprocessed batch, on the CPU."""
        x = x.to(self.device)
        return self.model(as_model_input(x, self.channels_last)).cpu()

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """What the learner's loss implies: softmax (cross-entropy), sigmoid (BCE with logits), or nothing."""
        return activate(self.activation_name, out)

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (or activated outputs) for a preprocessed batch `(B, C, H, W)`."""
        return self.activation(self.forward(x))

    def predict(self, item: Any) -> tuple[Any, Any, torch.Tensor]:
        """What the learner's `predict` gives for one item (`tasks.decode_prediction`): `(label, index,
        probabilities)` for a single-label model (the class name when the vocab is known), `(labels, mask,
        probabilities)` for multi-label (the tags above the exported threshold), `(value, values, values)`
        for regression."""
        probs = self.predict_batch(self.preprocess(item).unsqueeze(0))[0]
        return decode_prediction(self.task, probs, self.vocab, self.threshold)
