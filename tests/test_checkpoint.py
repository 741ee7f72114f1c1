"""Checkpoints and resume, best-model saving, early stopping, NaN stops, and interrupts that lose nothing."""
import math

import pytest
import torch

from fastfreeze import Callback
from fastfreeze.callbacks.tracker import EarlyStopping, SaveModelCallback
from fastfreeze.core.checkpoint import CheckpointCallback, read_checkpoint
from fastfreeze.core.divergence import TerminateOnNaN
from fastfreeze.core.progress import ProgressCallback
from helpers import KillAfterEpoch, make_learner


def params(learn):
    return [p.detach().clone() for p in learn.model.state_dict().values()]


def assert_same_weights(a, b):
    """Bit for bit: on the CPU a resumed run does the very same operations on the very same numbers."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# -- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("killed_after", [0, 1])
def test_fit_one_cycle_resumed_after_a_kill_ends_like_the_uninterrupted_run(tmp_path, killed_after):
    full = make_learner(tmp_path / "full")
    full.fit_one_cycle(3, 1e-2)
    expected = params(full)

    killed = make_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(), KillAfterEpoch(killed_after)])

    # a new process: new learner, other initial weights, other global RNG, fresh DataLoader generators
    resumed = make_learner(tmp_path / "run", seed=123)
    resumed.fit_one_cycle(3, 1e-2, resume_from="checkpoint")
    assert_same_weights(params(resumed), expected)
    # the history reads as one run: every step's lr, and one row per epoch
    assert resumed.recorder.lrs == full.recorder.lrs
    assert [r["epoch"] for r in resumed.recorder.values] == [0, 1, 2]
    assert resumed.recorder.values[-1]["valid_loss"] == full.recorder.values[-1]["valid_loss"]


def test_restoring_weights_and_optimizer_alone_would_not_be_enough(tmp_path):
    """The control for the test above: loading the checkpoint's model and optimizer without the random
    states (dropout masks, shuffling order) gives different weights, so the resume test can fail."""
    full = make_learner(tmp_path / "full")
    full.fit_one_cycle(3, 1e-2)
    killed = make_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(), KillAfterEpoch(0)])
    naive = make_learner(tmp_path / "run", seed=123)
    naive.load("checkpoint")
    from fastfreeze.finetune.schedule import one_cycle_scheduler
    naive.fit(3, cbs=one_cycle_scheduler([1e-2, 1e-2]), start_epoch=1)
    diff = max((a - b).abs().max().item() for a, b in zip(params(naive), params(full)))
    assert diff > 1e-4


@pytest.fixture(scope="module")
def full_fine_tune(tmp_path_factory):
    """The uninterrupted fine_tune(2) with base_lr='auto': (weights, chosen base_lr, Recorder)."""
    full = make_learner(tmp_path_factory.mktemp("full"))
    full.fine_tune(2, base_lr="auto", freeze_epochs=1)
    return params(full), full.auto_lr["base_lr"], full.recorder


@pytest.mark.parametrize("kill_phase,kill_epoch", [("frozen", 0), ("unfrozen", 0)])
def test_fine_tune_resumed_across_the_phase_boundary(tmp_path, monkeypatch, full_fine_tune, kill_phase, kill_epoch):
    expected, auto_lr, full_recorder = full_fine_tune

    killed = make_learner(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fine_tune(2, base_lr="auto", freeze_epochs=1, cbs=[CheckpointCallback(), KillAfterEpoch(kill_epoch, kill_phase)])
    assert killed.fine_tune_state is None  # cleared by the interrupt
    state = read_checkpoint(tmp_path / "run" / "models" / "checkpoint.pth")
    assert state["loop"]["fine_tune_state"]["base_lr"] == auto_lr and state["loop"]["phase"] == kill_phase

    import fastfreeze.finetune.finetune
    def no_second_choice(learn, *args, **kwargs):
        raise AssertionError("the resumed fine_tune chose base_lr again")
    monkeypatch.setattr(fastfreeze.finetune.finetune, "choose_base_lr", no_second_choice)
    resumed = make_learner(tmp_path / "run", seed=7)
    resumed.fine_tune(2, base_lr="auto", freeze_epochs=1, resume_from="checkpoint")
    assert_same_weights(params(resumed), expected)
    assert resumed.frozen_groups == 0
    assert resumed.recorder.phases == full_recorder.phases == ["frozen"] * 5 + ["unfrozen"] * 10
    assert resumed.recorder.lrs == full_recorder.lrs
    # the smoothed loss restarts with each phase, also when the resume lands on a phase boundary
    assert resumed.recorder.smooth_losses == full_recorder.smooth_losses


def test_resume_with_other_arguments_is_a_clear_error(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit_one_cycle(2, 1e-2, cbs=CheckpointCallback())
    with pytest.raises(ValueError, match="fit of 2 epochs"):
        make_learner(tmp_path).fit_one_cycle(3, 1e-2, resume_from="checkpoint")
    with pytest.raises(ValueError, match="not written during fine_tune"):
        make_learner(tmp_path).fine_tune(1, base_lr=1e-3, resume_from="checkpoint")
    learn.fine_tune(1, base_lr=1e-3, cbs=CheckpointCallback())
    with pytest.raises(ValueError, match="base_lr=0.001, not 0.002"):
        make_learner(tmp_path).fine_tune(1, base_lr=2e-3, resume_from="checkpoint")
    with pytest.raises(KeyboardInterrupt):  # a checkpoint of the frozen phase...
        learn.fine_tune(1, base_lr=1e-3, cbs=[CheckpointCallback(), KillAfterEpoch(0, "frozen")])
    with pytest.raises(ValueError, match="1 frozen layer groups, but this fine_tune phase freezes 0"):
        make_learner(tmp_path).fine_tune(1, base_lr=1e-3, strategy="no_freeze", resume_from="checkpoint")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_learner(tmp_path).fit(1, resume_from="missing")
    learn.save("weights_only")
    with pytest.raises(ValueError, match="not a fastfreeze checkpoint"):
        make_learner(tmp_path).fit(1, resume_from="weights_only")


def test_checkpoint_loads_without_pickle_and_with_learn_load(tmp_path):
    learn = make_learner(tmp_path)
    learn.freeze()
    learn.fit(1, lr=1e-2, cbs=CheckpointCallback("ck"))
    file = tmp_path / "models" / "ck.pth"
    state = torch.load(file, weights_only=True)  # tensors and plain types only
    assert state["loop"]["start_epoch"] == 1 and state["loop"]["frozen_groups"] == 1
    assert state["loop"]["train_iter"] == 5 and state["n_batches"] == 5
    assert not list((tmp_path / "models").glob("*.tmp"))
    other = make_learner(tmp_path, seed=3)
    other.load("ck")
    assert_same_weights(params(other), params(learn))


# -- best model, early stopping, NaN ---------------------------------------------------------------

class FakeValidLoss(Callback):
    """Replaces the epoch's valid_loss with given numbers (after the Recorder, before the trackers)."""
    order = 55

    def __init__(self, values):
        self.values = list(values)

    def after_epoch(self):
        self.learn.recorder.values[-1]["valid_loss"] = self.values[self.learn.epoch]


