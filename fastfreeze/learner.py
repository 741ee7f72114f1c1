"""`Learner`: the core (`loop.BaseLearner`: the training loop, layer groups, freezing, evaluation, saving)
with every feature bound as a method.

Each feature is a function of a learner in a module of its own, where its signature is written once:
`learn.fine_tune(5)` is `finetune.fine_tune(learn, 5)`. Imports go one way: this module imports the
features, the features import the core, and the core imports no feature (README, "Layout").
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from .callbacks.compile import CompileSpec, compile_callback
from .callbacks.distributed import distributed
from .core.dataloaders import DataLoaders
from .core.loop import BaseLearner
from .finetune.finetune import fine_tune
from .finetune.lr_finder import lr_find
from .finetune.schedule import fit_one_cycle
from .inference.export import export_learner, push_to_hub
from .inference.interpret import show_results
from .inference.onnx_export import to_onnx
from .inference.tta import tta


class Learner(BaseLearner):
    """Trains `model` on `dls` with discriminative learning rates over ordered layer groups.

    The arguments after `dls` are `BaseLearner`'s (loss_func, splitter, opt_func, lr, wd, wd_bn_bias, train_bn,
    norm, metrics, cbs, path, model_dir, device, precision, progress, reset_opt, channels_last), plus
    `compile`: `torch.compile` the model for each fit (re-compiled per phase, so freezing never happens inside
    a compiled graph): True, a mode string, or a dict of `CompileCallback` options (see `compile`).

    Methods beyond the core's: `fit_one_cycle` (schedule.py), `fine_tune` (finetune.py), `lr_find`
    (lr_finder.py), `export` and `push_to_hub` (export.py), `to_onnx` (onnx_export.py), `distributed`
    (distributed.py), `tta` (tta.py), `show_results` (interpret.py).
    """
    fit_one_cycle = fit_one_cycle
    fine_tune = fine_tune
    lr_find = lr_find
    export = export_learner
    push_to_hub = push_to_hub
    to_onnx = to_onnx
    distributed = distributed
    tta = tta
    show_results = show_results

    def __init__(self, model: nn.Module, dls: DataLoaders, *args: Any, compile: CompileSpec = False,
                 **kwargs: Any):
        super().__init__(model, dls, *args, **kwargs)
        self.compile = compile
        compile_cb = compile_callback(compile)
        if compile_cb is not None:
            self.add_cbs(compile_cb)
