"""Divergence stops a fit with one clear message and leaves finite weights (docs/divergence.md)."""
import math

import pytest
import torch

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.core.checkpoint import CheckpointCallback
from fastfreeze.core.divergence import DivergenceGuard, non_finite_tensors
from fastfreeze.core.checkpoint import read_checkpoint
from helpers import blobs, mlp2, same


def fresh_dls(x_valid=None):
    x, y = blobs(40)
    xv, yv = blobs(24, seed=1)
    return DataLoaders.from_tensors(x, y, xv if x_valid is None else x_valid, yv, bs=8, seed=0)  # 5 batches


def state(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


class SnapshotEpochs(Callback):
    """The weights at the end of each epoch, taken by the test itself."""
    order = 100

    def __init__(self):
        self.at = {}

    def after_epoch(self):
        self.at[self.learn.epoch] = state(self.learn)


class Poison(Callback):
    """Writes NaN into the first weight after the step of (epoch, batch): divergence that the batch's own
    loss does not show."""
    order = 100

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def after_step(self):
        if (self.learn.epoch, self.learn.iter) == (self.epoch, self.batch):
            with torch.no_grad():
                next(self.learn.model.parameters())[0, 0] = float("nan")


def test_every_learner_has_the_guard_between_the_recorder_and_the_checkpoints():
    learn = Learner(mlp2(), fresh_dls(), progress=False)
    assert isinstance(learn.divergence_guard, DivergenceGuard) and learn.divergence_guard in learn.cbs
    assert learn.recorder.order < DivergenceGuard.order < CheckpointCallback.order


def test_non_finite_tensors_names_parameters_and_buffers():
    model = mlp2()
    assert non_finite_tensors(model) == []
    with torch.no_grad():
        model[0][0].bias[3] = float("inf")
        model[0][1].running_var[0] = float("nan")
    assert non_finite_tensors(model) == ["0.0.bias", "0.1.running_var"]


def test_a_huge_lr_stops_the_fit_and_puts_back_the_weights_of_its_start():
    """lr 1e20: the first step leaves BatchNorm's running_var infinite, and the second batch's loss is NaN."""
    learn = Learner(mlp2(), fresh_dls(), progress=False)
    learn.divergence_guard.check_every = 1  # every step's loss read before the step
    before = state(learn)
    with pytest.raises(FloatingPointError, match=r"training diverged: the training loss is nan at epoch 0, batch 1 of "
                                                 r"'fit 1'\. 1 tensor of the model holds NaN or infinite values "
                                                 r"\(0\.1\.running_var\); the learner was put back to its weights from "
                                                 r"the start of this fit, and its optimizer state was cleared\. Lower "
                                                 r"the learning rate"):
        learn.fit(2, lr=1e20)
    assert same(state(learn), before) and not learn.opt.state
    assert non_finite_tensors(learn.model) == []


def test_divergence_in_a_later_epoch_puts_back_the_last_good_epoch():
    snaps = SnapshotEpochs()
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=[snaps, Poison(epoch=1, batch=2)])
    learn.divergence_guard.check_every = 1  # every step's loss read before the step
    # batch 3's forward pass spread the NaN into BatchNorm's running statistics: three tensors, all named
    with pytest.raises(FloatingPointError, match=r"the training loss is nan at epoch 1, batch 3 of 'fit 1'\. 3 tensors "
                                                 r"of the model hold NaN or infinite values \(0\.0\.weight, "
                                                 r"0\.1\.running_mean, 0\.1\.running_var\); the learner was put back to its weights from the end of epoch 0 of "
                                                 r"'fit 1'"):
        learn.fit(3, lr=1e-2)
    assert same(state(learn), snaps.at[0])
    assert len(learn.recorder.losses) == 5 + 3  # the poisoned step is in the history (its step ran), the next is not


def test_an_lr_corrupted_past_the_checks_is_never_reported_as_untouched_weights():
    """The issue's NaN-lr case: the step itself makes the weights NaN while its loss was finite."""
    class NanLr(Callback):
        def before_batch(self):
            if self.learn.training and self.learn.iter == 2:
                for g in self.learn.opt.param_groups:
                    g["lr"] = float("nan")
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=NanLr())
    before = state(learn)
    with pytest.raises(FloatingPointError) as info:
        learn.fit(1, lr=1e-2)
    message = str(info.value)
    assert "batch 3" in message and "hold NaN or infinite values" in message and "did not run" not in message
    assert same(state(learn), before)


def test_a_nan_in_the_validation_data_stops_after_the_epoch():
    xv, _ = blobs(24, seed=1)
    xv[5, 2] = float("nan")
    learn = Learner(mlp2(), fresh_dls(x_valid=xv), progress=False)
    before = state(learn)
    with pytest.raises(FloatingPointError, match=r"the validation loss is nan after epoch 0 of 'fit 1' \(training loss "
                                                 r"[0-9.]+\)\. The weights are all finite; the learner was put back to "
                                                 r"its weights from the start of this fit"):
        learn.fit(2, lr=1e-2)
    assert same(state(learn), before)
    assert len(learn.recorder.values) == 1 and math.isnan(learn.recorder.values[0]["valid_loss"])


