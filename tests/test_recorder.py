"""The Recorder (history of every fit, smoothing, reduction hook) and the progress table."""
import pytest
import torch

from fastfreeze import Callback, DataLoaders, Learner, accuracy
from fastfreeze.core.checkpoint import CheckpointCallback
from fastfreeze.core.recorder import DebiasedEMA
from helpers import KillAfterEpoch, blobs, make, mlp2


def fresh_dls():
    """The data of the `dls_5_batches` fixture, with its shuffling at the start: runs compared with each other
    each get their own."""
    return DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0)


def test_progress_table_printed(dls_5_batches, capsys):
    learn = Learner(mlp2(), dls_5_batches, metrics=accuracy)
    learn.fit(2)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "train_loss" in line)
    assert header.split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert header.startswith("epoch") and "\u2588" not in out and "\r" not in out  # no bar glyph in a log
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1"]
    assert float(rows[1][1]) == pytest.approx(learn.recorder.values[1]["train_loss"], abs=1e-6)
    assert len(rows[1][1].split(".")[1]) == 6 and ":" in rows[1][-1]
    with learn.no_bar():
        learn.fit(1)
    assert "train_loss" not in capsys.readouterr().out


def test_plots(tmp_path, dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    learn.fine_tune(1, base_lr=2e-3)
    learn.recorder.plot_loss(path=tmp_path / "loss.png")
    learn.recorder.plot_sched(path=tmp_path / "sched.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "sched.png").stat().st_size > 1000


def test_recorder_keeps_both_phases(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    learn.fine_tune(2, base_lr=2e-3)
    r = learn.recorder
    assert r.phases == ["frozen"] * 5 + ["unfrozen"] * 10
    assert [row["phase"] for row in r.values] == ["frozen", "unfrozen", "unfrozen"]
    assert len(r.lrs) == 15 and len(r.lrs[0]) == 2 and len(r.moms[0]) == 2
    assert len(r.losses) == len(r.smooth_losses) == 15
    # the smoothed loss is the debiased EMA (beta 0.98) of the raw losses, restarted at each fit
    for start, end in [(0, 5), (5, 15)]:
        avg = 0.0
        for count, loss in enumerate(r.losses[start:end], 1):
            avg = 0.98 * avg + 0.02 * loss
            assert r.smooth_losses[start + count - 1] == pytest.approx(avg / (1 - 0.98 ** count), rel=1e-5)
    assert r.values[-1]["train_loss"] == pytest.approx(r.smooth_losses[-1])


def test_debiased_ema_by_hand():
    # beta 0.5 on 1, 2, 3: averages 0.5, 1.25, 2.125; divided by 1 - 0.5**t: 1, 5/3, 17/7
    ema = DebiasedEMA(0.5)
    assert [ema.update(v) for v in (1.0, 2.0, 3.0)] == pytest.approx([1.0, 5 / 3, 17 / 7], rel=1e-12)
    on_tensors = DebiasedEMA(0.5)
    assert [float(on_tensors.update(torch.tensor(v))) for v in (1.0, 2.0, 3.0)] == pytest.approx([1.0, 5 / 3, 17 / 7])


def test_a_resumed_fit_goes_on_with_the_smoothed_loss_of_an_uninterrupted_one(tmp_path):
    whole = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path / "a")
    whole.fit_one_cycle(3, 1e-2)
    killed = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 1e-2, cbs=[CheckpointCallback(), KillAfterEpoch()])
    resumed = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path / "b")
    resumed.fit_one_cycle(3, 1e-2, resume_from="checkpoint")
    assert resumed.recorder.losses == whole.recorder.losses
    assert resumed.recorder.smooth_losses == whole.recorder.smooth_losses  # not restarted at the resume
    assert [r["train_loss"] for r in resumed.recorder.values] == [r["train_loss"] for r in whole.recorder.values]


def idle_second_rank(values):
    """`sum_across_ranks` as if a second process had added zero losses and as many items. The Recorder sends
    `[losses..., smoothed losses..., 1]` after training (odd length: the 1 counts the ranks) and
    `[loss total, items, metric total, items, ...]` after validation (pairs)."""
    if len(values) % 2:  # after training: zeros added, one more rank counted
        return list(values[:-1]) + [values[-1] + 1.0]
    return [v if i % 2 == 0 else 2 * v for i, v in enumerate(values)]  # totals as they are, items doubled


