"""Processes of a distributed run without a process group: rank 0 of 1, collectives that return their input, and
splitting data between ranks."""
import pytest
import torch

from fastfreeze import DataLoaders
from fastfreeze.utils.ranks import (ShardSampler, batches_per_epoch, broadcast_object, gather_across_ranks,
                                    is_rank_zero, on_rank_zero, rank, shard_train_loader, shard_valid_loader,
                                    sum_across_ranks, world_size)
from helpers import blobs

N_TRAIN, N_VALID, BS = 64, 27, 8  # odd validation size: a padded split would repeat an item


def tiny_data() -> tuple[DataLoaders, torch.Tensor, torch.Tensor]:
    x, y = blobs(N_TRAIN, spread=1.5)
    xv, yv = blobs(N_VALID, seed=1, spread=1.5)
    return DataLoaders.from_tensors(x, y, xv, yv, bs=BS, seed=0), xv, yv


def test_one_process_is_rank_zero_of_one_and_collectives_return_their_input():
    assert (rank(), world_size(), is_rank_zero()) == (0, 1, True)
    assert broadcast_object({"lr": 0.1}) == {"lr": 0.1} and sum_across_ranks([1.5, 2.0]) == [1.5, 2.0]
    assert gather_across_ranks((1, "a")) == [(1, "a")]  # every rank's value, in rank order: this one's alone
    assert on_rank_zero(lambda a, b: a + b, 2, b=3) == 5
    dls, _, _ = tiny_data()
    assert batches_per_epoch(dls.train) == len(dls.train) == N_TRAIN // BS


# -------------------------------------------------------------------------------------------------
# one process
# -------------------------------------------------------------------------------------------------
def test_shard_sampler_splits_without_padding():
    assert list(ShardSampler(7, 0, 2)) == [0, 2, 4, 6] and len(ShardSampler(7, 0, 2)) == 4
    assert list(ShardSampler(7, 1, 2)) == [1, 3, 5] and len(ShardSampler(7, 1, 2)) == 3
    assert [list(ShardSampler(2, r, 3)) for r in range(3)] == [[0], [1], []]
    assert list(ShardSampler([10, 11, 12, 13, 14], 1, 2)) == [11, 13]
    with pytest.raises(ValueError, match="rank must be in"):
        ShardSampler(7, 2, 2)


def test_sharded_loaders_cover_the_data_once():
    dls, _, _ = tiny_data()
    shards = [shard_train_loader(dls.train, r, 2, seed=3) for r in (0, 1)]
    items = [torch.cat([xb for xb, _ in dl]) for dl in shards]
    assert all(dl.batch_size == BS for dl in shards) and [len(i) for i in items] == [32, 32]
    every = torch.cat(items)
    assert len(torch.unique(every, dim=0)) == N_TRAIN  # disjoint halves of the 64 training items
    first = torch.cat([xb for xb, _ in shards[0]])
    shards[0].sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([xb for xb, _ in shards[0]]))  # a new shuffle per epoch
    valid = [torch.cat([yb for _, yb in shard_valid_loader(dls.valid, r, 2)]) for r in (0, 1)]
    _, yv = blobs(N_VALID, seed=1, spread=1.5)
    assert torch.equal(valid[0], yv[0::2]) and torch.equal(valid[1], yv[1::2])
    with pytest.raises(TypeError, match="not a torch DataLoader"):
        shard_train_loader([(torch.zeros(2, 4), torch.zeros(2))], 0, 2)
