"""The processes of a distributed run (torchrun / DDP): who this process is, collectives that are no-ops in a
single process, and splitting data between the ranks.

Everything here works without a process group (one process: rank 0 of 1); `callbacks/distributed.py` starts one and
trains with DDP on top of these pieces.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, \
    Sampler, SequentialSampler

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------
# who this process is
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


# -------------------------------------------------------------------------------------------------
# collectives (no-ops in a single process)
# -------------------------------------------------------------------------------------------------
def comm_device() -> torch.device:
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
    dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


@torch.no_grad()
def _broadcast_tensors(tensors: Sequence[torch.Tensor], src: int) -> None:
    """Overwrite each tensor in place with rank `src`'s values."""
    device = comm_device()
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


def all_reduce(values: Sequence[float], op: Any) -> list[float]:
    """Reduce each value over the ranks with `op` (float64, one collective)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=op)
    return t.tolist()


def sum_across_ranks(values: list[float]) -> list[float]:
    """Each value summed over the processes (the values themselves in a single process)."""
    return all_reduce(values, dist.ReduceOp.SUM) if is_distributed() else list(values)


def gather_across_ranks(obj: Any) -> list[Any]:
    """Every process's `obj` (any picklable value, e.g. CPU tensors), in rank order, on every rank; `[obj]` in
    a single process. Every rank must call it."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


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
