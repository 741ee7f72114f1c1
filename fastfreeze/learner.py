"""`Learner`: a model, its data, its layer groups and one optimizer param group per layer group,
the one training loop (`fit`), freezing by layer group, evaluation and saving.

The loop is `fit` → `_do_epoch` → `_do_train` / `_do_validate` → `_do_batch`, all in this file,
with callback events around every stage (see `callback.EVENTS`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                       CancelTrainException, CancelValidException, ProgressCallback, Recorder)
from .data import DataLoaders
from .lrs import LrSpec, expand_lrs
from .norm import no_decay_param_ids, norm_param_ids

NORM_POLICIES = ("train", "frozen", "recalibrate")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def adamw(param_groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """The default optimizer: torch AdamW with betas (0.9, 0.99) and eps 1e-5 (fastai's Adam).

    Weight decay is not given to torch: the Learner applies decoupled decay itself (`p *= 1 - lr*wd`,
    what AdamW does) so that norm parameters and biases can be exempted inside one param group.
    """
    on_cuda = all(p.is_cuda for g in param_groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.0,
                             fused=True if on_cuda else None)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_splitter(model: nn.Module) -> list[nn.Module]:
    """One group per top-level child that has parameters (the whole model if it has no children)."""
    children = [c for c in model.children() if any(True for _ in c.parameters())]
    return children if children else [model]


def _resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device` (None: full fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Learner:
    """Trains `model` on `dls` with discriminative learning rates over ordered layer groups.

    Args:
        model: any nn.Module mapping a batch of inputs to predictions.
        dls: a `DataLoaders` (or anything with `.train` and `.valid` iterables of `(x, y)` batches).
        loss_func: defaults to `nn.CrossEntropyLoss()`.
        splitter: `splitter(model)` returns the layer groups in forward order (head last), each an
            nn.Module or an iterable of parameters. Default: one group per top-level child.
        opt_func: `opt_func(param_groups, lr)` builds a `torch.optim.Optimizer` (default AdamW).
        lr: default learning rate for `fit` / `fit_one_cycle`.
        wd: decoupled weight decay (`p *= 1 - lr*wd` before each step), stored as `'wd'` in each param group.
        wd_bn_bias: also decay normalization parameters and biases.
        train_bn: keep normalization parameters of frozen groups trainable (fastai's default).
        norm: norm policy for frozen groups, overriding `train_bn`: 'train' (norm params train, norm layers
            in train mode), 'frozen' (frozen groups fully frozen: eval mode, no gradients: a forward pass
            only), 'recalibrate' (re-estimate BatchNorm statistics on the training data before a frozen
            fit, then as 'frozen').
        metrics: functions `(pred, targ) -> batch mean`, or `Metric` objects.
        cbs: extra callbacks, kept for every fit.
        precision: 'auto' (bf16 autocast on CUDA GPUs that support it, fp32 otherwise), 'fp32', 'bf16', 'fp16'.
        reset_opt: reset optimizer state (Adam moments) at every `freeze_to`, as fastai does.
        compile: `torch.compile` the model for each fit (re-compiled per phase, so freezing never happens
            inside a compiled graph): True, a mode string, or a dict of `CompileCallback` options.
        channels_last: keep the model and 4-D inputs in channels_last memory format (faster for CNNs:
            8.5x for EfficientNet-Lite training on a 2-core CPU, neutral for ResNet; see vision_learner).
    """
    finite_check_every: int = 20  # off the CPU, the training loss is checked for NaN/inf every this many steps

    def __init__(self, model: nn.Module, dls: DataLoaders, loss_func: Optional[Callable] = None,
                 splitter: Optional[Callable[[nn.Module], Sequence[Any]]] = None,
                 opt_func: Callable[..., torch.optim.Optimizer] = adamw, lr: float = 1e-3, wd: float = 0.01,
                 wd_bn_bias: bool = False, train_bn: bool = True, norm: Optional[str] = None,
                 metrics: Optional[Union[Callable, Sequence[Callable]]] = None,
                 cbs: Optional[Union[Callback, Sequence[Callback]]] = None, path: Union[str, Path] = ".",
                 model_dir: str = "models", device: Optional[Union[str, torch.device]] = None,
                 precision: str = "auto", progress: bool = True, reset_opt: bool = True,
                 channels_last: bool = False, compile: Any = False):
        self.device = torch.device(device) if device is not None else default_device()
        self.channels_last = channels_last
        self.model = model.to(self.device, memory_format=torch.channels_last) if channels_last else \
            model.to(self.device)
        self.dls = dls
        self.loss_func = loss_func if loss_func is not None else nn.CrossEntropyLoss()
        self.splitter = splitter or default_splitter
        self.opt_func, self.lr, self.wd, self.wd_bn_bias = opt_func, lr, wd, wd_bn_bias
        if norm is not None and norm not in NORM_POLICIES:
            raise ValueError(f"norm must be one of {NORM_POLICIES} (or None to follow train_bn), got {norm!r}")
        self.norm = norm or "train"
        self.train_bn = train_bn if norm is None else norm == "train"
        self.metrics = list(metrics) if isinstance(metrics, (list, tuple)) else ([metrics] if metrics else [])
        self.path, self.model_dir = Path(path), model_dir
        self.precision = precision
        self.autocast_dtype = _resolve_precision(precision, self.device)
        self.reset_opt = reset_opt
        self.phase = "fit"
        self.n_epoch, self.start_epoch, self.epoch, self.iter, self.train_iter = 0, 0, 0, 0, 0
        self.training = False
        self.xb: tuple = ()
        self.yb: tuple = ()
        self.pred: Optional[torch.Tensor] = None
        self.loss: Optional[torch.Tensor] = None
        self.smooth_loss: torch.Tensor = torch.tensor(float("nan"))
        self.last_validation: list[float] = []
        self._n_fits = 0
        self.fine_tune_state: Optional[dict[str, Any]] = None  # set by fine_tune for checkpoints (phase, base_lr)

        self.layer_groups = self._split(self.model)
        self._norm_ids = norm_param_ids(self.model)
        no_decay = set() if wd_bn_bias else no_decay_param_ids(self.model)
        self._decay_params = [[p for p in g if id(p) not in no_decay] for g in self.layer_groups]
        self.opt = self.opt_func([{"params": g, "lr": lr, "wd": wd} for g in self.layer_groups], lr=lr)
        self.frozen_groups = 0
        self._recalibrated_for: Optional[int] = None

        self.recorder = Recorder()
        self.cbs: list[Callback] = []
        self.add_cbs([self.recorder] + ([ProgressCallback()] if progress else []))
        if cbs is not None:
            self.add_cbs(cbs)
        from .compile import compile_callback
        self.compile = compile
        compile_cb = compile_callback(compile)
        if compile_cb is not None:
            self.add_cbs(compile_cb)

    # ---------------------------------------------------------------------------------------------
    # layer groups and freezing
    # ---------------------------------------------------------------------------------------------
    def _split(self, model: nn.Module) -> list[list[nn.Parameter]]:
        """Run the splitter and check that every parameter of the model is in exactly one group."""
        raw = list(self.splitter(model))
        if not raw:
            raise ValueError("the splitter returned no layer groups")
        groups = [list(g.parameters()) if isinstance(g, nn.Module) else list(g) for g in raw]
        names = {id(p): n for n, p in model.named_parameters()}
        seen: dict[int, int] = {}
        for i, g in enumerate(groups):
            if not g:
                raise ValueError(f"layer group {i} has no parameters: every group needs at least one")
            for p in g:
                if id(p) not in names:
                    raise ValueError(f"layer group {i} holds a parameter (shape {tuple(p.shape)}) that is not part "
                                     "of the model: the splitter must return the model's own parameters")
                if id(p) in seen:
                    raise ValueError(f"parameter {names[id(p)]!r} is in layer groups {seen[id(p)]} and {i}: "
                                     "every parameter must be in exactly one group")
                seen[id(p)] = i
        missing = [n for i, n in names.items() if i not in seen]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ValueError(f"{len(missing)} parameters are in no layer group ({shown}): "
                             "the splitter must put every parameter in exactly one group")
        return groups

    @property
    def n_groups(self) -> int:
        return len(self.layer_groups)

    def freeze_to(self, n: int) -> None:
        """Freeze layer groups `[:k]` and train `[k:]`, with `k = n` if `n >= 0` else `G + n`.

        Frozen parameters get `requires_grad=False` and `grad=None`, so no optimizer step touches them
        (no weight decay either). Normalization parameters of frozen groups stay trainable when
        `train_bn` (norm policy 'train').
        """
        g = self.n_groups
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"freeze_to takes an int group index, got {n!r}")
        if not -g <= n <= g - 1:
            raise ValueError(f"freeze_to({n}) is out of range: this learner has {g} layer groups, so n must be "
                             f"in [{-g}, {g - 1}] (0 or {-g} unfreezes all, {g - 1} or -1 trains the last group only)")
        k = n if n >= 0 else g + n
        for i, group in enumerate(self.layer_groups):
            for p in group:
                trainable = i >= k or (self.train_bn and id(p) in self._norm_ids)
                p.requires_grad_(trainable)
                if not trainable:
                    p.grad = None
        self.frozen_groups = k
        self._recalibrated_for = None
        if self.reset_opt:
            self.opt.state.clear()

    def freeze(self) -> None:
        """Train the last group (the head) only: `freeze_to(-1)`."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every group: `freeze_to(0)`."""
        self.freeze_to(0)

    def _frozen_modules(self) -> list[nn.Module]:
        """The largest modules whose parameters all lie in frozen groups (put in eval mode when norm != 'train')."""
        frozen = {id(p) for g in self.layer_groups[:self.frozen_groups] for p in g}
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
        """One row per layer group: index, module names, parameter count, trainable count, state."""
        from .groups import group_names
        labels = group_names(self.model, self.layer_groups)
        rows = []
        for i, g in enumerate(self.layer_groups):
            n_params = sum(p.numel() for p in g)
            n_train = sum(p.numel() for p in g if p.requires_grad)
            state = "trainable" if n_train == n_params else ("frozen" if n_train == 0 else "frozen (norm trains)")
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
        for cb in [cbs] if isinstance(cbs, Callback) else cbs:
            cb.learn = self
            self.cbs.append(cb)
        self.cbs.sort(key=lambda c: c.order)

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)

    @contextlib.contextmanager
    def added_cbs(self, cbs: Optional[Union[Callback, Sequence[Callback]]]) -> Iterator[None]:
        """Callbacks that live for one fit only."""
        cbs = [] if cbs is None else ([cbs] if isinstance(cbs, Callback) else list(cbs))
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
    def fit(self, n_epoch: int, lr: Optional[LrSpec] = None, wd: Optional[float] = None,
            cbs: Optional[Union[Callback, Sequence[Callback]]] = None, phase: Optional[str] = None,
            start_epoch: int = 0, resume_from: Optional[Union[str, Path]] = None) -> None:
        """Train for `n_epoch` epochs, validating after each.

        `lr` (float, slice or one per group) and `wd` are written into every param group first;
        schedulers passed in `cbs` then change them step by step. `phase` labels this fit in the Recorder.
        `start_epoch` skips epochs already done: schedules continue from that point.
        `resume_from` (a checkpoint written during this same fit by `save_checkpoint` / `CheckpointCallback`)
        restores the model, optimizer, freeze state, random states and history, and goes on after its epoch.
        """
        if n_epoch < 0:
            raise ValueError(f"n_epoch must be >= 0, got {n_epoch}")
        if not 0 <= start_epoch <= n_epoch:
            raise ValueError(f"start_epoch must be in [0, {n_epoch}], got {start_epoch}")
        if lr is not None:
            self.set_lrs(lr)
        if wd is not None:
            for g in self.opt.param_groups:
                g["wd"] = wd
        self._n_fits += 1
        self.phase = phase or f"fit {self._n_fits}"
        self.scaler = torch.amp.GradScaler(self.device.type) if self.autocast_dtype == torch.float16 else None
        if resume_from is not None:
            from .checkpoint import resume
            start_epoch = resume(self, self._file(resume_from), n_epoch)
            if start_epoch == n_epoch:
                return  # the checkpoint was written at the end of this fit: nothing left to do
        if self.norm == "recalibrate" and self.frozen_groups and self._recalibrated_for != self.frozen_groups:
            self.recalibrate_norm()
        self.n_epoch, self.start_epoch = n_epoch, start_epoch
        self.train_iter = start_epoch * len(self.dls.train) if start_epoch else 0
        with self.added_cbs(cbs):
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
        try:
            self._event("before_train")
            for self.iter, batch in enumerate(self.dl):
                self._do_batch(batch)
                self.train_iter += 1
            self._event("after_train")
        except CancelTrainException:
            self._event("after_cancel_train")

    def _do_validate(self, dl: Optional[Iterable] = None) -> None:
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            return
        self.training, self.dl = False, dl
        self.model.eval()
        try:
            self._event("before_validate")
            with torch.no_grad():
                for self.iter, batch in enumerate(self.dl):
                    self._do_batch(batch)
            self._event("after_validate")
        except CancelValidException:
            self._event("after_cancel_validate")

    def _do_batch(self, batch: Sequence[Any]) -> None:
        self.xb, self.yb = self._to_device(batch)
        try:
            self._event("before_batch")
            with self._autocast():
                self.pred = self.model(*self.xb)
                self._event("after_pred")
                self._check_targets(batch[-1])
                self.loss = self.loss_func(self.pred, *self.yb)
            self._event("after_loss")
            if self.training:
                self._check_finite_loss()
                self._backward_and_step()
            self._event("after_batch")
        except CancelBatchException:
            self._event("after_cancel_batch")

    def _backward_and_step(self) -> None:
        if self.scaler is not None:
            self.scaler.scale(self.loss).backward()
        else:
            self.loss.backward()
        self._event("after_backward")
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        self._apply_weight_decay()
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self._event("after_step")
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _apply_weight_decay(self) -> None:
        """Decoupled weight decay, `p *= 1 - lr*wd`, on the parameters that get a step (grad not None)."""
        for group, decay_params in zip(self.opt.param_groups, self._decay_params):
            factor = 1 - group["lr"] * group.get("wd", 0.0)
            if factor == 1:
                continue
            params = [p for p in decay_params if p.grad is not None]
            if params:
                torch._foreach_mul_(params, factor)

    def _check_finite_loss(self) -> None:
        """Stop at a NaN/inf training loss. On the CPU every step is checked, before the step touches the
        weights (free there). On a GPU a check waits for the GPU, so only every `finite_check_every`-th step
        is checked: a NaN reaches the weights and is caught within that many steps (the loss stays NaN once
        the weights are). `TerminateOnNaN` checks every step on every device, for one sync per step."""
        on_cpu = self.device.type == "cpu"
        if not on_cpu and self.train_iter % self.finite_check_every:
            return
        if not torch.isfinite(self.loss.detach()).all():
            where = f"the training loss is {self.loss.item()} at epoch {self.epoch}, batch {self.iter}"
            if on_cpu:
                raise FloatingPointError(
                    f"{where}: stopped before this step touched the weights. Lower the learning rate, check the "
                    "data for NaNs, or use precision='fp32'.")
            raise FloatingPointError(
                f"{where}; on {self.device.type} the loss is checked every {self.finite_check_every} steps, so the "
                "weights may already hold NaNs: reload a checkpoint (CheckpointCallback) or the saved model, then "
                "lower the learning rate, check the data, or use precision='fp32' (TerminateOnNaN stops exactly).")

    def _check_targets(self, y: Any) -> None:
        """A class label outside the model's outputs gives a clear error instead of cross-entropy's
        "Target out of bounds" (CPU) or a device-side assert (GPU). Checked on the batch's labels as the
        data gave them when they are on the CPU (a few microseconds, no GPU sync), for a
        CrossEntropyLoss/NLLLoss with integer targets."""
        if not (isinstance(self.loss_func, (nn.CrossEntropyLoss, nn.NLLLoss)) and isinstance(y, torch.Tensor)
                and y.device.type == "cpu" and not y.is_floating_point() and y.numel()
                and isinstance(self.pred, torch.Tensor) and self.pred.ndim >= 2):
            return
        n_out = self.pred.shape[1]
        low, high = (int(v) for v in torch.aminmax(y))
        if low >= 0 and high < n_out:
            return
        outside = y[((y < 0) | (y >= n_out)) & (y != self.loss_func.ignore_index)]
        if outside.numel():
            label = int(outside.max()) if int(outside.max()) >= n_out else int(outside.min())
            split = "training" if self.training else "validation"
            raise ValueError(
                f"label {label} in a {split} batch, but the model has {n_out} outputs (labels must be 0..{n_out - 1}): "
                f"the data has more classes than the model's head. Build the learner from these DataLoaders (the "
                f"number of outputs defaults to dls.c, the length of dls.vocab) or pass n_out={max(high + 1, n_out)}; "
                "check the labels if they should not go that high.")

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.norm != "train":
            for m in self._frozen_modules():
                m.eval()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: Sequence[Any]) -> tuple[tuple, tuple]:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TypeError("each batch must be a tuple (x, y) (or (x1, ..., xn, y)); got "
                            f"{type(batch).__name__}")
        moved = [b.to(self.device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]
        xb = tuple(x.contiguous(memory_format=torch.channels_last)
                   if self.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4 else x for x in moved[:-1])
        return xb, tuple(moved[-1:])

    # ---------------------------------------------------------------------------------------------
    # learning rates and schedules
    # ---------------------------------------------------------------------------------------------
    def set_lrs(self, lr: LrSpec) -> None:
        """Write one lr per group (float, `slice(hi)`, `slice(lo, hi)`, or a list) into the optimizer."""
        for g, value in zip(self.opt.param_groups, expand_lrs(lr, self.n_groups)):
            g["lr"] = value

    def fit_one_cycle(self, n_epoch: int, lr_max: Optional[LrSpec] = None, div: float = 25.0,
                      div_final: float = 1e5, pct_start: float = 0.25, wd: Optional[float] = None,
                      moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
                      cbs: Optional[Union[Callback, Sequence[Callback]]] = None, phase: Optional[str] = None,
                      resume_from: Optional[Union[str, Path]] = None) -> None:
        """One-cycle training (SPEC.md §5): see `schedule.fit_one_cycle`. `resume_from`: see `fit`."""
        from .schedule import fit_one_cycle
        fit_one_cycle(self, n_epoch, lr_max=lr_max, div=div, div_final=div_final, pct_start=pct_start, wd=wd,
                      moms=moms, cbs=cbs, phase=phase, resume_from=resume_from)

    def fine_tune(self, epochs: int, base_lr: Union[float, str] = "auto", freeze_epochs: int = 1, lr_mult: float = 100,
                  pct_start: float = 0.3, div: float = 5.0, strategy: Any = None,
                  layer_decay: Optional[float] = None, resume_from: Optional[Union[str, Path]] = None,
                  cache_features: Union[str, bool] = "auto", **kwargs: Any) -> None:
        """Transfer learning in phases (SPEC.md §6): by default fastai's recipe, head only for
        `freeze_epochs`, then every group with discriminative lrs. `base_lr='auto'` (default) picks the lr
        from a sweep of the head on cached body features (`auto_lr`); a number keeps fastai's numbers.
        `strategy` picks another freezing schedule, `layer_decay` layer-wise lr decay, `cache_features` the
        feature cache for frozen phases: see `schedule.fine_tune`. `resume_from` goes on from a checkpoint
        written during the same fine_tune, skipping the phases it completed."""
        from .schedule import fine_tune
        fine_tune(self, epochs, base_lr=base_lr, freeze_epochs=freeze_epochs, lr_mult=lr_mult,
                  pct_start=pct_start, div=div, strategy=strategy, layer_decay=layer_decay,
                  resume_from=resume_from, cache_features=cache_features, **kwargs)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10, num_it: int = 100, stop_div: bool = True,
                suggest_funcs: Optional[Sequence[Callable]] = None) -> tuple:
        """Exponential lr sweep with everything restored afterwards, in memory (SPEC.md §8): see
        `lr_finder.lr_find`. Returns a namedtuple of suggestions (default `.valley`);
        `self.recorder.plot_lr_find()` draws the sweep."""
        from .lr_finder import lr_find
        return lr_find(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div,
                       suggest_funcs=suggest_funcs)

    # ---------------------------------------------------------------------------------------------
    # norm recalibration
    # ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate_norm(self, max_batches: int = 100) -> None:
        """Re-estimate the running statistics of BatchNorm layers in frozen groups on the training data
        (a no-grad pass, cumulative average), then keep them fixed (norm policy 'recalibrate')."""
        frozen_mods = self._frozen_modules()
        bns = [m for top in frozen_mods for m in top.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not bns:
            self._recalibrated_for = self.frozen_groups
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
                xb, _ = self._to_device(batch)
                with self._autocast():
                    self.model(*xb)
        finally:
            for m, mom in zip(bns, saved_momentum):
                m.momentum = mom
            self.model.eval()
        self._recalibrated_for = self.frozen_groups

    # ---------------------------------------------------------------------------------------------
    # evaluation
    # ---------------------------------------------------------------------------------------------
    def validate(self, dl: Optional[Iterable] = None) -> list[float]:
        """`[valid_loss, *metrics]` over `dl` (default: the validation set), size-weighted."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no validation data: pass a dl or give DataLoaders a valid set")
        bars = [cb for cb in self.cbs if isinstance(cb, ProgressCallback)]
        with self.no_bar() if bars else contextlib.nullcontext():
            self.last_validation = []
            self._do_validate(dl)
        return list(self.last_validation)

    def activation(self, pred: torch.Tensor) -> torch.Tensor:
        """Turn raw model outputs into what `get_preds`/`predict` return (softmax for cross-entropy)."""
        if isinstance(self.loss_func, nn.CrossEntropyLoss):
            return torch.softmax(pred.float(), dim=-1)
        if isinstance(self.loss_func, nn.BCEWithLogitsLoss):
            return torch.sigmoid(pred.float())
        return pred.float()

    @torch.no_grad()
    def get_preds(self, dl: Optional[Iterable] = None, activation: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, targets) over `dl` (default: the validation set), on the CPU.
        Predictions are probabilities for a cross-entropy loss (raw outputs with `activation=False`)."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no data to predict on: pass a dl or give DataLoaders a valid set")
        self.model.eval()
        preds, targs = [], []
        for batch in dl:
            xb, yb = self._to_device(batch)
            with self._autocast():
                out = self.model(*xb)
            preds.append((self.activation(out) if activation else out.float()).cpu())
            targs.append(yb[0].cpu())
        return torch.cat(preds), torch.cat(targs)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[Any, int, torch.Tensor]:
        """Predict one item (a tensor without batch dimension): `(label, index, probabilities)`.
        `label` is the class name when `dls.vocab` is known, else the index."""
        x = self._prepare_item(x)
        self.model.eval()
        (x,), _ = self._to_device((x.unsqueeze(0), None))
        with self._autocast():
            out = self.model(x)
        probs = self.activation(out)[0].cpu()
        index = int(probs.argmax())
        vocab = getattr(self.dls, "vocab", None)
        label = vocab[index] if vocab and index < len(vocab) else index  # e.g. an embedding: no class names
        return label, index, probs

    def export(self, path: Union[str, Path], **kwargs: Any) -> Path:
        """Weights (safetensors) + config.json, loadable with `load_learner` without pickle and without the
        training code: see `export.export_learner`."""
        from .export import export_learner
        return export_learner(self, path, **kwargs)

    def distributed(self, sync_bn: bool = False, **kwargs: Any) -> contextlib.AbstractContextManager:
        """`with learn.distributed(): learn.fine_tune(...)` trains on every process torchrun started (a no-op in
        a single process): see `distributed.distributed`."""
        from .distributed import distributed
        return distributed(self, sync_bn=sync_bn, **kwargs)

    def _prepare_item(self, item: Any) -> torch.Tensor:
        """Hook for subclasses that accept images or paths; the base Learner takes a tensor."""
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"predict takes one input tensor (no batch dimension), got {type(item).__name__}")
        return item

    # ---------------------------------------------------------------------------------------------
    # saving
    # ---------------------------------------------------------------------------------------------
    def _file(self, name: Union[str, Path]) -> Path:
        p = Path(name)
        if p.suffix == "" and not p.is_absolute() and len(p.parts) == 1:
            p = self.path / self.model_dir / f"{name}.pth"
        return p

    def save(self, name: Union[str, Path], with_opt: bool = True) -> Path:
        """Save the model (and optimizer) state to `path/model_dir/name.pth` (or an explicit file path).
        Written to a temporary file first, then renamed, so a crash never leaves a half-written file."""
        file = self._file(name)
        file.parent.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"model": self.model.state_dict()}
        if with_opt:
            state["opt"] = self.opt.state_dict()
        tmp = file.with_suffix(file.suffix + ".tmp")
        torch.save(state, tmp)
        tmp.replace(file)
        return file

    def load(self, name: Union[str, Path], with_opt: bool = True, strict: bool = True) -> "Learner":
        """Load a state written by `save` or `save_checkpoint`, or a plain state dict of the model (with
        `torch.load(weights_only=True)`: no code is unpickled). Weights that do not fit the model give a
        ValueError listing the missing, extra and reshaped keys (with `strict`)."""
        from .checkpoint import check_state_dict
        file = self._file(name)
        if not file.exists():
            raise FileNotFoundError(f"no saved state at {file}: check the name, or `learn.path`/`model_dir`")
        state = torch.load(file, map_location=self.device, weights_only=True)
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            state = {"model": state}  # a plain state dict, e.g. torch.save(model.state_dict(), file)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"{file} holds no model state: expected a file written by learn.save or a state dict")
        if strict:
            check_state_dict(self.model.state_dict(), state["model"], str(file))
        self.model.load_state_dict(state["model"], strict=strict)
        if with_opt and "opt" in state:
            self.opt.load_state_dict(state["opt"])
        return self

    def save_checkpoint(self, name: Union[str, Path] = "checkpoint") -> Path:
        """Everything needed to resume the current fit exactly (model, optimizer, freeze state, epoch, schedule
        position, random states, history) in `path/model_dir/name.pth`, written atomically; the current
        epoch counts as done. Resume with `fit`/`fit_one_cycle`/`fine_tune(..., resume_from=name)`."""
        from .checkpoint import save_checkpoint
        return save_checkpoint(self, self._file(name))