def test_the_rank_reduction_hook_receives_the_sums_and_the_recorder_divides():
    """Through the hook, every training loss and the validation loss and metric come out halved, as an
    all-reduce over two ranks of which one contributed nothing would give them."""
    alone = Learner(mlp2(), fresh_dls(), progress=False, metrics=accuracy)
    alone.fit(1, lr=1e-2)
    reduced = Learner(mlp2(), fresh_dls(), progress=False, metrics=accuracy)
    reduced.recorder.sum_across_ranks = idle_second_rank
    reduced.fit(1, lr=1e-2)
    assert reduced.recorder.losses == pytest.approx([v / 2 for v in alone.recorder.losses], rel=1e-6)
    assert reduced.recorder.smooth_losses == pytest.approx([v / 2 for v in alone.recorder.smooth_losses], rel=1e-6)
    row, row_alone = reduced.recorder.values[-1], alone.recorder.values[-1]
    assert row["valid_loss"] == pytest.approx(row_alone["valid_loss"] / 2, rel=1e-9)
    assert row["accuracy"] == pytest.approx(row_alone["accuracy"] / 2, rel=1e-9)
    assert row_alone["accuracy"] > 0


@pytest.mark.parametrize("event,order,steps_taken", [("after_backward", 0, 2), ("after_step", 100, 3),
                                                    ("after_batch", 0, 3)])
def test_an_interrupted_batch_is_recorded_exactly_when_its_step_reached_the_weights(event, order, steps_taken):
    """Ctrl-C in a callback at batch 2: interrupted in after_backward, the batch's step never ran; in after_step
    (after the Recorder's) or after_batch (even before the Recorder's), it did. The history holds exactly the
    steps whose updates are in the weights."""
    weights_after_step = []

    class Snap(Callback):
        order = 99

        def after_step(self):
            weights_after_step.append([p.detach().clone() for p in self.learn.model.parameters()])

    class Interrupt(Callback):
        def at(self, name):
            if name == event and self.learn.training and self.learn.iter == 2:
                raise KeyboardInterrupt

        def after_backward(self):
            self.at("after_backward")

        def after_step(self):
            self.at("after_step")

        def after_batch(self):
            self.at("after_batch")
    interrupter = Interrupt()
    interrupter.order = order
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=[Snap(), interrupter])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, lr=1e-2)
    assert len(weights_after_step) == steps_taken
    assert len(learn.recorder.losses) == len(learn.recorder.lrs) == steps_taken
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), weights_after_step[-1]))


def test_under_accumulation_the_losses_of_a_step_are_recorded_with_it():
    """5 batches, 2 per step: interrupted in after_batch of batch 2 (the first batch of the second step), the
    history holds the losses of batches 0 and 1, whose step is in the weights, and not batch 2's, whose
    gradient never reached them; each loss as the batch computed it (not divided by accum_steps)."""
    seen = []

    class Losses(Callback):
        def after_loss(self):
            if self.learn.training:
                seen.append(float(self.learn.loss.detach()))

        def after_batch(self):
            if self.learn.training and self.learn.iter == 2:
                raise KeyboardInterrupt
    learn = Learner(mlp2(), fresh_dls(), progress=False, cbs=Losses())
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, lr=1e-2, accum_steps=2)
    assert len(seen) == 3 and learn.step_iter == 1
    assert learn.recorder.losses == pytest.approx(seen[:2], rel=1e-7)
    assert len(learn.recorder.lrs) == len(learn.recorder.phases) == 2


def test_the_last_lr_sweep_is_kept_by_a_checkpoint(tmp_path):
    """A resumed command-line run still draws lr_find.png: the sweep 'auto' made before the first checkpoint."""
    learn = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path)
    learn.lr_find(num_it=10)
    sweep = learn.recorder.lr_find_results
    learn.fit(1, lr=1e-2, cbs=CheckpointCallback())
    resumed = Learner(mlp2(), fresh_dls(), progress=False, path=tmp_path)
    resumed.fit(1, lr=1e-2, resume_from="checkpoint")
    assert resumed.recorder.lr_find_results == sweep and len(sweep["lrs"]) == 10
