"""Balanced sampling (`ImageDataLoaders.from_*(..., balance=True)`, data/sampling.py, docs/imbalance.md): class
frequencies over many epochs against a binomial bound, the draws against torch's own multinomial from the seeded
generator, the same draws with 0 or 2 workers, an exact resume, and the refusals."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastfreeze import Callback, ImageDataLoaders, Learner
from fastfreeze.core.checkpoint import CheckpointCallback
from fastfreeze.data.sampling import balance_weights
from fastfreeze.utils.seeds import EpochSeededWeightedSampler, resume_warning
from helpers import KillAfterEpoch

RNG = np.random.default_rng(0)
X100 = RNG.integers(0, 256, (100, 8, 8), dtype=np.uint8)
Y90_10 = np.array([0] * 90 + [1] * 10)


def drawn_labels(dls, epochs):
    return torch.cat([yb for _ in range(epochs) for _, yb in dls.train])


def test_balance_weights_are_one_over_the_count_of_each_items_class():
    weights = balance_weights(torch.tensor([0, 0, 0, 1, 2, 2]))
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 1 / 2, 1 / 2])


@pytest.mark.parametrize("augment", [False, True])
def test_balance_draws_each_of_two_classes_half_the_time_over_many_epochs(augment):
    """90 items of class 0, 10 of class 1: with balance=True each draw is class 1 with probability
    10 * (1/10) / (90 * (1/90) + 10 * (1/10)) = 1/2. 50 epochs of 100 draws: 5,000 Bernoulli(1/2) draws, whose
    count of class 1 lies within 4 standard deviations (sqrt(5000 / 4) = 35.4) of 2,500 but for a chance of
    6e-5; without balance every epoch holds the 10 rare items exactly once (500 in all)."""
    n_draws, epochs = 5000, 50
    dls = ImageDataLoaders.from_arrays(X100, Y90_10, valid_pct=None, size=8, bs=10, seed=0, augment=augment,
                                       balance=True)
    labels = drawn_labels(dls, epochs)
    assert len(labels) == n_draws
    sd = math.sqrt(n_draws * 0.5 * 0.5)
    assert abs(int((labels == 1).sum()) - n_draws / 2) < 4 * sd
    plain = ImageDataLoaders.from_arrays(X100, Y90_10, valid_pct=None, size=8, bs=10, seed=0, augment=augment)
    assert int((drawn_labels(plain, epochs) == 1).sum()) == 500


def test_each_rare_item_is_drawn_about_equally_often():
    """Within the rare class each of its 10 items has probability 1/20 per draw: over 5,000 draws each is drawn
    250 times within 4 sd (sqrt(5000 * 0.05 * 0.95) = 15.4); the sampler is read directly."""
    dls = ImageDataLoaders.from_arrays(X100, Y90_10, valid_pct=None, size=8, bs=10, seed=0, balance=True)
    counts = torch.bincount(torch.tensor([i for _ in range(50) for i in dls.train.sampler]), minlength=100)
    sd = math.sqrt(5000 * 0.05 * 0.95)
    assert (counts[90:] - 250).abs().max() < 4 * sd
    assert counts.sum() == 5000


def test_the_draws_are_torch_multinomial_with_replacement_from_the_seeded_generator():
    """Epoch by epoch, the indices are `torch.multinomial(1/count weights, n, replacement=True)` from a generator
    seeded with `seed` (WeightedRandomSampler's draw, by hand); with augmentation each epoch first draws its
    item seed from the same generator (EpochSeededSampler's rule) and the keys carry it."""
    weights = torch.tensor([1 / 90] * 90 + [1 / 10] * 10, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    expected = [torch.multinomial(weights, 100, True, generator=g).tolist() for _ in range(2)]
    dls = ImageDataLoaders.from_arrays(X100, Y90_10, valid_pct=None, size=8, bs=10, seed=7, balance=True)
    assert [list(dls.train.sampler) for _ in range(2)] == expected

    g = torch.Generator().manual_seed(7)
    seed0 = int(torch.empty((), dtype=torch.int64).random_(generator=g))
    first = torch.multinomial(weights, 100, True, generator=g).tolist()
    augmented = ImageDataLoaders.from_arrays(X100, Y90_10, valid_pct=None, size=8, bs=10, seed=7, balance=True,
                                             augment=True)
    assert isinstance(augmented.train.sampler, EpochSeededWeightedSampler)
    assert list(augmented.train.sampler) == [(i, seed0) for i in first]


def test_the_same_seed_gives_the_same_balanced_batches_with_0_or_2_workers():
    x = RNG.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    y = np.array([0] * 32 + [1] * 8)

    def batches(workers):
        dls = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=12, bs=8, seed=3, balance=True, augment=True,
                                           num_workers=workers)
        return [b for _ in range(2) for batch in dls.train for b in batch]
    zero, two = batches(0), batches(2)
    assert len(zero) == len(two) == 2 * 5 * 2
    assert all(torch.equal(a, b) for a, b in zip(zero, two))
    other_seed = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=12, bs=8, seed=4, balance=True)
    assert not torch.equal(next(iter(other_seed.train))[1], zero[1])


def make_balanced_learner(path, seed):
    """A linear model on flattened 8x8 images (dropout draws from the global generator), balanced training data
    with flips seeded per item."""
    x = np.random.default_rng(1).integers(0, 256, (48, 8, 8), dtype=np.uint8)
    y = np.array([0] * 40 + [1] * 8)
    dls = ImageDataLoaders.from_arrays(x, y, x[:8], y[:8], size=8, bs=8, seed=0, balance=True, augment=True)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 16), nn.ReLU(), nn.Dropout(0.3)),
                          nn.Linear(16, 2))
    batches = Batches()
    return Learner(model, dls, path=path, progress=False, cbs=[batches]), batches


