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
  metric sums are all-reduced before the Recorder computes them, so every rank gets the values a single
  process would get on the whole validation set; the recorded training losses are averaged over the ranks;
- only rank 0 shows the progress bar and writes files (`learn.save`, `learn.save_checkpoint`,
  `learn.export`; `on_rank_zero` for anything else);
- `sync_bn=True` converts BatchNorm layers to synchronised ones with timm's converter, which keeps the
  activation inside timm's BatchNormAct2d (torch's own converter drops it).
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, \
    Sampler, SequentialSampler

from .callback import Callback, ProgressCallback

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------
# the process group
# -------------------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's `LOCAL_RANK`; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    """True on the process that logs and writes files (always True in a single process)."""
    return rank() == 0


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


def _comm_device() -> torch.device:
    """Where tensors for collectives live: the current GPU for nccl, the CPU for gloo."""
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process).
    Every rank must call it, or the others wait forever."""
    if is_distributed():
        on_gpu = "nccl" in str(dist.get_backend())
        dist.barrier(device_ids=[torch.cuda.current_device()] if on_gpu else None)


def on_rank_zero(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Optional[T]:
    """`fn(*args, **kwargs)` on rank 0 only (writing a file, printing a report); None on other ranks.
    `fn` must not call collectives (the other ranks do not run it). Follow with `barrier()` when other
    ranks then read what rank 0 wrote."""
    return fn(*args, **kwargs) if is_rank_zero() else None


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` (any picklable value) on every rank, e.g. a learning rate chosen on rank 0:
    `base_lr = broadcast_object(choose_base_lr(learn))`. Returns `obj` in a single process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the model itself if it is not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def _broadcast_tensors(tensors: Sequence[torch.Tensor], src: int) -> None:
    """Overwrite each tensor in place with rank `src`'s values."""
    device = _comm_device()
    for t in tensors:
        buf = t.data if t.device == device else t.data.to(device)  # e.g. a CPU buffer under nccl
        dist.broadcast(buf, src)
        if buf is not t.data:
            t.data.copy_(buf)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s parameters and buffers (in place: the Parameter objects stay)."""
    if is_distributed():
        _broadcast_tensors([*module.parameters(), *module.buffers()], src)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BatchNorm running statistics), in place."""
    if is_distributed():
        _broadcast_tensors(list(module.buffers()), src)


