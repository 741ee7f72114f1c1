"""`torch.compile`, opt-in, one fit at a time.

`CompileCallback()` compiles `learn.model` in `before_fit` and undoes it in `after_fit` (which also runs
after an interrupt). Freezing happens between fits (`freeze_to`), so every phase of `fine_tune` is traced
with its own `requires_grad` flags: no compiled graph ever sees a freeze. Each compiled fit starts from
a clean compile cache (`torch.compiler.reset()`), so the graphs of earlier phases never count against
dynamo's recompile limit (a gradual unfreezing has many phases). That reset clears every compiled
function in the process, not only this learner's.

How the model is compiled: `model.forward` is replaced, on the instance, by the compiled forward
(`torch.compile(model.forward, ...)`), and deleted afterwards. The module itself stays the same object,
so its `state_dict` keys, `train()`/`eval()`, hooks and the optimizer's parameters are untouched (unlike
swapping in the `OptimizedModule` that `torch.compile(model)` returns, whose keys gain `_orig_mod.`).

Default backend: 'inductor' (torch's default; generates Triton kernels on CUDA and C++ on CPU, so it
needs triton on a GPU and a C++ compiler on a CPU). 'eager' or 'aot_eager' trace without generating code
(for tests and debugging). `mode='max-autotune'` is worth trying on a GPU for long fits.

Compiling is skipped, with a message, when it cannot work here (`compile_unavailable`); and when the first
compiled call of a fit fails, the forward is run uncompiled instead (an error of the model itself then
surfaces as it would without compiling) and the rest of the fit runs uncompiled. A failure to compile the
backward graph surfaces in `loss.backward()`, outside the forward, and is not caught.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..core.callback import Callback
from ..core.loop import BaseLearner

DEFAULT_BACKEND = "inductor"
CompileSpec = Union[bool, str, dict[str, Any]]


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message)


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def compile_unavailable(backend: Union[str, Callable] = DEFAULT_BACKEND,
                        device: Union[str, torch.device] = "cpu") -> Optional[str]:
    """Why `torch.compile` with `backend` cannot work for a model on `device` here; None when it should."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch >= 2.0)"
    if backend != "inductor":
        return None
    device = torch.device(device)
    if device.type == "cpu":
        compilers = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in compilers):
            return ("the inductor backend needs a C++ compiler on a CPU and none was found (install g++, or set "
                    "CXX); backend='eager' traces without one")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "the inductor backend needs triton on a GPU (pip install triton)"
    return None


def compile_model(model: nn.Module, backend: Union[str, Callable] = DEFAULT_BACKEND, mode: Optional[str] = None,
                  fullgraph: bool = False, dynamic: Optional[bool] = None, options: Optional[dict[str, Any]] = None,
                  verbose: bool = True) -> bool:
    """Replace `model.forward`, on this instance, by its compiled version (undone by `uncompile_model`).
    Returns False, with a message, when compiling is unavailable or `torch.compile` refuses."""
    reason = compile_unavailable(backend, _model_device(model))
    if reason is not None:
        _say(f"torch.compile skipped: {reason}", verbose)
        return False
    eager = model.forward
    try:
        compiled = torch.compile(eager, backend=backend, mode=mode, fullgraph=fullgraph, dynamic=dynamic,
                                 options=options)
    except Exception as error:  # e.g. "Dynamo is not supported on Python 3.x", an unknown backend or mode
        _say(f"torch.compile skipped: {type(error).__name__}: {error}", verbose)
        return False
    failed = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:
                failed = True
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                _say(f"torch.compile failed ({type(error).__name__}: {first_line}); running uncompiled", verbose)
        return eager(*args, **kwargs)  # outside the except: a genuine model error surfaces as it would

    model.forward = forward  # an instance attribute, found before the class's forward
    return True


def uncompile_model(model: nn.Module) -> None:
    """Undo `compile_model`: the class's own forward again."""
    model.__dict__.pop("forward", None)


def is_compiled(model: nn.Module) -> bool:
    """True while `model` runs a forward set by `compile_model`."""
    return "forward" in model.__dict__


class CompileCallback(Callback):
    """Compile `learn.model` for each fit (see the module docstring); arguments go to `torch.compile`.
    `reset=True` clears torch's compile caches before each compiled fit."""
    order = -10  # after FeatureCache, which may swap the model for its head
    learn: BaseLearner

    def __init__(self, backend: Union[str, Callable] = DEFAULT_BACKEND, mode: Optional[str] = None,
                 fullgraph: bool = False, dynamic: Optional[bool] = None, options: Optional[dict[str, Any]] = None,
                 reset: bool = True, verbose: bool = True):
        self.backend, self.mode, self.fullgraph, self.dynamic, self.options = backend, mode, fullgraph, dynamic, options
        self.reset, self.verbose = reset, verbose
        self._compiled: Optional[nn.Module] = None

    def before_fit(self) -> None:
        self._compiled = None
        model = self.learn.model
        if is_compiled(model):
            return  # compiled by someone else: leave it to them
        if self.reset and compile_unavailable(self.backend, _model_device(model)) is None:
            torch.compiler.reset()
        if compile_model(model, self.backend, self.mode, self.fullgraph, self.dynamic, self.options, self.verbose):
            self._compiled = model

    def after_fit(self) -> None:
        if self._compiled is not None:
            uncompile_model(self._compiled)
            self._compiled = None


def compile_callback(spec: CompileSpec) -> Optional[CompileCallback]:
    """The callback for a Learner's `compile=` argument: False/None: none; True: the default backend;
    a string: a `torch.compile` mode ('default', 'reduce-overhead', 'max-autotune'...); a dict: keyword
    arguments of `CompileCallback` (backend, mode, fullgraph, dynamic, options, reset, verbose)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return CompileCallback()
    if isinstance(spec, str):
        return CompileCallback(mode=spec)
    if isinstance(spec, dict):
        try:
            return CompileCallback(**spec)
        except TypeError as error:
            raise TypeError(f"compile={spec!r}: {error}; the keys are backend, mode, fullgraph, dynamic, options, "
                            "reset, verbose") from None
    raise TypeError(f"compile must be True/False, a torch.compile mode string or a dict of options, got {spec!r}")
