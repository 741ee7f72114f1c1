"""`Learner`: the core (`core/loop.py`'s `BaseLearner`: the training loop, layer groups, freezing, evaluation,
saving) with every feature bound as a method, and the results and state those features keep, declared.

Each feature is a function of a learner in a module of its own, where its signature is written once:
`learn.fine_tune(5)` is `finetune.finetune.fine_tune(learn, 5)`. Imports go one way: this module imports the
features, the features import the core, and the core imports no feature (README, "Layout").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .callbacks.compile import CompileSpec, compile_callback
from .callbacks.distributed import distributed
from .core.dataloaders import DataLoaders
from .core.layer_groups import Splitter
from .core.loop import BaseLearner, Callbacks
from .core.optim import adamw
from .finetune.finetune import fine_tune
from .finetune.default_choice import FineTuneChoice
from .finetune.lora import lora_summary
from .finetune.lr_finder import lr_find
from .finetune.schedule import fit_one_cycle
from .inference.export import export_learner, push_to_hub
from .inference.interpret import show_results
from .inference.onnx_export import to_onnx
from .inference.tta import tta


class Learner(BaseLearner):
    """Trains `model` on `dls` with discriminative learning rates over ordered layer groups.

    The arguments are `BaseLearner`'s (see there), plus `compile`: `torch.compile` the model for each fit
    (re-compiled per phase, so freezing never happens inside a compiled graph): True, a mode string, or a dict of
    `CompileCallback` options (callbacks/compile.py). The order `Learner(model, dls)` is fastai's
    `Learner(dls, model)` reversed, on purpose (README, "Layout").

    Methods beyond the core's: `fit_one_cycle` (finetune/schedule.py), `fine_tune` (finetune/finetune.py),
    `lr_find` (finetune/lr_finder.py), `export` and `push_to_hub` (inference/export.py), `to_onnx`
    (inference/onnx_export.py), `distributed` (callbacks/distributed.py), `tta` (inference/tta.py),
    `show_results` (inference/interpret.py), `lora_summary` (finetune/lora.py).

    What those features leave on the learner, None until they set it:
        auto_lr: `fine_tune(base_lr='auto')`'s choice: a dict with `base_lr`, the suggestions it came from and
            the time it took (finetune/auto_lr.py).
        fine_tune_choice: what the default `fine_tune` decided, a probe of the head or fastai's recipe, and why
            (a `FineTuneChoice`, finetune/default_choice.py).
        fine_tune_state: while `fine_tune` runs, its phase, number of phases, base_lr, and every phase's epochs
            (`phase_epochs`) and frozen layer groups (`phase_frozen`); saved in checkpoints
            with the loop state (`extra_state`), so that `resume_from` goes on in the right phase.
        build_spec: how `vision_learner` built this learner (its arguments), for `export`
            (inference/export_format.py); None for a learner built by hand.
    """
    fit_one_cycle = fit_one_cycle
    fine_tune = fine_tune
    lr_find = lr_find
    lora_summary = lora_summary
    export = export_learner
    push_to_hub = push_to_hub
    to_onnx = to_onnx
    distributed = distributed
    tta = tta
    show_results = show_results

    extra_state = ("fine_tune_state",)
    auto_lr: Optional[dict[str, Any]] = None
    fine_tune_choice: Optional[FineTuneChoice] = None
    fine_tune_state: Optional[dict[str, Any]] = None
    build_spec: Optional[dict[str, Any]] = None

    def __init__(self, model: nn.Module, dls: DataLoaders, loss_func: Optional[Callable] = None,
                 splitter: Optional[Splitter] = None, opt_func: Callable[..., torch.optim.Optimizer] = adamw,
                 lr: float = 1e-3, wd: float = 0.01, wd_bn_bias: bool = False, train_bn: bool = True,
                 norm: Optional[str] = None, metrics: Optional[Union[Callable, Sequence[Callable]]] = None,
                 cbs: Callbacks = None, path: Union[str, Path] = ".", model_dir: str = "models",
                 device: Optional[Union[str, torch.device]] = None, precision: str = "auto", progress: bool = True,
                 reset_opt: bool = True, channels_last: bool = False, compile: CompileSpec = False):
        super().__init__(model, dls, loss_func=loss_func, splitter=splitter, opt_func=opt_func, lr=lr, wd=wd,
                         wd_bn_bias=wd_bn_bias, train_bn=train_bn, norm=norm, metrics=metrics, cbs=cbs, path=path,
                         model_dir=model_dir, device=device, precision=precision, progress=progress,
                         reset_opt=reset_opt, channels_last=channels_last)
        self.compile = compile
        compile_cb = compile_callback(compile)
        if compile_cb is not None:
            self.add_cbs(compile_cb)
