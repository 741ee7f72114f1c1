"""ONNX export, to serve a trained model outside Python (onnxruntime, TensorRT, a browser): `to_onnx(learn,
path)` (also `learn.to_onnx(path)`), see docs/export.md.

The model is exported in evaluation mode, in fp32 on the CPU (a copy: the learner is not touched), with
torch's exporter (`torch.onnx.export`, the `torch.export`-based one), its input a batch of preprocessed images
`(batch, C, H, W)` whose batch size may vary (`dynamic_batch`), its output the model's raw outputs (logits for
a classifier: apply the activation named in the metadata). The file's metadata (`metadata_props`) carries
what serving needs besides the graph: `vocab` (JSON list of class names), `activation` ('softmax',
'sigmoid' or 'none'), `task` ('single_label', 'multi_label' or 'regression', `core/tasks.py`) and `threshold`
(JSON: the probability above which a multi-label tag is reported, null otherwise), `data_config` (JSON: input size, mean, std, interpolation, crop) and `resize_method`.

With `verify=True` (the default) the written file is run by onnxruntime on the example batch (real images
from the validation set when there is one) and its outputs compared with the PyTorch model's: a difference
above `atol` is an error. Needs `onnx`, `onnxscript` and (to verify) `onnxruntime`:
`pip install 'fastfreeze[onnx]'`. Written through `utils.files.write_file`: rank 0 only, never half-written.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..core.loop import BaseLearner
from ..core.losses import activation_for
from ..core.tasks import MULTI_LABEL, task_of
from ..utils.files import write_file
from ..version import __version__


def onnx_metadata(learn: BaseLearner) -> dict[str, str]:
    """The metadata written into the ONNX file (module docstring), as strings."""
    vocab = getattr(learn.dls, "vocab", None)
    task = task_of(learn.loss_func, learn.dls)
    data_config = getattr(learn, "data_config", None) or getattr(learn.dls, "data_config", None)
    return {"producer": f"fastfreeze {__version__}",
            "vocab": json.dumps(None if vocab is None else [str(v) for v in vocab]),
            "activation": activation_for(learn.loss_func), "task": task,
            "threshold": json.dumps(float(getattr(learn.loss_func, "thresh", 0.5)) if task == MULTI_LABEL else None),
            "data_config": json.dumps(None if not data_config else {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in data_config.items()}),
            "resize_method": str(getattr(learn.dls, "resize_method", "crop"))}


def example_batch(learn: BaseLearner, n: int = 4) -> torch.Tensor:
    """Up to `n` (at least 2) preprocessed inputs: the first validation batch's, else random ones of the data
    config's input size."""
    valid = getattr(learn.dls, "valid", None)
    if valid is not None:
        with torch.random.fork_rng(devices=[]):  # starting a DataLoader draws a seed from the global RNG
            x = next(iter(valid))[0][:n]
        if isinstance(x, torch.Tensor) and len(x) >= 2:
            return x.detach().float().cpu().contiguous()
    data_config = getattr(learn, "data_config", None) or getattr(learn.dls, "data_config", None)
    if not data_config:
        raise ValueError("to_onnx needs an example input: give the DataLoaders a validation set of at least 2 "
                         "items, or pass example=<a batch of preprocessed inputs>")
    size = tuple(data_config["input_size"])
    return torch.randn(max(n, 2), *size, generator=torch.Generator().manual_seed(0))


def to_onnx(learn: BaseLearner, path: Union[str, Path], example: Optional[torch.Tensor] = None,
            dynamic_batch: bool = True, opset_version: Optional[int] = None, verify: bool = True,
            atol: float = 1e-4) -> Path:
    """Export `learn.model` to the ONNX file `path` (relative to `learn.path`, as `learn.save`); module docstring.

    `example`: a preprocessed batch to trace with and to verify on (default `example_batch(learn)`: real
    validation images). `dynamic_batch`: the file takes any batch size. `verify`: run the file with
    onnxruntime on `example` and require every output within `atol` of the PyTorch model's. Returns the file.
    """
    try:
        import onnx  # noqa: F401  (torch's exporter needs it, with onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"to_onnx needs onnx and onnxscript ({e}): pip install 'fastfreeze[onnx]'") from None
    file = learn.path / path
    x = example_batch(learn) if example is None else example.detach().float().cpu().contiguous()
    if len(x) < 2 and dynamic_batch:
        raise ValueError("the example batch needs at least 2 items for a file that takes any batch size "
                         "(a batch of 1 would be fixed into the graph)")
    model = copy.deepcopy(learn.model).float().cpu().eval()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes, external_data=False,
                                opset_version=opset_version, verbose=False)
    program.model.metadata_props.update(onnx_metadata(learn))
    write_file(file, lambda tmp: program.save(str(tmp)))
    if verify and file.exists():
        with torch.no_grad():
            expected = model(x).float().numpy()
        got = run_onnx(file, x)
        diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not diff <= atol:
            raise RuntimeError(f"the ONNX file {file} does not reproduce the model: outputs differ by up to "
                               f"{diff:.3g} (> atol={atol:g}) on the example batch. Try another opset_version, or "
                               "pass verify=False to keep the file anyway")
    return file


def run_onnx(file: Union[str, Path], x: Any) -> Any:
    """The ONNX file's outputs for the batch `x` (a tensor or array), with onnxruntime on the CPU (a NumPy array)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"checking an ONNX file needs onnxruntime ({e}): pip install onnxruntime, or "
                          "to_onnx(..., verify=False)") from None
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    inputs = x.numpy() if isinstance(x, torch.Tensor) else x
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]
