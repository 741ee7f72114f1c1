"""DataLoaders: the default batch size, seeded iteration, label decoding, the class count, separate
generators for the order and the workers."""
import pytest
import torch

from fastfreeze import DataLoaders
from fastfreeze.core.dataloaders import decode_label, default_batch_size, loader_generators, seeded_loader
from fastfreeze.core.validation import check_classes


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
    dls = DataLoaders.from_tensors(x, torch.zeros(32, dtype=torch.long), bs=8, seed=3, c=2)
    order = lambda: torch.cat([xb[:, 0] for xb, _ in dls.train]).tolist()  # noqa: E731
    with seeded_loader(dls.train, 0):
        first = order()
    with seeded_loader(dls.train, 0):
        assert order() == first  # the same seed, the same order
    state = [g.get_state() for g in loader_generators(dls.train)]
    with seeded_loader(dls.train, 1):
        assert order() != first and sorted(order()) == list(range(32))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(loader_generators(dls.train), state))


def test_class_count_is_max_plus_one_when_the_labels_can_tell():
    assert check_classes(torch.tensor([0, 2, 1, 2]), torch.tensor([2, 0])) == 3
    with pytest.raises(ValueError, match=r"the class indices have gaps: \[0, 2\] have no item although labels go up "
                                         r"to 3, so the model would get 4 outputs, 2 of which never train\. Number the "
                                         r"classes 0\.\.1 \(e\.g\. np\.unique\(y, return_inverse=True\)\[1\]\)"):
        check_classes([1, 3], None)  # a class never seen anywhere would be an output that never trains


def test_class_count_refuses_a_single_class_and_classes_seen_only_in_validation():
    with pytest.raises(ValueError, match=r"the training labels hold a single class \(0, 5 items\): a classifier "
                                         r"needs at least 2\..* pass c= \(the number of classes\)"):
        DataLoaders.from_tensors(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"validation label\(s\) \[1, 4\] never occur in the training labels "
                                         r"\(which hold 2 classes, up to 2\).*pass c="):
        DataLoaders.from_tensors(torch.randn(4, 2), torch.tensor([0, 2, 0, 2]), torch.randn(3, 2),
                                 torch.tensor([1, 4, 2]))
    dls = DataLoaders.from_tensors(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), c=3)  # said explicitly
    assert dls.c == 3


def test_the_order_and_the_worker_seeds_come_from_separate_generators():
    """A DataLoader draws its workers' base seed when an iteration starts: from its own generator here, so the
    shuffle order does not depend on how often iteration started (persistent workers start once), and torch's
    global generator is not touched by either loader."""
    x = torch.arange(32.0).unsqueeze(1)
    dls = DataLoaders.from_tensors(x, torch.arange(32) % 2, x, torch.arange(32) % 2, bs=8, seed=3)
    assert len(loader_generators(dls.train)) == 2 and dls.train.generator is not dls.train.sampler.generator
    expected = torch.randperm(32, generator=torch.Generator().manual_seed(3))  # RandomSampler's draw, by hand
    before = torch.get_rng_state()
    first = torch.cat([xb[:, 0] for xb, _ in dls.train]).long()
    list(dls.valid)
    assert torch.equal(first, expected) and torch.equal(torch.get_rng_state(), before)