class Batches(Callback):
    """Each training batch's inputs and targets, by epoch."""

    def __init__(self):
        self.seen = {}

    def after_batch(self):
        if self.learn.training:
            xb, yb = self.learn.xb[0], self.learn.yb[0]
            self.seen.setdefault(self.learn.epoch, []).append((xb.clone(), yb.clone()))


def test_a_resumed_run_draws_the_same_balanced_batches_and_ends_bit_identical(tmp_path):
    full, full_batches = make_balanced_learner(tmp_path / "full", seed=0)
    full.fit_one_cycle(3, 1e-2)
    killed, _ = make_balanced_learner(tmp_path / "run", seed=0)
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(), KillAfterEpoch(0)])
    resumed, resumed_batches = make_balanced_learner(tmp_path / "run", seed=99)  # other weights and generator
    resumed.fit_one_cycle(3, 1e-2, resume_from="checkpoint")
    full_seen, resumed_seen = full_batches.seen, resumed_batches.seen
    assert sorted(resumed_seen) == [1, 2]
    for epoch in (1, 2):
        for (xa, ya), (xb, yb) in zip(full_seen[epoch], resumed_seen[epoch]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # the control: a fresh loader's first epoch is not epoch 1's draw, so restoring the generator matters
    fresh = make_balanced_learner(tmp_path / "fresh", seed=0)[0].dls.train
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(full_seen[1], fresh))
    assert resume_warning(full.dls.train) is None


def noise_folder(root, counts=(("a", 6), ("b", 2))):
    for split, per_class in (("train", dict(counts)), ("valid", {c: 1 for c, _ in counts})):
        for c, n in per_class.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_every_file_entry_point_takes_balance(tmp_path):
    """from_folder, from_lists, from_df and from_csv weight each training item by 1/count of its class."""
    pd = pytest.importorskip("pandas")
    folder = noise_folder(tmp_path / "data")
    expected = [1 / 6] * 6 + [1 / 2] * 2  # the training items in order: 6 of 'a', then 2 of 'b'
    dls = ImageDataLoaders.from_folder(folder, size=8, bs=2, num_workers=0, balance=True)
    assert dls.train.sampler.weights.tolist() == pytest.approx(expected)
    files = ([f"train/a/{i}.png" for i in range(6)] + ["train/b/0.png", "train/b/1.png"]
             + ["valid/a/0.png", "valid/b/0.png"])
    labels = ["a"] * 6 + ["b"] * 2 + ["a", "b"]
    is_valid = [False] * 8 + [True] * 2
    lists = ImageDataLoaders.from_lists(folder, files, labels, valid=is_valid, size=8, bs=2, num_workers=0,
                                        balance=True)
    assert lists.train.sampler.weights.tolist() == pytest.approx(expected)
    df = pd.DataFrame({"fname": files, "label": labels, "is_valid": is_valid})
    df.to_csv(folder / "labels.csv", index=False)
    from_csv = ImageDataLoaders.from_csv(folder, "labels.csv", valid_col="is_valid", size=8, bs=2, num_workers=0,
                                         balance=True)
    assert from_csv.train.sampler.weights.tolist() == pytest.approx(expected)
    assert len(from_csv.train) == 4  # 8 draws per epoch, as many as the training items
    plain = ImageDataLoaders.from_df(df, folder, valid_col="is_valid", size=8, bs=2, num_workers=0)
    assert not hasattr(plain.train.sampler, "weights")  # balance is off by default


def test_balance_refuses_multi_label_and_regression_with_the_fix():
    multi_hot = np.array([[1, 0], [0, 1], [1, 1], [1, 0]] * 5)
    with pytest.raises(ValueError, match=r"multi-label item.*class_weights='balanced'"):
        ImageDataLoaders.from_arrays(X100[:20], multi_hot, valid_pct=None, size=8, balance=True)
    with pytest.raises(ValueError, match="regression targets have no classes: drop balance=True"):
        ImageDataLoaders.from_arrays(X100[:20], np.linspace(0, 1, 20), valid_pct=None, size=8, balance=True)
    with pytest.raises(TypeError, match="balance must be True or False"):
        ImageDataLoaders.from_arrays(X100, Y90_10, size=8, balance="yes")
