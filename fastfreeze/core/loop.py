"""The core of a Learner: a model, its data, its layer groups with one optimizer param group each, freezing
by layer group, the one training loop (`fit`) with its callback events, evaluation, and saving.

The loop reads top to bottom in this file: `fit` → `_do_epoch` → `_do_train` / `_do_validate` → `_do_batch`
→ `_backward_and_step`, with callback events around every stage (see `callback.EVENTS`, docs/callbacks.md).
With `accum_steps=n` the optimizer steps once every n training batches (gradient accumulation); `step_iter`
counts those steps, and schedules follow it (docs/schedules.md).
This module imports no feature (schedules, `fine_tune`, `lr_find`, export, DDP...): those are functions of
a learner, in their own folders (finetune/, callbacks/, inference/), that `learner.Learner` binds as methods.
It needs no model library: nothing it imports reaches timm or PIL (tests/test_layers.py).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..utils.checks import check_epochs, check_int, check_wd
from ..utils.files import load_torch, save_torch
from ..utils.state_dicts import FIT_HINT, check_state_dict
from .callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException, CancelTrainException,
                       CancelValidException, callback_list)
from .checkpoint import resume, rng_states, save_checkpoint, set_rng_states
from .dataloaders import DataLoaders
from .device import autocast, autocast_dtype, default_device, move_batch
from .divergence import DivergenceGuard
from .label_check import LabelCheck
from .grad_clip import GradientClip
from .layer_groups import Splitter, default_splitter, frozen_count, group_names, split_model
from .losses import activate, activation_for
from .lrs import LrSpec, expand_lrs
from .norm import no_decay_param_ids, norm_param_ids
from .optim import DecoupledWeightDecay, adamw, check_decay_rate, check_single_weight_decay
from .progress import ProgressCallback
from .recorder import Recorder
from .tasks import check_metrics_for_task, decode_prediction, task_of

NORM_POLICIES = ("train", "frozen", "recalibrate")
Callbacks = Optional[Union[Callback, Sequence[Callback]]]


class BaseLearner:
    """Trains `model` on `dls` with discriminative learning rates over ordered layer groups.

    Args:
        model: any nn.Module mapping a batch of inputs to predictions.
        dls: a `DataLoaders` (or anything with `.train` and `.valid` iterables of `(x, y)` batches).
        loss_func: defaults to `nn.CrossEntropyLoss()`.
        splitter: `splitter(model)` returns the layer groups in forward order (head last), each an
            nn.Module or an iterable of parameters. Default: one group per top-level child.
        opt_func: `opt_func(param_groups, lr)` builds a `torch.optim.Optimizer` (default AdamW, `optim.adamw`).
        lr: default learning rate for `fit` / `fit_one_cycle`.
        wd: decoupled weight decay (`p *= 1 - lr*wd` before each step, at each group's lr), stored as `'wd'` in
            each param group (docs/freezing.md). An optimizer that decays by itself as well is refused.
        wd_bn_bias: also decay normalization parameters and biases.
        train_bn: keep normalization parameters of frozen groups trainable (fastai's default).
        norm: norm policy for frozen groups, overriding `train_bn`: 'train' (norm params train, norm layers
            in train mode), 'frozen' (frozen groups fully frozen: eval mode, no gradients: a forward pass
            only), 'recalibrate' (re-estimate BatchNorm statistics on the training data before a frozen
            fit, then as 'frozen').
        metrics: functions `(pred, targ) -> batch mean`, `Metric` objects, or objects with reset/update/compute
            computed on the whole validation set (torchmetrics' included; docs/metrics.md).
        cbs: extra callbacks, kept for every fit.
        path, model_dir: `save`, `load` and checkpoints use `path/model_dir/<name>.pth` for a bare name.
        device: where the model and batches go (default: a CUDA GPU when there is one, else the CPU).
        precision: 'auto' (bf16 autocast on CUDA GPUs that support it, fp32 otherwise), 'fp32', 'bf16', 'fp16'.
        progress: show fastprogress bars and the per-epoch table (`ProgressCallback`).
        reset_opt: reset optimizer state (Adam moments) at every `freeze_to`, as fastai does.
        channels_last: keep the model and 4-D inputs in channels_last memory format (faster for CNNs; the
            default of `vision_learner` for spatial bodies).
    """
    # the loop's own state: what `state_dict` saves and `load_state_dict` puts back (checkpoints, lr_find)
    LOOP_STATE = ("phase", "n_fits", "n_epoch", "start_epoch", "epoch", "iter", "train_iter", "step_iter",
                  "accum_steps", "training", "frozen_groups", "recalibrated_for")
    # state that features add (attributes named `<feature>_state`, declared on the subclass that binds the
    # feature, None when the feature is not running), saved and restored with the loop state
    extra_state: tuple[str, ...] = ()
    save_checkpoint = save_checkpoint

    def __init__(self, model: nn.Module, dls: DataLoaders, loss_func: Optional[Callable] = None,
                 splitter: Optional[Splitter] = None,
                 opt_func: Callable[..., torch.optim.Optimizer] = adamw, lr: float = 1e-3, wd: float = 0.01,
                 wd_bn_bias: bool = False, train_bn: bool = True, norm: Optional[str] = None,
                 metrics: Optional[Union[Callable, Sequence[Callable]]] = None, cbs: Callbacks = None,
                 path: Union[str, Path] = ".", model_dir: str = "models",
                 device: Optional[Union[str, torch.device]] = None, precision: str = "auto", progress: bool = True,
                 reset_opt: bool = True, channels_last: bool = False):
        self.device = torch.device(device) if device is not None else default_device()
        self.channels_last = channels_last
        self.model = model.to(self.device, memory_format=torch.channels_last) if channels_last else \
            model.to(self.device)
        self.dls = dls
        self.loss_func = loss_func if loss_func is not None else nn.CrossEntropyLoss()
        self.splitter = splitter or default_splitter
        wd = check_wd(wd)
        cbs = callback_list(cbs)  # a callback class or a non-callback refused before anything is built
        self.opt_func, self.lr, self.wd, self.wd_bn_bias = opt_func, lr, wd, wd_bn_bias
        if norm is not None and norm not in NORM_POLICIES:
            raise ValueError(f"norm must be one of {NORM_POLICIES} (or None to follow train_bn), got {norm!r}")
        self.norm = norm or "train"
        self.train_bn = train_bn if norm is None else norm == "train"
        self.metrics = list(metrics) if isinstance(metrics, (list, tuple)) else ([metrics] if metrics else [])
        check_metrics_for_task(self.metrics, task_of(self.loss_func, dls))
        self.path, self.model_dir = Path(path), model_dir
        self.precision = precision
        self.autocast_dtype = autocast_dtype(precision, self.device)
        self.reset_opt = reset_opt
        # the loop state (LOOP_STATE)
        self.phase = "fit"
        self.n_fits = 0
        self.n_epoch, self.start_epoch, self.epoch, self.iter, self.train_iter = 0, 0, 0, 0, 0
        self.step_iter = 0  # optimizer steps in this fit (train_iter counts batches)
        self.accum_steps = 1  # training batches per optimizer step (gradient accumulation)
        self.training = False
        self.frozen_groups = 0
        self.recalibrated_for: Optional[int] = None  # frozen_groups when BatchNorm was last recalibrated
        # what the current batch and fit hold
        self.xb: tuple = ()
        self.yb: tuple = ()
        self.pred: Optional[torch.Tensor] = None
        self.loss: Optional[torch.Tensor] = None
        self.smooth_loss: torch.Tensor = torch.tensor(float("nan"))
        self.last_validation: list[float] = []
        self.scaler: Optional[torch.amp.GradScaler] = None

        # ids of parameters that no `freeze_to` trains, kept as in a frozen group (LoRA's base weights)
        self.always_frozen: set[int] = set()
        self.set_layer_groups(self.splitter)

        self.label_check = LabelCheck()  # labels checked against the outputs once per loader (label_check.py)
        self.recorder = Recorder()
        self.divergence_guard = DivergenceGuard()  # stops a fit at a NaN/inf loss or weight (docs/divergence.md)
        self.cbs: list[Callback] = []
        self.add_cbs([self.recorder, self.divergence_guard] + ([ProgressCallback()] if progress else []))
        self.add_cbs(cbs)

    # ---------------------------------------------------------------------------------------------
    # layer groups and freezing
    # ---------------------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.layer_groups)

    def set_layer_groups(self, splitter: Splitter) -> None:
        """Split the model with `splitter` into layer groups (checked) and build a fresh optimizer with one param
        group per layer group, at `self.lr` and `self.wd` (after adapters added parameters to the model, say)."""
        self.splitter = splitter
        self.layer_groups = split_model(self.model, splitter)
        self.norm_param_ids = norm_param_ids(self.model)
        no_decay = set() if self.wd_bn_bias else no_decay_param_ids(self.model)
        self.opt = self.opt_func([{"params": g, "lr": self.lr, "wd": self.wd} for g in self.layer_groups], lr=self.lr)
        check_single_weight_decay(self.opt, self.wd)
        self.weight_decay = DecoupledWeightDecay(
            self.opt, [[p for p in g if id(p) not in no_decay] for g in self.layer_groups])

    def freeze_to(self, n: int) -> None:
        """Freeze layer groups `[:k]` and train `[k:]`, with `k = n` if `n >= 0` else `G + n`.

        Frozen parameters get `requires_grad=False` and `grad=None`, so no optimizer step touches them
        (no weight decay either). Normalization parameters of frozen groups stay trainable when
        `train_bn` (norm policy 'train'). Parameters in `always_frozen` are frozen in every group, as if their
        group were frozen (their normalization parameters train under `train_bn`).
        """
        k = frozen_count(n, self.n_groups)
        for i, group in enumerate(self.layer_groups):
            for p in group:
                trainable = (i >= k and id(p) not in self.always_frozen) or \
                    (self.train_bn and id(p) in self.norm_param_ids)
                p.requires_grad_(trainable)
                if not trainable:
                    p.grad = None
        self.frozen_groups = k
        self.recalibrated_for = None
        if self.reset_opt:
            self.opt.state.clear()

    def freeze(self) -> None:
        """Train the last group (the head) only: `freeze_to(-1)`."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every group: `freeze_to(0)`."""
        self.freeze_to(0)

    def frozen_param_ids(self) -> set[int]:
        """The ids of the parameters in frozen groups and of `always_frozen` (norm parameters that train
        included)."""
        return {id(p) for g in self.layer_groups[:self.frozen_groups] for p in g} | self.always_frozen

    def frozen_modules(self) -> list[nn.Module]:
        """The largest modules whose parameters all lie in frozen groups (put in eval mode when norm != 'train')."""
        frozen = self.frozen_param_ids()
        if not frozen:
            return []
        out: list[nn.Module] = []

        def visit(module: nn.Module) -> None:
            params = list(module.parameters())
            if params and all(id(p) in frozen for p in params):
                out.append(module)
            elif params:
                for child in module.children():
                    visit(child)
        visit(self.model)
        return out

    def groups_table(self) -> list[dict[str, Any]]:
        """One row per layer group: index, module names, parameter count, trainable count, state ('trainable',
        'frozen', 'frozen (norm trains)', or 'partly trainable': LoRA's adapters in a frozen body)."""
        labels = group_names(self.model, self.layer_groups)
        rows = []
        for i, g in enumerate(self.layer_groups):
            n_params = sum(p.numel() for p in g)
            n_train = sum(p.numel() for p in g if p.requires_grad)
            only_norm = all(id(p) in self.norm_param_ids for p in g if p.requires_grad)
            state = "trainable" if n_train == n_params else "frozen" if n_train == 0 else \
                "frozen (norm trains)" if only_norm else "partly trainable"
            rows.append({"group": i, "modules": labels[i],
                         "params": n_params, "trainable": n_train, "state": state,
                         "lr": self.opt.param_groups[i]["lr"]})
        return rows

    def show_groups(self) -> None:
        """Print the layer groups: index, module names, parameter count, trainable or frozen, current lr."""
        rows = self.groups_table()
        print(f"{'group':>5}  {'modules':<44}  {'params':>11}  {'trainable':>11}  {'lr':>9}  state")
        for r in rows:
            mods = r["modules"] if len(r["modules"]) <= 44 else r["modules"][:41] + "..."
            print(f"{r['group']:>5}  {mods:<44}  {r['params']:>11,}  {r['trainable']:>11,}  {r['lr']:>9.2e}  {r['state']}")

    # ---------------------------------------------------------------------------------------------
    # callbacks
    # ---------------------------------------------------------------------------------------------
    def add_cbs(self, cbs: Union[Callback, Iterable[Callback]]) -> None:
        """Add callbacks for every later fit (kept sorted by `order`)."""
        for cb in callback_list(cbs):
            cb.learn = self
            self.cbs.append(cb)
        self.cbs.sort(key=lambda c: c.order)

    def add_cb(self, cb: Callback) -> None:
        """Add one callback for every later fit (fastai's name; `add_cbs` takes several)."""
        self.add_cbs([cb])

    def remove_cb(self, cb: Callback) -> None:
        """Remove one callback (fastai's name; `remove_cbs` takes several)."""
        self.remove_cbs([cb])

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)

    @contextlib.contextmanager
    def added_cbs(self, cbs: Callbacks) -> Iterator[None]:
        """Callbacks that live for one fit only."""
        cbs = callback_list(cbs)
        self.add_cbs(cbs)
        try:
            yield
        finally:
            self.remove_cbs(cbs)

    @contextlib.contextmanager
    def no_bar(self) -> Iterator[None]:
        """Run without the progress bar and table (e.g. `with learn.no_bar(): learn.fit(1)`)."""
        bars = [cb for cb in self.cbs if isinstance(cb, ProgressCallback)]
        self.remove_cbs(bars)
        try:
            yield
        finally:
            self.add_cbs(bars)

    def _event(self, name: str) -> None:
        for cb in list(self.cbs):
            method = getattr(cb, name, None)
            if method is not None:
                method()

    # ---------------------------------------------------------------------------------------------
    # the training loop
    # ---------------------------------------------------------------------------------------------
    def fit(self, n_epoch: int, lr: Optional[LrSpec] = None, wd: Optional[float] = None, cbs: Callbacks = None,
            phase: Optional[str] = None, start_epoch: int = 0, resume_from: Optional[Union[str, Path]] = None,
            accum_steps: int = 1, clip_grad: Optional[float] = None) -> None:
        """Train for `n_epoch` epochs, validating after each.

        `lr` (float, slice or one per group) and `wd` are written into every param group first;
        schedulers passed in `cbs` then change them step by step. `phase` labels this fit in the Recorder.
        `start_epoch` skips epochs already done: schedules continue from that point.
        `resume_from` (a checkpoint written during this same fit by `save_checkpoint` / `CheckpointCallback`)
        restores the model, optimizer, freeze state, random states and history, and goes on after its epoch.
        `accum_steps`: one optimizer step (and weight decay) every `accum_steps` training batches, on the mean of
        their gradients (the epoch's last step takes what is left); every batch's loss is recorded.
        `clip_grad`: clip the gradients' global norm to this value before each step (`grad_clip.GradientClip`).
        """
        n_epoch = check_epochs(n_epoch)
        if wd is not None:
            wd = check_wd(wd)
        cbs = callback_list(cbs)
        if not 0 <= start_epoch <= n_epoch:
            raise ValueError(f"start_epoch must be in [0, {n_epoch}], got {start_epoch}")
        self._check_accum_steps(accum_steps)
        if clip_grad is not None:
            cbs = callback_list(cbs) + [GradientClip(clip_grad)]
        if lr is not None:
            self.set_lrs(lr)
        if wd is not None:
            check_single_weight_decay(self.opt, wd)
            for g in self.opt.param_groups:
                g["wd"] = wd
        for g in self.opt.param_groups:  # before anything trains (the step hook checks the scheduled lrs too)
            check_decay_rate(g["lr"], g.get("wd", 0.0))
        self.n_fits += 1
        self.phase = phase or f"fit {self.n_fits}"
        self.accum_steps = accum_steps
        self.scaler = torch.amp.GradScaler(self.device.type) if self.autocast_dtype == torch.float16 else None
        with self.added_cbs(cbs):  # before a resume: the fit's callbacks get their checkpointed state back
            if resume_from is not None:
                start_epoch = resume(self, self.file_path(resume_from), n_epoch)
                if start_epoch == n_epoch:
                    return  # the checkpoint was written at the end of this fit: nothing left to do
            if self.norm == "recalibrate" and self.frozen_groups and self.recalibrated_for != self.frozen_groups:
                self.recalibrate_norm()
            self.n_epoch, self.start_epoch = n_epoch, start_epoch
            self.train_iter = start_epoch * len(self.dls.train) if start_epoch else 0
            self.step_iter = start_epoch * self.steps_per_epoch() if start_epoch else 0
            self.opt.zero_grad(set_to_none=True)  # no gradient left over from an interrupted accumulation
            try:
                self._event("before_fit")
                for self.epoch in range(start_epoch, n_epoch):
                    self._do_epoch()
            except CancelFitException:
                self._event("after_cancel_fit")
            finally:
                # runs after an interrupt too (KeyboardInterrupt, an exception in a callback):
                # bars closed, history kept, model back in eval mode, requires_grad as freeze_to set it.
                self.training = False
                self.model.eval()
                self._event("after_fit")

    def _do_epoch(self) -> None:
        try:
            self._event("before_epoch")
            self._do_train()
            self._do_validate()
            self._event("after_epoch")
        except CancelEpochException:
            self._event("after_cancel_epoch")

    def _do_train(self) -> None:
        self.training, self.dl = True, self.dls.train
        self._set_train_mode()
        self.label_check.begin(self.dl)
        try:
            self._event("before_train")
            for self.iter, batch in enumerate(self.dl):
                self._do_batch(batch)
                self.train_iter += 1
            self.label_check.end()
            self._event("after_train")
        except CancelTrainException:
            self._event("after_cancel_train")

    def _do_validate(self, dl: Optional[Iterable] = None) -> None:
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            return
        self.training, self.dl = False, dl
        self.model.eval()
        self.label_check.begin(dl)
        try:
            self._event("before_validate")
            with torch.no_grad():
                for self.iter, batch in enumerate(self.dl):
                    self._do_batch(batch)
            self.label_check.end()
            self._event("after_validate")
        except CancelValidException:
            self._event("after_cancel_validate")

    def _do_batch(self, batch: Sequence[Any]) -> None:
        self.xb, self.yb = self.to_device(batch)
        try:
            self._event("before_batch")
            with self.autocast():
                self.pred = self.model(*self.xb)
                self._event("after_pred")
                self.label_check.check(self.loss_func, batch[-1], self.pred,
                                       "training" if self.training else "validation")
                self.loss = self.loss_func(self.pred, *self.yb)
            self._event("after_loss")
            if self.training:
                self._backward_and_step()
            self._event("after_batch")
        except CancelBatchException:
            self._event("after_cancel_batch")

    def _backward_and_step(self) -> None:
        """Backward, then one optimizer step when this batch ends an accumulation (every batch when
        `accum_steps` is 1). Under accumulation each batch's loss is divided by the number of batches its step
        takes, so the step sees the mean gradient. `before_step` comes after the GradScaler has unscaled the
        gradients (fp16): gradient clipping there sees the true ones. Weight decay is applied inside the step (a
        step pre-hook, `optim.DecoupledWeightDecay`), so with fp16 a step the GradScaler skips decays nothing
        either."""
        n_batches = self._accumulated_batches()
        loss = self.loss if n_batches == 1 else self.loss / n_batches
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self._event("after_backward")
        if not self._ends_accumulation():
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        self._event("before_step")
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.step_iter += 1
        self._event("after_step")
        self.opt.zero_grad(set_to_none=True)

    # -- gradient accumulation: which batches step, and how many batches each step takes
    def _check_accum_steps(self, accum_steps: int) -> None:
        check_int(accum_steps, "accum_steps", unit="training batches per optimizer step")
        if accum_steps > 1:
            try:
                len(self.dls.train)
            except TypeError:
                raise TypeError("accum_steps > 1 needs a training set with a length (len(dls.train)), to know "
                                "where an epoch's last step falls; wrap it in a torch DataLoader") from None

    def steps_per_epoch(self, n_batches: Optional[int] = None) -> int:
        """Optimizer steps in an epoch of `n_batches` training batches (default `len(dls.train)`):
        `ceil(n_batches / accum_steps)`."""
        return math.ceil((len(self.dls.train) if n_batches is None else n_batches) / self.accum_steps)

    def _ends_accumulation(self) -> bool:
        """The optimizer steps after every `accum_steps`-th training batch of an epoch, and after its last."""
        if self.accum_steps == 1:
            return True
        return (self.iter + 1) % self.accum_steps == 0 or self.iter + 1 == len(self.dls.train)

    def _accumulated_batches(self) -> int:
        """How many training batches the step this batch belongs to takes (fewer for the epoch's last step)."""
        if self.accum_steps == 1:
            return 1
        first = self.iter - self.iter % self.accum_steps
        return min(self.accum_steps, len(self.dls.train) - first)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.norm != "train":
            for m in self.frozen_modules():
                m.eval()

    # ---------------------------------------------------------------------------------------------
    # device, precision, learning rates
    # ---------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context this learner computes in (nothing for fp32)."""
        return autocast(self.device, self.autocast_dtype)

    def to_device(self, batch: Sequence[Any]) -> tuple[tuple, tuple]:
        """A batch `(x1, ..., xn, y)` as `((x1, ..., xn), (y,))` on the learner's device, the inputs in the
        model's memory format."""
        return move_batch(batch, self.device, self.channels_last)

    def set_lrs(self, lr: LrSpec) -> None:
        """Write one lr per group (float, `slice(hi)`, `slice(lo, hi)`, or a list) into the optimizer
        (docs/learning-rates.md)."""
        for g, value in zip(self.opt.param_groups, expand_lrs(lr, self.n_groups)):
            g["lr"] = value

    # ---------------------------------------------------------------------------------------------
    # norm recalibration
    # ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate_norm(self, max_batches: int = 100) -> None:
        """Re-estimate the running statistics of BatchNorm layers in frozen groups on the training data
        (a no-grad pass, cumulative average), then keep them fixed (norm policy 'recalibrate')."""
        frozen_mods = self.frozen_modules()
        bns = [m for top in frozen_mods for m in top.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not bns:
            self.recalibrated_for = self.frozen_groups
            return
        saved_momentum = [m.momentum for m in bns]
        self.model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
            m.train()
        try:
            for i, batch in enumerate(self.dls.train):
                if i >= max_batches:
                    break
                xb, _ = self.to_device(batch)
                with self.autocast():
                    self.model(*xb)
        finally:
            for m, mom in zip(bns, saved_momentum):
                m.momentum = mom
            self.model.eval()
        self.recalibrated_for = self.frozen_groups

    # ---------------------------------------------------------------------------------------------
    # evaluation
    # ---------------------------------------------------------------------------------------------
    def validate(self, dl: Optional[Iterable] = None) -> list[float]:
        """`[valid_loss, *metrics]` over `dl` (default: the validation set): the loss size-weighted, each metric
        over all of `dl` (docs/metrics.md)."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no validation data: pass a dl or give DataLoaders a valid set")
        bars = [cb for cb in self.cbs if isinstance(cb, ProgressCallback)]
        with self.no_bar() if bars else contextlib.nullcontext():
            self.last_validation = []
            self._do_validate(dl)
        return list(self.last_validation)

    def activation(self, pred: torch.Tensor) -> torch.Tensor:
        """Turn raw model outputs into what `get_preds`/`predict` return (softmax for cross-entropy, sigmoid for
        BCE with logits, the outputs themselves otherwise)."""
        return activate(activation_for(self.loss_func), pred)

    @torch.no_grad()
    def get_preds(self, dl: Optional[Iterable] = None, activation: bool = True,
                  predict_batch: Optional[Callable[[tuple], torch.Tensor]] = None
                  ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(predictions, targets) over `dl` (default: the validation set), on the CPU.
        Predictions are probabilities for a cross-entropy loss (raw outputs with `activation=False`), or what
        `predict_batch(inputs)` returns for each batch's inputs on the device (test-time augmentation uses it).
        Batches of one element `(x,)` have no targets (`ImageDataLoaders.test_dl` without labels): targets None."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no data to predict on: pass a dl or give DataLoaders a valid set")
        if predict_batch is None:
            def predict_batch(xb: tuple) -> torch.Tensor:
                with self.autocast():
                    out = self.model(*xb)
                return self.activation(out) if activation else out.float()
        self.model.eval()
        preds, targs = [], []
        for batch in dl:
            labelled = len(batch) > 1
            xb, yb = self.to_device(batch if labelled else (*batch, None))
            preds.append(predict_batch(xb).cpu())
            if labelled:
                targs.append(yb[0].cpu())
        return torch.cat(preds), (torch.cat(targs) if targs else None)

    @torch.no_grad()
    def predict(self, x: Any) -> tuple[Any, Any, torch.Tensor]:
        """Predict one item (a tensor without batch dimension), as the task says (`tasks.decode_prediction`):
        `(label, index, probabilities)` for single-label (`label` the class name when `dls.vocab` is known, else
        the index), `(labels, mask, probabilities)` for multi-label (the tags above the loss's `thresh`),
        `(value, values, values)` for regression."""
        x = self._prepare_item(x)
        self.model.eval()
        (x,), _ = self.to_device((x.unsqueeze(0), None))
        with self.autocast():
            out = self.model(x)
        probs = self.activation(out)[0].cpu()
        return decode_prediction(task_of(self.loss_func, self.dls), probs, getattr(self.dls, "vocab", None),
                                 getattr(self.loss_func, "thresh", 0.5))

    def _prepare_item(self, item: Any) -> torch.Tensor:
        """Hook for subclasses that accept images or paths; the base Learner takes a tensor."""
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"predict takes one input tensor (no batch dimension), got {type(item).__name__}")
        return item

    # ---------------------------------------------------------------------------------------------
    # state and saving
    # ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on training exactly: the model's and the optimizer's state, the GradScaler's,
        the loop state (`LOOP_STATE` and the features' `extra_state`), the Recorder (history and smoothing), the state of callbacks that keep
        one (`Callback.state_key`, e.g. EMA weights) and the random states (torch, CUDA, NumPy, Python, the
        training loader's shuffling). The tensors are the live ones: copy them (`utils.state_dicts.to_cpu_copy`) to keep a
        snapshot."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loop": {name: getattr(self, name) for name in self.LOOP_STATE + self.extra_state},
                "recorder": self.recorder.state_dict(),
                "callbacks": {cb.state_key: cb.state_dict() for cb in self.cbs if cb.state_key is not None},
                "rng": rng_states(self.dls.train)}

    def load_state_dict(self, state: dict[str, Any], resume: bool = False, source: str = "the state dict") -> None:
        """Put back a `state_dict` (weights checked against the model first, `source` naming them in errors).
        The freeze state comes back through `freeze_to`. `resume=True`: a fit resumed from a checkpoint, whose
        smoothed loss goes on from the saved one."""
        check_state_dict(self.model.state_dict(), state["model"], source)
        self.model.load_state_dict(state["model"])
        loop = state["loop"]
        self.freeze_to(loop["frozen_groups"])
        self.opt.load_state_dict(state["opt"])  # after freeze_to, which may reset the optimizer state
        if state["scaler"] is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        for name in self.LOOP_STATE + self.extra_state:
            setattr(self, name, loop[name])
        self.recorder.load_state_dict(state["recorder"], resume=resume)
        self._load_callback_states(state["callbacks"], source)
        set_rng_states(self.dls.train, state["rng"])

    def _load_callback_states(self, saved: dict[str, Any], source: str) -> None:
        """Give each callback with a `state_key` its saved state; a state without its callback, or the reverse,
        is an error (the run would silently differ from the one that was saved)."""
        mine = {cb.state_key: cb for cb in self.cbs if cb.state_key is not None}
        if set(mine) != set(saved):
            raise ValueError(f"{source} holds the state of the callbacks {sorted(saved)}, but this learner has "
                             f"{sorted(mine)}: resume with the same callbacks (in the Learner or the fit's cbs)")
        for key, cb in mine.items():
            cb.load_state_dict(saved[key])

    def file_path(self, name: Union[str, Path]) -> Path:
        """`path/model_dir/name.pth` for a bare name, else `name` itself (a file path)."""
        p = Path(name)
        if p.suffix == "" and not p.is_absolute() and len(p.parts) == 1:
            p = self.path / self.model_dir / f"{name}.pth"
        return p

    def save(self, name: Union[str, Path], with_opt: bool = True) -> Path:
        """Save the model (and optimizer) state to `path/model_dir/name.pth` (or an explicit file path),
        atomically and from rank 0 only (`utils.files.write_file`)."""
        state: dict[str, Any] = {"model": self.model.state_dict()}
        if with_opt:
            state["opt"] = self.opt.state_dict()
        return save_torch(state, self.file_path(name), "the model state (learn.save) to")

    def load(self, name: Union[str, Path], with_opt: bool = True, strict: bool = True) -> "BaseLearner":
        """Load a state written by `save` or `save_checkpoint`, or a plain state dict of the model (with
        `utils.files.load_torch`: no code is unpickled; a damaged file is a ValueError naming it). Weights that do not
        fit the model give a ValueError listing the missing and extra keys (with `strict`) and the reshaped
        ones (always)."""
        file = self.file_path(name)
        if not file.exists():
            raise FileNotFoundError(f"no saved state at {file}: check the name, or `learn.path`/`model_dir`")
        state = load_torch(file, map_location=self.device)
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            state = {"model": state}  # a plain state dict, e.g. torch.save(model.state_dict(), file)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"{file} holds no model state: expected a file written by learn.save or a state dict")
        check_state_dict(self.model.state_dict(), state["model"], str(file), strict=strict,
                         hint=FIT_HINT if strict else FIT_HINT + " (strict=False skips missing and extra keys, not "
                                                                 "tensors of another shape)")
        self.model.load_state_dict(state["model"], strict=strict)
        if with_opt and "opt" in state:
            self.opt.load_state_dict(state["opt"])
        return self