def test_save_model_keeps_the_best_epoch_and_loads_it_at_the_end(tmp_path):
    learn = make_learner(tmp_path)
    snapshots = {}

    class Snapshot(Callback):
        order = 100

        def after_epoch(self):
            snapshots[self.learn.epoch] = params(self.learn)
    save = SaveModelCallback(fname="best")
    learn.fit(4, lr=1e-2, cbs=[FakeValidLoss([0.9, 0.5, 0.7, 0.6]), save, Snapshot()])
    assert save.best == 0.5 and save.best_epoch == 1
    assert_same_weights(params(learn), snapshots[1])  # loaded back at the end
    assert (tmp_path / "models" / "best.pth").exists()


def test_save_model_min_delta_and_higher_is_better_metrics(tmp_path):
    learn = make_learner(tmp_path)
    save = SaveModelCallback(min_delta=0.1, load_best=False)
    learn.fit(3, lr=1e-2, cbs=[FakeValidLoss([1.0, 0.95, 0.85]), save])
    assert save.best_epoch == 2 and save.best == 0.85  # 0.95 is not 0.1 better than 1.0; 0.85 is
    acc = SaveModelCallback(monitor="accuracy")
    assert not acc.lower_is_better and SaveModelCallback(monitor="error_rate").lower_is_better
    with pytest.raises(ValueError, match=r"monitors 'accuracy'.*train_loss, valid_loss"):
        learn.fit(1, cbs=acc)


