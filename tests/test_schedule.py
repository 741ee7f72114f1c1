"""Learning rate and momentum of every group at every step, against docs/schedules.md, worked out here."""
import numpy as np
import pytest
import torch

from fastfreeze import Callback, Learner
from fastfreeze.finetune.schedule import ParamScheduler, one_cycle_scheduler
from helpers import RecordParams, make, mlp2, mlp3, one_cycle_oracle


def test_fit_one_cycle_single_lr_matches_spec_check_values(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fit_one_cycle(2, 1e-3, cbs=rec)
    lrs = np.array(rec.lrs)
    assert lrs.shape == (10, 2)
    # the check table of docs/schedules.md (4 significant digits)
    spec = [4e-5, 3.717e-4, 9.083e-4, 9.891e-4, 9.045e-4, 7.5e-4, 5.523e-4, 3.455e-4, 1.654e-4, 4.324e-5]
    np.testing.assert_allclose(lrs[:, 1], spec, rtol=1e-3)
    exp_lr, exp_mom = one_cycle_oracle(10, 1e-3)
    for g in range(2):  # a float lr is the same in every group
        np.testing.assert_allclose(lrs[:, g], exp_lr, rtol=1e-5)
        np.testing.assert_allclose(np.array(rec.moms)[:, g], exp_mom, rtol=1e-5)


def test_fit_one_cycle_slice_three_groups(dls_5_batches):
    learn = make(mlp3(), dls_5_batches)
    assert learn.n_groups == 3
    rec = RecordParams()
    learn.fit_one_cycle(3, slice(1e-5, 1e-3), cbs=rec)
    lrs = np.array(rec.lrs)
    assert lrs.shape == (15, 3)
    for g, peak in enumerate([1e-5, 1e-4, 1e-3]):  # geometric spread, docs/learning-rates.md
        exp_lr, exp_mom = one_cycle_oracle(15, peak)
        np.testing.assert_allclose(lrs[:, g], exp_lr, rtol=1e-5)
        np.testing.assert_allclose(np.array(rec.moms)[:, g], exp_mom, rtol=1e-5)


def test_fit_one_cycle_defaults_to_the_learners_lr_and_passes_div_final_on(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, lr=3e-3, progress=False)
    rec = RecordParams()
    learn.fit_one_cycle(2, cbs=rec)
    np.testing.assert_allclose(np.array(rec.lrs)[:, 1], one_cycle_oracle(10, 3e-3)[0], rtol=1e-5)
    rec = RecordParams()
    learn.fit_one_cycle(2, 1e-2, div_final=100.0, cbs=rec)
    np.testing.assert_allclose(np.array(rec.lrs)[:, 1], one_cycle_oracle(10, 1e-2, div_final=100.0)[0], rtol=1e-5)


class KeepScheduler(Callback):
    def before_fit(self):
        self.scheduler = next(cb for cb in self.learn.cbs if isinstance(cb, ParamScheduler))


def test_one_cycle_ends_at_lr_over_1e5_and_starts_at_lr_over_25_by_default(dls_5_batches):
    """The ends of the cycle (position 0 and 1, docs/schedules.md), which a fit's steps never reach exactly."""
    keep = KeepScheduler()
    Learner(mlp2(), dls_5_batches, progress=False).fit_one_cycle(1, 1e-2, cbs=keep)
    direct = one_cycle_scheduler([1e-2])
    for scheduler in (keep.scheduler, direct):
        lr_sched, mom_sched = scheduler.lr_scheds[0], scheduler.mom_sched
        # abs=0: pytest's default absolute tolerance (1e-12) would accept 1e-2 / 100001 for 1e-2 / 1e5 = 1e-7
        assert (lr_sched(0.0), lr_sched(0.25), lr_sched(1.0)) == pytest.approx((1e-2 / 25, 1e-2, 1e-2 / 1e5), rel=1e-9,
                                                                               abs=0)
        assert (mom_sched(0.0), mom_sched(0.25), mom_sched(1.0)) == pytest.approx((0.95, 0.85, 0.95), rel=1e-12)


def test_one_cycle_without_momentum_and_the_pct_start_range(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    rec = RecordParams()
    learn.fit_one_cycle(1, 1e-2, moms=None, cbs=rec)
    assert np.array(rec.moms).tolist() == [[0.9, 0.9]] * 5  # AdamW's own beta1, untouched
    rec = RecordParams()
    learn.fit_one_cycle(2, 1e-2, pct_start=1.0, cbs=rec)  # warm-up only
    np.testing.assert_allclose(np.array(rec.lrs)[:, 1], one_cycle_oracle(10, 1e-2, pct_start=1.0)[0], rtol=1e-5)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"pct_start must be in \(0, 1\], got {bad}"):
            learn.fit_one_cycle(1, 1e-2, pct_start=bad)
    with pytest.raises(TypeError, match="an lr spec is a number, a slice, .* got 'fast'"):
        learn.fit_one_cycle(1, "fast")  # only 'auto' picks an lr


def test_fit_one_cycle_auto_peaks_at_the_chosen_base_lr(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    rec = RecordParams()
    learn.fit_one_cycle(2, "auto", cbs=rec)
    base_lr = learn.auto_lr["base_lr"]
    np.testing.assert_allclose(np.array(rec.lrs)[:, 1], one_cycle_oracle(10, base_lr)[0], rtol=1e-5)


def test_one_cycle_under_accumulation_counts_optimizer_steps(dls_5_batches):
    """5 batches per epoch, 2 per step: steps take batches (1, 2), (3, 4), (5): 3 steps per epoch, 6 in all;
    each batch runs at its step's lr and momentum, the one-cycle over 6 steps."""
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fit_one_cycle(2, 1e-3, cbs=rec, accum_steps=2)
    exp_lr, exp_mom = one_cycle_oracle(6, 1e-3)
    step_of_batch = [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]
    np.testing.assert_allclose(np.array(rec.lrs)[:, 1], exp_lr[step_of_batch], rtol=1e-6)
    np.testing.assert_allclose(np.array(rec.moms)[:, 1], exp_mom[step_of_batch], rtol=1e-6)
    assert learn.steps_per_epoch() == 3 and learn.step_iter == 6 and learn.train_iter == 10


def test_the_step_that_falls_on_pct_start_runs_at_exactly_the_peak_lr(dls_5_batches):
    """docs/schedules.md: a step at pos == pct_start is the annealing's q = 0, the peak itself. fit_one_cycle(2, 1e-2,
    div=10, pct_start=0.3) over 10 steps: step 3 (pos 3/10 = 0.3) runs at 1e-2 bit for bit (the warm-up's end,
    1e-3 + (1e-2 - 1e-3), would round to 0.010000000000000002) and at the middle momentum 0.85."""
    rec = RecordParams()
    make(mlp2(), dls_5_batches).fit_one_cycle(2, 1e-2, div=10.0, pct_start=0.3, cbs=rec)
    assert rec.lrs[3] == [1e-2, 1e-2] and rec.moms[3] == [0.85, 0.85]
    assert [row == [1e-2, 1e-2] for row in rec.lrs].count(True) == 1  # the only step at the peak


def test_one_cycle_at_the_edges_of_its_arguments(dls_5_batches):
    """div = div_final = 1 keeps every step at the peak lr; moms (0, 0, 0) gives Adam's beta1 0 at every step."""
    rec = RecordParams()
    make(mlp2(), dls_5_batches).fit_one_cycle(1, 1e-2, div=1.0, div_final=1.0, moms=(0.0, 0.0, 0.0), cbs=rec)
    np.testing.assert_allclose(rec.lrs, [[1e-2, 1e-2]] * 5, rtol=1e-15)
    assert rec.moms == [[0.0, 0.0]] * 5


class StepNorms(Callback):
    """The global gradient norm each optimizer step gets (after GradientClip, order 0), computed here."""
    order = 1

    def __init__(self):
        self.norms = []

    def before_step(self):
        grads = [p.grad.reshape(-1) for p in self.learn.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat(grads).double())))


def test_fit_one_cycle_clips_the_gradients_to_clip_grad(dls_5_batches):
    unclipped, clipped = StepNorms(), StepNorms()
    make(mlp2(), dls_5_batches).fit_one_cycle(1, 1e-3, cbs=unclipped)
    assert min(unclipped.norms) > 1e-2  # every step needs clipping at 1e-2...
    make(mlp2(), dls_5_batches).fit_one_cycle(1, 1e-3, clip_grad=1e-2, cbs=clipped)
    assert clipped.norms == pytest.approx([1e-2] * 5, rel=1e-5)  # ...and gets exactly max_norm


def test_fit_one_cycle_auto_chooses_the_lr_for_the_batch_of_an_accumulated_step(dls_5_batches):
    """accum_steps=2 on batches of 8: each step sees 16 items, the batch size the auto lr is scaled to; the sweep
    runs on the loader's batches of 8."""
    learn = make(mlp2(), dls_5_batches)
    learn.fit_one_cycle(1, "auto", accum_steps=2)
    assert learn.auto_lr["train_bs"] == 16 and learn.auto_lr["sweep_bs"] == 8
