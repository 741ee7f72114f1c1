"""The training loop never waits for the device in steady state: the tensor reads (host-device synchronisations on
a GPU) that fastfreeze's code makes per training batch, counted exactly on the CPU by benchmarks/host_syncs.py."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from fastfreeze.core.label_check import LabelCheck

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "host_syncs.py"


@pytest.fixture(scope="module")
def host_syncs():
    spec = importlib.util.spec_from_file_location("host_syncs", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["host_syncs"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_counter_sees_a_read_per_batch_of_a_hand_written_loop(host_syncs):
    """The counter itself: a loop calling loss.item() every batch reads exactly once per batch."""
    per_batch, _, reads = host_syncs.hand_written(n_batches=4)
    assert per_batch == 1.0 and sum(reads.in_batch.values()) == 4 * 2  # 4 batches in each of the 2 counted epochs


def test_the_default_fit_with_accuracy_reads_nothing_per_training_batch(host_syncs):
    """Measured after issue 28: 0 reads per steady-state training batch (4.0 before: 2 for the label check, 2 in
    the divergence guard), 5 per epoch outside the training batches (the guard's one read of the epoch's losses,
    the validation loss, the accuracy, and torch's DataLoader seeding its two passes)."""
    per_batch, per_epoch, reads = host_syncs.count(lambda learn: learn.fit(3, lr=1e-3), n_batches=8)
    assert per_batch <= 0.0, dict(reads.in_batch)
    assert per_epoch <= 5.0, dict(reads.between)


def test_fine_tune_reads_nothing_per_training_batch_in_either_phase(host_syncs):
    for phase in ("frozen", "unfrozen"):
        per_batch, _, reads = host_syncs.count(host_syncs.fine_tune, n_batches=4, phases={phase})
        assert per_batch <= 0.0, (phase, dict(reads.in_batch))


def test_a_loaders_labels_are_checked_in_its_first_full_pass_only_and_again_for_another_head():
    check, loss = LabelCheck(), nn.CrossEntropyLoss()
    loader = type("Loader", (), {})()  # any object a weak reference can point to
    good, bad = torch.tensor([0, 1, 2]), torch.tensor([0, 3, 1])
    check.begin(loader)
    with pytest.raises(ValueError, match=r"label 3 in a training batch, but the model has 3 outputs .* pass n_out=4"):
        check.check(loss, bad, torch.zeros(3, 3), "training")
    check.begin(loader)
    check.check(loss, good, torch.zeros(3, 3), "training")
    check.end()  # a full pass with 3 outputs: not checked again for 3 outputs
    check.begin(loader)
    check.check(loss, bad, torch.zeros(3, 3), "training")
    check.begin(loader)  # a head of 2 outputs: checked again
    with pytest.raises(ValueError, match=r"label 2 in a validation batch, but the model has 2 outputs"):
        check.check(loss, good, torch.zeros(3, 2), "validation")


def test_an_ignored_label_is_not_outside():
    check = LabelCheck()
    check.begin([])  # a list takes no weak reference: checked at every pass
    check.check(nn.CrossEntropyLoss(ignore_index=-100), torch.tensor([0, -100, 2]), torch.zeros(3, 3), "training")
    check.end()
    with pytest.raises(ValueError, match="label -1 in a training batch"):
        check.begin([])
        check.check(nn.CrossEntropyLoss(), torch.tensor([0, -1, 2]), torch.zeros(3, 3), "training")
