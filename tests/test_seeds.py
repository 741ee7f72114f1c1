"""Seeds: set_seed, seeded blocks, per-epoch item seeds, and image data that is the same with 0 or N workers and
after a resume (docs/reproducibility.md)."""
import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fastfreeze import CheckpointCallback, DataLoaders, ImageDataLoaders, Learner, vision_learner
from fastfreeze.utils.seeds import EpochSeededSampler, item_key, resume_warning, seed_for, seeded, set_seed
from helpers import KillAfterEpoch, noise_folder



def global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()


def same_states(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


def scramble_global_generators(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_set_seed_seeds_python_numpy_and_torch():
    set_seed(123)
    drawn = random.random(), np.random.rand(), torch.rand(2)
    assert drawn[0] == random.Random(123).random()
    assert drawn[1] == np.random.RandomState(123).rand()
    assert torch.equal(drawn[2], torch.rand(2, generator=torch.Generator().manual_seed(123)))


def test_seeded_draws_from_the_seed_and_puts_the_global_generators_back():
    scramble_global_generators(5)
    before = global_states()
    with seeded(77):
        inside = random.random(), torch.rand(3)
    assert same_states(global_states(), before)
    assert inside[0] == random.Random(77).random()
    assert torch.equal(inside[1], torch.rand(3, generator=torch.Generator().manual_seed(77)))
    with seeded(None):  # no seed: the block draws from the global generators as usual
        random.random()
    assert not same_states(global_states(), before)


def test_seed_for_mixes_nearby_numbers_into_unrelated_seeds():
    seeds = [seed_for(42, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    # nearby seeds share no structure: each of the 63 bits is set in about half of them
    ones = [sum(s >> bit & 1 for s in seeds) for bit in range(63)]
    assert all(400 < n < 600 for n in ones), ones
    assert seed_for(42, 7) == seed_for(42, 7) != seed_for(7, 42)
    assert item_key(3) == (3, None) and item_key((3, 42)) == (3, seed_for(42, 3))


def test_epoch_seeded_sampler_shuffles_each_index_once_with_one_seed_per_epoch():
    sampler = EpochSeededSampler(range(10), torch.Generator().manual_seed(0))
    epochs = [list(sampler) for _ in range(3)]
    for keys in epochs:
        assert sorted(i for i, _ in keys) == list(range(10)) and len({s for _, s in keys}) == 1
    assert len({keys[0][1] for keys in epochs}) == 3  # a new seed every epoch
    again = EpochSeededSampler(range(10), torch.Generator().manual_seed(0))
    assert [list(again) for _ in range(3)] == epochs  # the generator's seed decides everything


def first_epochs(path, workers, n_epochs=2):
    dls = ImageDataLoaders.from_folder(path, bs=4, size=24, num_workers=workers, seed=3)
    return [[x.clone() for x, _ in dls.train] for _ in range(n_epochs)], dls


def test_augmented_folder_data_is_the_same_with_0_or_2_workers_whatever_the_global_generators(tmp_path):
    """timm's random resized crop draws from Python's `random`: without item seeds, runs differ from the first
    batch (the issue's case) and 0 and 2 workers differ from each other."""
    path = noise_folder(tmp_path)
    scramble_global_generators(1)
    in_process, dls = first_epochs(path, workers=0)
    scramble_global_generators(2)
    before = global_states()
    in_workers, _ = first_epochs(path, workers=2)
    for a, b in zip(in_process, in_workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(in_process[0][0], in_process[1][0])  # each epoch draws new augmentation
    scramble_global_generators(2)
    list(dls.train)
    list(dls.valid)
    assert same_states(global_states(), before)  # loading draws nothing from the global generators
    # the control: the same transforms without item keys follow the global generators
    unseeded = DataLoader(dls.train.dataset, batch_size=4)
    scramble_global_generators(1)
    one = next(iter(unseeded))[0]
    scramble_global_generators(2)
    assert not torch.equal(one, next(iter(unseeded))[0])


def test_array_flips_are_the_same_with_0_or_2_workers(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    y = np.arange(32) % 2

    def batches(workers):
        dls = ImageDataLoaders.from_arrays(x, y, size=16, bs=8, augment=True, num_workers=workers, seed=1)
        return [b for _ in range(2) for b, _ in dls.train]
    scramble_global_generators(1)
    a = batches(0)
    scramble_global_generators(2)
    b = batches(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def make_vision_learner(path, folder, seed):
    dls = ImageDataLoaders.from_folder(folder, bs=4, size=24, num_workers=2, seed=0)
    set_seed(seed)
    return vision_learner(dls, "test_resnet", pretrained=False, progress=False, path=path)


def test_resume_with_persistent_workers_is_exact(tmp_path):
    """from_folder's default: persistent worker processes. Killed after epoch 0 and resumed in a new learner
    (other global seed), the weights end bit-identical to the uninterrupted run's."""
    folder = noise_folder(tmp_path / "data")
    full = make_vision_learner(tmp_path / "full", folder, seed=0)
    assert full.dls.train.persistent_workers and full.dls.train.num_workers == 2
    full.fit_one_cycle(2, 1e-3)
    killed = make_vision_learner(tmp_path / "run", folder, seed=0)
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(2, 1e-3, cbs=[CheckpointCallback(), KillAfterEpoch()])
    resumed = make_vision_learner(tmp_path / "run", folder, seed=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: this resume is exact
        resumed.fit_one_cycle(2, 1e-3, resume_from="checkpoint")
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)


class RandomItems(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(2), i % 2


def test_resume_warns_once_when_it_cannot_be_exact(tmp_path):
    dl = DataLoader(RandomItems(), batch_size=4, num_workers=1, persistent_workers=True)
    assert "persistent worker processes" in resume_warning(dl)
    assert resume_warning(DataLoader(RandomItems(), batch_size=4)) is None
    learn = Learner(torch.nn.Linear(2, 2), DataLoaders(dl), progress=False, path=tmp_path)
    learn.fit(1, 1e-3, cbs=CheckpointCallback())
    with pytest.warns(UserWarning, match=r"resuming from .*checkpoint\.pth: the training DataLoader keeps persistent "
                                         r"worker processes.*For an exact resume, build the data with "
                                         r"ImageDataLoaders"):
        learn.fit(1, 1e-3, resume_from="checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, 1e-3, resume_from="checkpoint")  # once only