def test_weights_gone_non_finite_without_a_bad_loss_are_caught_at_the_epoch_end(tmp_path):
    """The poisoned step is the epoch's last, so no training loss shows it: the epoch check does, before the
    CheckpointCallback saves the epoch."""
    snaps = SnapshotEpochs()
    learn = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path,
                    cbs=[snaps, Poison(epoch=1, batch=4), CheckpointCallback()])
    with pytest.raises(FloatingPointError, match=r"the validation loss is nan after epoch 1 of 'fit 1'.*1 tensor of "
                                                 r"the model holds NaN or infinite values \(0\.0\.weight\); the learner "
                                                 r"was put back to its weights from the end of epoch 0"):
        learn.fit(3, lr=1e-2)
    assert same(state(learn), snaps.at[0])
    assert read_checkpoint(tmp_path / "models" / "checkpoint.pth")["loop"]["start_epoch"] == 1  # epoch 1 not saved


def test_keep_weights_false_keeps_no_copy_and_says_so():
    learn = Learner(mlp2(), fresh_dls(), progress=False)
    learn.divergence_guard.keep_weights = False
    learn.divergence_guard.check_every = 1  # every step's loss read before the step
    with pytest.raises(FloatingPointError, match=r"they were left as they are \(learn\.divergence_guard\.keep_weights "
                                                 r"is False\): reload a checkpoint"):
        learn.fit(1, lr=1e20)
    assert learn.divergence_guard.snapshot is None
    assert non_finite_tensors(learn.model) == ["0.1.running_var"]


def test_the_copy_is_taken_after_every_good_epoch_on_the_cpu_and_released_after_the_fit():
    copies = []

    class GrabCopy(Callback):
        order = 100

        def after_epoch(self):
            guard = self.learn.divergence_guard
            copies.append((guard.snapshot, guard.snapshot_when))
    snaps = SnapshotEpochs()
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=[snaps, GrabCopy()])
    learn.fit(2, lr=1e-2)
    for epoch, (copy, when) in enumerate(copies):
        assert same(copy, snaps.at[epoch]) and all(t.device.type == "cpu" for t in copy.values())
        assert when == f"the end of epoch {epoch} of 'fit 1'"
    assert learn.divergence_guard.snapshot is None  # no memory held between fits


def test_check_every_must_be_a_positive_int():
    with pytest.raises(ValueError, match="check_every must be a positive int"):
        DivergenceGuard(check_every=0)


class CountSteps(Callback):
    order = 100

    def __init__(self):
        self.steps = 0

    def after_step(self):
        self.steps += 1


def test_by_default_the_losses_are_read_at_the_end_of_the_training_pass_and_the_last_good_epoch_comes_back():
    """The loss goes NaN at batch 2 of epoch 1 (5 batches an epoch): the default guard reads no loss during the
    epoch, so all five steps of epoch 1 run (the NaN ones make the weights NaN); at the end of the training pass it
    names batch 2 and puts back the weights of the end of epoch 0, which were taken after epoch 0 read finite."""
    class NanLoss(Callback):
        def after_loss(self):
            if self.learn.training and self.learn.epoch == 1 and self.learn.iter >= 2:
                self.learn.loss = self.learn.loss * float("nan")
    snaps, steps = SnapshotEpochs(), CountSteps()
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=[NanLoss(), snaps, steps])
    with pytest.raises(FloatingPointError, match=r"the training loss is nan at epoch 1, batch 2 of 'fit 1' \(read at "
                                                 r"the end of the epoch's training.*\)\. \d+ tensors? of the model "
                                                 r"holds? NaN or infinite values .*put back to its weights from the "
                                                 r"end of epoch 0 of 'fit 1'"):
        learn.fit(3, lr=1e-2)
    assert steps.steps == 5 + 5 and sorted(snaps.at) == [0]  # epoch 1 trained in full and never ended
    assert same(state(learn), snaps.at[0]) and not learn.opt.state
    assert non_finite_tensors(learn.model) == []
    assert len(learn.recorder.losses) == 10 and math.isnan(learn.recorder.losses[7])


def test_a_deferred_bad_loss_with_finite_weights_still_puts_back_the_last_good_epoch():
    """An infinite loss on the epoch's last batch only, `loss + inf`, whose gradient is the finite one of `loss`:
    the weights stay finite, but the guard cannot tell what the step did from them, so it puts back the start of
    the fit all the same."""
    class InfLoss(Callback):
        def after_loss(self):
            if self.learn.training and self.learn.iter == 4:
                self.learn.loss = self.learn.loss + float("inf")
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=InfLoss())
    before = state(learn)
    with pytest.raises(FloatingPointError, match=r"the training loss is inf at epoch 0, batch 4 of 'fit 1' .*The "
                                                 r"weights are all finite; the learner was put back to its weights "
                                                 r"from the start of this fit"):
        learn.fit(1, lr=1e-2)
    assert same(state(learn), before)  # BatchNorm's running statistics too: the whole state dict was put back


def test_check_every_none_is_the_default_and_n_reads_every_nth_step():
    assert DivergenceGuard().check_every is None
    assert DivergenceGuard(check_every=3).check_every == 3
