"""Multi-GPU and multi-machine training: torch DDP on an existing Learner, launched by `torchrun`.

One script runs on 1 or N processes unchanged:

    init_distributed()                      # before building the learner: picks this process's GPU
    learn = vision_learner(dls, "resnet50", metrics=accuracy)
    with distributed(learn):                # a no-op in a single process
        learn.fine_tune(3)
        learn.save("final")                 # written by rank 0 only

What happens inside `distributed(learn)` (see docs/distributed.md):
- the process group comes from torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
  `MASTER_PORT`): nccl on CUDA, gloo on the CPU; every rank starts from rank 0's weights;
- each fit (each phase of `fine_tune`) wraps the model in DDP in `before_fit` and unwraps it in `after_fit`
  (after an interrupt too), so the trainable set never changes under a live wrapper: DDP only syncs the
  parameters that required a gradient when it was built;
- the training loader is rebuilt with a `DistributedSampler` (same batch size per process, a new shuffle
  every epoch); validation is split between the ranks without padding (`ShardSampler`) and the loss and
  metric sums are all-reduced (whole-set metrics: their states gathered) before the Recorder computes them, so
  every rank gets the values a single process would get on the whole validation set; the recorded training
  losses are averaged over the ranks;
- only rank 0 shows the progress bar and writes files (every file fastfreeze writes goes through
  `utils.files.write_file`, which writes on rank 0 only; `on_rank_zero` for anything else);
- `sync_bn=True` converts BatchNorm layers to synchronised ones with timm's converter, which keeps the
  activation inside timm's BatchNormAct2d (torch's own converter drops it).
"""
from __future__ import annotations
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..core.callback import Callback
from ..core.loop import BaseLearner
from ..core.progress import ProgressCallback
from ..utils.ranks import (all_reduce, barrier, broadcast_buffers, broadcast_module, broadcast_object,
                           gather_across_ranks, is_distributed, is_rank_zero, local_rank, rank, shard_train_loader,
                           shard_valid_loader, sum_across_ranks, world_size)


