"""DataLoaders: the default batch size, seeded iteration, label decoding."""
import pytest
import torch

from fastfreeze import DataLoaders
from fastfreeze.data import decode_label, default_batch_size, loader_generators, seeded_loader


@pytest.mark.parametrize("n, bs", [(100_000, 64), (1024, 64), (1023, 32), (512, 32), (511, 16), (500, 16),
                                   (256, 16), (255, 8), (40, 8), (3, 8)])
def test_default_batch_size_keeps_16_batches_per_epoch(n, bs):
    """64 (fastai's) unless an epoch would have fewer than 16 batches; halved down to 8 (worked by hand:
    16 * 64 = 1024, 16 * 32 = 512, 16 * 16 = 256)."""
    assert default_batch_size(n) == bs


def test_decode_label_names_a_class_when_the_vocab_does():
    assert decode_label(["cat", "dog"], 1) == "dog"
    assert decode_label(None, 1) == 1 and decode_label(["cat"], 3) == 3  # no name: the index itself


def test_seeded_loader_gives_the_seeds_order_and_puts_the_shuffle_back():
    x = torch.arange(32.0).unsqueeze(1)
    dls = DataLoaders.from_tensors(x, torch.zeros(32, dtype=torch.long), bs=8, seed=3)
    order = lambda: torch.cat([xb[:, 0] for xb, _ in dls.train]).tolist()  # noqa: E731
    with seeded_loader(dls.train, 0):
        first = order()
    with seeded_loader(dls.train, 0):
        assert order() == first  # the same seed, the same order
    state = [g.get_state() for g in loader_generators(dls.train)]
    with seeded_loader(dls.train, 1):
        assert order() != first and sorted(order()) == list(range(32))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(loader_generators(dls.train), state))