def test_save_model_every_epoch(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(2, lr=1e-2, cbs=SaveModelCallback(every_epoch=True))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_0.pth", "model_1.pth"]


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    learn = make_learner(tmp_path)
    stop = EarlyStopping(patience=2)
    learn.fit(10, lr=1e-2, cbs=[FakeValidLoss([1.0, 0.8, 0.85, 0.9, 0.1] + [0.0] * 5), stop])
    # best at epoch 1; epochs 2 and 3 do not improve: stop after epoch 3
    assert stop.stopped_epoch == 3 and [r["epoch"] for r in learn.recorder.values] == [0, 1, 2, 3]


def test_terminate_on_nan_stops_before_the_bad_step(tmp_path):
    learn = make_learner(tmp_path)

    class PoisonBatch(Callback):
        def after_pred(self):
            if self.learn.training and self.learn.train_iter == 7:
                self.learn.pred = self.learn.pred * float("inf")
    seen = []

    class Snap(Callback):
        order = 100

        def after_step(self):
            seen.append([p.detach().clone() for p in self.learn.model.parameters()])
    stop = TerminateOnNaN()
    with pytest.warns(UserWarning, match="epoch 1, batch 2"):
        learn.fit(3, lr=1e-2, cbs=[PoisonBatch(), stop, Snap()])
    assert stop.stopped_at == (1, 2) and len(seen) == 7  # steps 0..6 done, step 7 refused
    assert_same_weights(list(learn.model.parameters()), seen[-1])  # (BatchNorm statistics saw the batch's forward)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


# -- interrupts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupt_mid_epoch_leaves_the_learner_usable(tmp_path, error):
    learn = make_learner(tmp_path)
    bar = ProgressCallback(batch_bars=True)
    learn.add_cbs(bar)
    learn.freeze()
    frozen = [p.requires_grad for p in learn.model.parameters()]

    class Boom(Callback):
        order = 100

        def after_batch(self):
            if self.learn.training and self.learn.epoch == 1 and self.learn.iter == 2:
                raise error("stop")
    boom = Boom()
    with pytest.raises(error):
        learn.fit(3, lr=1e-2, cbs=boom)
    assert bar.mbar is None  # the progress bars were closed
    assert boom not in learn.cbs and not learn.model.training
    assert [p.requires_grad for p in learn.model.parameters()] == frozen
    assert len(learn.recorder.losses) == 5 + 3 and [r["epoch"] for r in learn.recorder.values] == [0]
    learn.fit(1, lr=1e-2)  # and it trains again
    assert len(learn.recorder.losses) == 8 + 5 and math.isfinite(learn.recorder.values[-1]["valid_loss"])


def test_interrupt_inside_lr_find_restores_everything(tmp_path):
    learn = make_learner(tmp_path)
    learn.freeze()
    before = params(learn)
    grads = [p.requires_grad for p in learn.model.parameters()]

    class Boom(Callback):
        def after_batch(self):
            if self.learn.phase == "lr_find" and self.learn.iter == 3:
                raise KeyboardInterrupt
    learn.add_cbs(Boom())
    with pytest.raises(KeyboardInterrupt):
        learn.lr_find(num_it=20)
    assert_same_weights(params(learn), before)
    assert [p.requires_grad for p in learn.model.parameters()] == grads and learn.frozen_groups == 1


def test_save_is_atomic_when_interrupted_while_writing(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    good = learn.save("model")
    before = good.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt  # killed after writing the temporary file, before the rename
    monkeypatch.setattr(torch, "save", dies_halfway)
    learn.fit(1, lr=1e-2)
    with pytest.raises(KeyboardInterrupt):
        learn.save("model")
    with pytest.raises(KeyboardInterrupt):
        learn.save_checkpoint("model")
    assert good.read_bytes() == before  # the old file is intact