# -------------------------------------------------------------------------------------------------
# the process group
# -------------------------------------------------------------------------------------------------
def init_distributed(backend: Optional[str] = None) -> bool:
    """Join the process group torchrun (or `accelerate launch`, `notebook_launcher`) describes in the
    environment, if not done yet; on CUDA, make `cuda:LOCAL_RANK` this process's GPU first.

    Call it at the top of the script, before building the learner, so the model is created on this
    process's GPU (`distributed(learn)` calls it too, and moves a learner built earlier).
    `backend` defaults to 'nccl' when CUDA is available and 'gloo' otherwise. Returns True when more than
    one process runs; without `WORLD_SIZE` in the environment (a plain `python script.py`) it does nothing
    and returns False.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():  # started by the caller (or an earlier call): keep it
        if "LOCAL_RANK" in os.environ:
            _set_local_cuda_device(required="nccl" in str(dist.get_backend()))
        return dist.get_world_size() > 1
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world <= 1:
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={env_world} is set but {', '.join(missing)} is not: launch the script "
                           "with torchrun (e.g. `torchrun --nproc_per_node=2 train.py`), which sets them all")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    _set_local_cuda_device(required="nccl" in backend)
    dist.init_process_group(backend=backend, init_method="env://")
    return dist.get_world_size() > 1


def _set_local_cuda_device(required: bool) -> None:
    """Make `cuda:LOCAL_RANK` the current GPU; `required` (nccl): raise when that GPU does not exist."""
    if not torch.cuda.is_available():
        if required:
            raise RuntimeError("the nccl backend needs CUDA GPUs and none is visible: use backend='gloo' to train "
                               "on the CPU")
        return
    n_gpus, index = torch.cuda.device_count(), local_rank()
    if index >= n_gpus:
        if not required:
            return  # more CPU (gloo) processes than GPUs: they do not use the GPUs
        raise RuntimeError(f"LOCAL_RANK={index} but this machine shows {n_gpus} GPU(s): start at most one process "
                           f"per GPU (torchrun --nproc_per_node={n_gpus})")
    torch.cuda.set_device(index)



def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the model itself if it is not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# -------------------------------------------------------------------------------------------------
# the model
# -------------------------------------------------------------------------------------------------
class DistributedModel(DistributedDataParallel):
    """DDP as the Learner needs it.

    - `state_dict`/`load_state_dict` are the wrapped model's (no `module.` prefix), so `learn.save` in the
      middle of a fit writes the same file as outside one;
    - a forward without gradients (validation, `get_preds`) runs the wrapped model directly: no buffer
      broadcast, so ranks may run different numbers of validation batches.
    """

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.module(*inputs, **kwargs)
        return super().forward(*inputs, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        return self.module.load_state_dict(state_dict, *args, **kwargs)


def sync_batchnorm(learn: BaseLearner) -> int:
    """Replace the BatchNorm layers of `learn.model` by synchronised ones (statistics over all processes'
    batches) with timm's `convert_sync_batchnorm`, which keeps the activation and dropout of timm's
    BatchNormAct2d (torch's converter silently drops them). Returns the number of layers converted.

    The converted layers take over the original Parameter objects, so the optimizer's param groups, the
    layer groups and the norm/no-decay sets stay valid; this is checked, by name, and a conversion that
    created new parameters raises. Train on CUDA: torch's SyncBatchNorm syncs GPU tensors only.
    """
    from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
    model = unwrap_model(learn.model)
    if model is not learn.model:
        raise RuntimeError("sync_batchnorm must run before the model is wrapped in DDP (outside a fit)")
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in model.modules())
    before = dict(model.named_parameters())
    converted = timm_convert_sync_batchnorm(model)
    after = dict(converted.named_parameters())
    replaced = [n for n, p in before.items() if after.get(n) is not p]
    if replaced or len(after) != len(before):
        raise RuntimeError(f"timm's convert_sync_batchnorm created new parameters ({', '.join(replaced[:5])}): the "
                           "optimizer would keep updating the old ones. Convert the model before building the "
                           "Learner instead (timm.layers.convert_sync_batchnorm(model))")
    learn.model = converted
    return n_bn


def _place_on_local_device(learn: BaseLearner) -> None:
    """A CUDA learner built before `init_distributed` sits on GPU 0 in every process: move it (model,
    optimizer state, `learn.device`) to this process's GPU. Parameters keep their identity."""
    if learn.device.type != "cuda":
        return
    target = torch.device("cuda", torch.cuda.current_device())
    learn.model.to(target)
    for state in learn.opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                state[k] = v.to(target)
    learn.device = target


def _hyper_parameters(learn: BaseLearner) -> list[float]:
    """lr, wd and momentum of every param group, in one flat list."""
    out: list[float] = []
    for g in learn.opt.param_groups:
        mom = g["betas"][0] if "betas" in g else g.get("momentum", 0.0)
        out += [float(g["lr"]), float(g.get("wd", 0.0)), float(mom)]
    return out


# -------------------------------------------------------------------------------------------------
# the callback: what each fit needs
# -------------------------------------------------------------------------------------------------
class DistributedCallback(Callback):
    """Per fit, on more than one process: DDP around the model, per-rank training shards, validation
    split without padding, and the Recorder told to reduce its values over the ranks
    (`Recorder.sum_across_ranks`). Does nothing in a single process. Use it through `distributed(learn)`,
    which also starts the process group, syncs the initial weights and hides the bar on other ranks.

    Order -5: its `before_fit` runs after FeatureCache (-20, which may swap the model and the loaders)
    and CompileCallback (-10: DDP then wraps the compiled module), and before the schedulers (10) read
    `len(dls.train)`.
    `find_unused_parameters` goes to DDP: needed only when a trainable parameter gets no gradient in some
    step (DDP's error message says so). `seed` fixes the training shuffle (default: the training
    loader's generator seed, else 0, taken from rank 0).
    """
    order = -5

    def __init__(self, find_unused_parameters: bool = False, seed: Optional[int] = None):
        self.find_unused_parameters = find_unused_parameters
        self.seed = seed
        self._active = self._checked = self._ended_cleanly = False
        self._ddp: Optional[DistributedModel] = None
        self._sharded_dls: Any = None
        self._valid_cache: tuple[Any, Any] = (None, None)

    # -- fit ------------------------------------------------------------------------------------
    def before_fit(self) -> None:
        learn = self.learn
        # lr_find sweeps each rank's copy on its own (it restores everything afterwards): no DDP for it
        self._active = is_distributed() and learn.phase != "lr_find"
        # the Recorder averages training losses over the ranks in a DDP fit only (lr_find's ranks run apart)
        learn.recorder.sum_across_ranks = sum_across_ranks if self._active else None
        learn.recorder.gather_across_ranks = gather_across_ranks if self._active else None
        if not self._active:
            return
        self._original_dls, self._checked, self._ended_cleanly = learn.dls, False, False
        train = shard_train_loader(learn.dls.train, rank(), world_size(), seed=self._shuffle_seed())
        if len(train) == 0:
            raise ValueError(f"the training set gives this process no batch: {len(train.sampler)} items per process "
                             f"for a batch size of {train.batch_size} with drop_last: use fewer processes or a "
                             "smaller batch size")
        self._sharded_dls = copy.copy(learn.dls)
        self._sharded_dls.train = train
        learn.dls = self._sharded_dls
        if learn.start_epoch:  # resuming: the Learner counted steps with the unsharded length
            learn.train_iter = learn.start_epoch * len(train)
            learn.step_iter = learn.start_epoch * learn.steps_per_epoch()
        self._wrap()

    def _shuffle_seed(self) -> int:
        """The same on every rank: rank 0's choice."""
        seed = self.seed
        if seed is None:
            generator = getattr(self.learn.dls.train, "generator", None)
            seed = generator.initial_seed() if isinstance(generator, torch.Generator) else 0
        return int(broadcast_object(seed)) % 2 ** 63

    def _wrap(self) -> None:
        """DDP over the parameters that require a gradient now (built anew at every fit)."""
        model = self.learn.model
        if isinstance(model, DistributedDataParallel):
            raise RuntimeError("the model is already wrapped in DDP: use distributed(learn) on the plain model")
        if not any(p.requires_grad for p in model.parameters()):
            return  # nothing trains: nothing to sync
        device = next(model.parameters()).device
        backend = str(dist.get_backend())
        if device.type == "cpu" and "nccl" in backend:
            raise RuntimeError("the model is on the CPU but the process group uses nccl (GPUs only): train on "
                               "the GPU, or start the group with init_distributed(backend='gloo')")
        if device.type == "cuda" and "nccl" not in backend:
            warnings.warn("the model is on CUDA but the process group uses gloo: nccl is much faster on GPUs")
        self._ddp = DistributedModel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                     find_unused_parameters=self.find_unused_parameters)
        self.learn.model = self._ddp

    def before_train(self) -> None:
        """A new shuffle every epoch, the same on every rank: the epoch's index in the Recorder's history
        (all fits counted, restored by checkpoints)."""
        if not self._active:
            return
        sampler = getattr(self.learn.dls.train, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(len(self.learn.recorder.values))

    def after_backward(self) -> None:
        """Once per fit, before the first step: every rank must train with the same hyper-parameters
        (a lr picked per rank, e.g. by an lr sweep on GPUs, could differ by rounding)."""
        if not self._active or self._checked:
            return
        self._checked = True
        mine = _hyper_parameters(self.learn)
        highest = all_reduce(mine, dist.ReduceOp.MAX)
        lowest = [-v for v in all_reduce([-v for v in mine], dist.ReduceOp.MAX)]
        for i, (lo, hi) in enumerate(zip(lowest, highest)):
            if lo != hi:
                group, what = divmod(i, 3)
                name = ("lr", "wd", "momentum")[what]
                raise RuntimeError(
                    f"the processes train with different hyper-parameters: {name} of param group {group} ranges "
                    f"from {lo:.6g} to {hi:.6g} over the ranks (stopped before the first step). Give every rank "
                    "the same values; a value chosen per rank (lr_find, base_lr='auto') can be made common with "
                    "broadcast_object, e.g. learn.fine_tune(3, base_lr=broadcast_object(choose_base_lr(learn)))")

    def after_train(self) -> None:
        if not self._active:
            return
        # each rank's last training forward updated its BatchNorm statistics with its own batch: take rank 0's,
        # so validation and the final model are the same on every rank
        broadcast_buffers(unwrap_model(self.learn.model))

    def after_epoch(self) -> None:
        if self._active and self.learn.epoch == self.learn.n_epoch - 1:
            self._ended_cleanly = True

    def after_cancel_fit(self) -> None:
        self._ended_cleanly = True  # a CancelFitException, e.g. EarlyStopping on the (common) reduced values

    def after_fit(self) -> None:
        """Unwrap the model and put the loaders back (after an exception too), unless a callback that ran
        before this one already put its own back (FeatureCache)."""
        if not self._active:
            return
        self._active = False
        learn = self.learn
        if learn.model is self._ddp and self._ddp is not None:
            learn.model = self._ddp.module
        if learn.dls is self._sharded_dls:
            learn.dls = self._original_dls
        self._ddp = self._sharded_dls = None
        if self._ended_cleanly:
            # files rank 0 wrote in this fit's after_epoch (SaveModelCallback) are complete before any rank
            # reads them in a later after_fit (load_best); skipped after an exception, which may be one rank's
            barrier()

    # -- validation (in fits and in learn.validate()) -------------------------------------------
    def before_validate(self) -> None:
        """Each rank validates its own shard; the Recorder sums the loss and metric totals over the ranks."""
        if not is_distributed():
            return
        self.learn.recorder.sum_across_ranks = sum_across_ranks
        self.learn.recorder.gather_across_ranks = gather_across_ranks
        dl = self.learn.dl
        if self._valid_cache[0] is not dl:
            try:
                sharded = shard_valid_loader(dl, rank(), world_size())
            except TypeError as e:
                sharded = None
                warnings.warn(f"the validation data cannot be split between processes ({e}): every rank evaluates "
                              "all of it (the reduced values stay exact)")
            self._valid_cache = (dl, sharded)
        if self._valid_cache[1] is not None:
            self.learn.dl = self._valid_cache[1]


# -------------------------------------------------------------------------------------------------
# the entry point
# -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def distributed(learn: BaseLearner, sync_bn: bool = False, find_unused_parameters: bool = False,
                backend: Optional[str] = None, seed: Optional[int] = None) -> Iterator[BaseLearner]:
    """Train `learn` on every process torchrun started, within the block (a no-op in a single process).

    On entry: join the process group (`init_distributed(backend)`), move a CUDA learner to this process's
    GPU, convert BatchNorm to SyncBatchNorm with timm's converter if `sync_bn`, give every rank rank 0's
    weights, hide the progress bar on other ranks (files are written by rank 0 only anyway, see
    `utils.files.write_file`), and add a `DistributedCallback` (DDP per fit, sharded data, reduced validation). On exit the callback
    and the bar come back off/on; the model stays converted when `sync_bn` (SyncBatchNorm computes as
    BatchNorm in a single process).

    Every rank must run the same fits, `validate` and `barrier` calls inside the block: they
    communicate. `get_preds` and `predict` stay local (each rank on all the data it is given).
    """
    if not init_distributed(backend):
        yield learn
        return
    if sync_bn:
        if learn.device.type != "cuda":
            raise ValueError("sync_bn=True needs CUDA: torch's SyncBatchNorm synchronises GPU tensors only. Train "
                             "on GPUs, or leave sync_bn=False on the CPU")
    _place_on_local_device(learn)
    if sync_bn:
        sync_batchnorm(learn)
    broadcast_module(learn.model)
    cb = DistributedCallback(find_unused_parameters=find_unused_parameters, seed=seed)
    bars = [] if is_rank_zero() else [c for c in learn.cbs if isinstance(c, ProgressCallback)]
    learn.remove_cbs(bars)
    learn.add_cbs(cb)
    try:
        yield learn
    finally:
        learn.remove_cbs([cb])
        learn.add_cbs(bars)
        learn.recorder.sum_across_ranks = None
        learn.recorder.gather_across_ranks = None