def _all_reduce(values: Sequence[float], op: Any) -> list[float]:
    """Reduce each value over the ranks with `op` (float64, one collective)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=op)
    return t.tolist()


# -------------------------------------------------------------------------------------------------
# data: one shard per rank
# -------------------------------------------------------------------------------------------------
class ShardSampler(Sampler[int]):
    """Rank `rank` of `world_size` takes items `rank, rank + world_size, rank + 2*world_size, ...` of
    `indices` (or of `range(indices)`), in order: shards differ in size by at most one item and nothing is
    repeated, so sums over the shards add up to the sum over the whole set (DistributedSampler pads the
    last shard with repeated items instead)."""

    def __init__(self, indices: "int | Sequence[int]", rank: int, world_size: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.indices = range(indices) if isinstance(indices, int) else list(indices)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(self.indices[self.rank::self.world_size])


def _batching(dl: Any) -> tuple[Sampler, int, bool]:
    """`(sampler, batch_size, drop_last)` of a torch DataLoader that batches with a plain `BatchSampler`
    (every DataLoader built with `batch_size=`, and loaders that reuse one, like FeatureCache's); a
    TypeError saying why for anything else."""
    if not isinstance(dl, DataLoader):
        raise TypeError(f"it is a {type(dl).__name__}, not a torch DataLoader")
    if isinstance(dl.dataset, IterableDataset):
        raise TypeError("it reads an IterableDataset, which has no indices to split (shard it inside the dataset)")
    batches = dl.batch_sampler
    if type(batches) is not BatchSampler:
        raise TypeError(f"it batches with a {type(batches).__name__}, not a plain BatchSampler")
    return batches.sampler, batches.batch_size, batches.drop_last


def _loader_like(dl: DataLoader, sampler: Sampler, batch_size: int, drop_last: bool) -> DataLoader:
    """A DataLoader reading `dl`'s dataset through `sampler`, with `dl`'s collation, workers, memory
    pinning and generator (which seeds its workers, and which checkpoints record)."""
    kwargs: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                  num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
                                  timeout=dl.timeout, worker_init_fn=dl.worker_init_fn, generator=dl.generator,
                                  persistent_workers=dl.persistent_workers)
    if dl.num_workers > 0:
        kwargs.update(prefetch_factor=dl.prefetch_factor, multiprocessing_context=dl.multiprocessing_context)
    if getattr(dl, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = dl.pin_memory_device
    return DataLoader(dl.dataset, **kwargs)


def shard_train_loader(dl: Any, rank: int, world_size: int, seed: int = 0) -> DataLoader:
    """`dl` with a `DistributedSampler`: each rank reads its own `1/world_size` of the training set (the
    tail that does not split evenly is dropped), same batch size per process, shuffled when `dl` was.
    Call `loader.sampler.set_epoch(e)` before each epoch for a new shuffle (DistributedCallback does).
    A loader that already has a DistributedSampler is returned as it is."""
    try:
        sampler, batch_size, drop_last = _batching(dl)
    except TypeError as e:
        raise TypeError(f"cannot split the training data between {world_size} processes: {e}. Give the learner a "
                        "torch DataLoader built with batch_size= over a map-style dataset, or build one with a "
                        "torch.utils.data.DistributedSampler yourself (it is then used as it is)") from None
    if isinstance(sampler, DistributedSampler):
        return dl
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != len(dl.dataset):
            raise TypeError("the training DataLoader samples with replacement or a custom num_samples, which a "
                            "DistributedSampler cannot reproduce: build it with a DistributedSampler yourself")
        shuffle = True
    elif isinstance(sampler, SequentialSampler):
        shuffle = False
    else:
        raise TypeError(f"the training DataLoader uses a {type(sampler).__name__}, which cannot be split "
                        "between processes automatically: build it with a DistributedSampler yourself")
    distributed_sampler = DistributedSampler(dl.dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                             seed=seed, drop_last=True)
    return _loader_like(dl, distributed_sampler, batch_size, drop_last)


def batches_per_epoch(dl: Any) -> int:
    """Training batches each process runs per epoch: `len(dl)` in one process; under DDP the length of
    this rank's `shard_train_loader` (what a checkpoint written during a distributed fit records)."""
    if not is_distributed():
        return len(dl)
    return len(shard_train_loader(dl, rank(), world_size()))


def shard_valid_loader(dl: Any, rank: int, world_size: int) -> DataLoader:
    """`dl` restricted to this rank's `ShardSampler` shard of its items (no item repeated, none dropped).
    TypeError when `dl` cannot be split (not a DataLoader, an IterableDataset, a custom batch sampler)."""
    sampler, batch_size, drop_last = _batching(dl)
    if isinstance(sampler, SequentialSampler):
        indices: "int | list[int]" = len(dl.dataset)
    else:  # the same set on every rank (e.g. a SubsetRandomSampler), in a fixed order
        indices = sorted(iter(sampler))
    return _loader_like(dl, ShardSampler(indices, rank, world_size), batch_size, drop_last)


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


def sync_batchnorm(learn: "Learner") -> int:
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


def _place_on_local_device(learn: "Learner") -> None:
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


def _hyper_parameters(learn: "Learner") -> list[float]:
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
    split without padding and its sums all-reduced, training losses averaged over the ranks. Does nothing
    in a single process. Use it through `distributed(learn)`, which also starts the process group, syncs
    the initial weights, hides the bar on other ranks and keeps files to rank 0.

    Order -5: its `before_fit` runs after FeatureCache (-20, which may swap the model and the loaders)
    and CompileCallback (-10: DDP then wraps the compiled module), and before the schedulers (10) read
    `len(dls.train)`; its `after_validate` runs before the Recorder (50) divides the sums.
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
        self._warned_valid = False

    # -- fit ------------------------------------------------------------------------------------
    def before_fit(self) -> None:
        learn = self.learn
        # lr_find sweeps each rank's copy on its own (it restores everything afterwards): no DDP for it
        self._active = is_distributed() and learn.phase != "lr_find"
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
        highest = _all_reduce(mine, dist.ReduceOp.MAX)
        lowest = [-v for v in _all_reduce([-v for v in mine], dist.ReduceOp.MAX)]
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
        self._average_training_losses()

    def _average_training_losses(self) -> None:
        """The Recorder's losses of this epoch's steps (raw and smoothed, not yet read back from the device)
        become their mean over the ranks: the loss on the whole global batch, the same on every rank (so
        `train_loss` in the table, and anything monitoring it, agree). One collective per epoch."""
        rec = self.learn.recorder
        if rec not in self.learn.cbs or not rec._pending_losses:
            return
        n = len(rec._pending_losses)
        stacked = torch.stack(rec._pending_losses + rec._pending_smooth)
        mean = torch.tensor(_all_reduce(stacked.tolist(), dist.ReduceOp.SUM), dtype=stacked.dtype,
                            device=stacked.device) / world_size()
        rec._pending_losses, rec._pending_smooth = list(mean[:n].unbind()), list(mean[n:].unbind())

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
        if not is_distributed():
            return
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

    def after_validate(self) -> None:
        """Sum the Recorder's validation loss total and item count, and each metric's total and count,
        over the ranks, before the Recorder (order 50) divides them."""
        if not is_distributed():
            return
        rec = self.learn.recorder
        if rec not in self.learn.cbs:  # nothing accumulated the sums
            return
        metrics = rec._metric_objs
        for m in metrics:
            if not (hasattr(m, "total") and hasattr(m, "count")):
                raise TypeError(f"metric {m!r} keeps no total/count, so it cannot be summed over processes: make "
                                "it a fastfreeze Metric (a size-weighted mean)")
        sums = _all_reduce([float(rec._valid_total), rec._valid_n] +
                           [v for m in metrics for v in (float(m.total), m.count)], dist.ReduceOp.SUM)
        rec._valid_total = torch.tensor(sums[0], dtype=torch.float64, device=self.learn.device)
        rec._valid_n = int(round(sums[1]))
        for i, m in enumerate(metrics):
            m.total, m.count = sums[2 + 2 * i], int(round(sums[3 + 2 * i]))


# -------------------------------------------------------------------------------------------------
# the entry point
# -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _files_from_rank_zero(learn: "Learner") -> Iterator[None]:
    """On ranks other than 0, `learn.save`, `learn.save_checkpoint` and `learn.export` write nothing (the
    first two still return the path rank 0 writes), so callbacks that save files run on every rank unchanged."""
    if is_rank_zero():
        yield
        return
    skipped: dict[str, Callable[..., Any]] = {
        "save": lambda name, *args, **kwargs: learn._file(name),
        "save_checkpoint": lambda name="checkpoint", *args, **kwargs: learn._file(name),
        "export": lambda *args, **kwargs: None,
    }
    shadowed = {name: learn.__dict__.get(name) for name in skipped if hasattr(learn, name)}
    for name in shadowed:
        setattr(learn, name, skipped[name])  # an instance attribute, found before the class's method
    try:
        yield
    finally:
        for name, previous in shadowed.items():
            if previous is None:
                del learn.__dict__[name]
            else:
                setattr(learn, name, previous)


@contextlib.contextmanager
def distributed(learn: "Learner", sync_bn: bool = False, find_unused_parameters: bool = False,
                backend: Optional[str] = None, seed: Optional[int] = None) -> Iterator["Learner"]:
    """Train `learn` on every process torchrun started, within the block (a no-op in a single process).

    On entry: join the process group (`init_distributed(backend)`), move a CUDA learner to this process's
    GPU, convert BatchNorm to SyncBatchNorm with timm's converter if `sync_bn`, give every rank rank 0's
    weights, hide the progress bar on other ranks, make `learn.save`/`save_checkpoint`/`export` write on
    rank 0 only,
    and add a `DistributedCallback` (DDP per fit, sharded data, reduced validation). On exit the callback
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
        with _files_from_rank_zero(learn):
            yield learn
    finally:
        learn.remove_cbs([cb])
        learn.add_cbs(bars)
