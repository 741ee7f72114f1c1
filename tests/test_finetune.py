"""fine_tune: the default recipe (fastai's) step by step against docs/schedules.md, worked out here; phases,
freeze_epochs=0, keyword arguments reaching every phase."""
import numpy as np
import pytest

from fastfreeze import Callback
from helpers import RecordParams, make, mlp2, one_cycle_oracle


def test_fine_tune_two_groups_matches_spec(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fine_tune(2, base_lr=2e-3, cbs=rec)
    lrs, moms = np.array(rec.lrs), np.array(rec.moms)
    assert lrs.shape == (15, 2)  # 1 frozen epoch + 2 unfrozen epochs, 5 batches each
    frozen_head = [8e-5, 2.6694e-4, 7.5496e-4, 1.35399e-3, 1.83073e-3]
    np.testing.assert_allclose(lrs[:5, 1], frozen_head, rtol=1e-4)
    np.testing.assert_allclose(lrs[:5, 0], np.array(frozen_head) / 10, rtol=1e-4)
    unfrozen_head = [2e-4, 4e-4, 8e-4, 1e-3, 9.5048e-4, 8.1175e-4, 6.1126e-4, 3.8875e-4, 1.8826e-4, 4.9525e-5]
    np.testing.assert_allclose(lrs[5:, 1], unfrozen_head, rtol=1e-4)
    np.testing.assert_allclose(lrs[5:, 0], np.array(unfrozen_head) / 100, rtol=1e-4)
    unfrozen_mom = [0.95, 0.925, 0.875, 0.85, 0.85495, 0.86883, 0.88887, 0.91113, 0.93117, 0.94505]
    np.testing.assert_allclose(moms[5:, 0], unfrozen_mom, rtol=1e-4)
    # and exactly the formulas of §5-6 (rtol 1e-5)
    f_lr, f_mom = one_cycle_oracle(5, 2e-3, pct_start=0.99)
    np.testing.assert_allclose(lrs[:5, 1], f_lr, rtol=1e-5)
    np.testing.assert_allclose(lrs[:5, 0], f_lr / 10, rtol=1e-5)
    np.testing.assert_allclose(moms[:5, 1], f_mom, rtol=1e-5)
    u_lr, u_mom = one_cycle_oracle(10, 1e-3, div=5.0, pct_start=0.3)
    np.testing.assert_allclose(lrs[5:, 1], u_lr, rtol=1e-5)
    np.testing.assert_allclose(lrs[5:, 0], u_lr / 100, rtol=1e-5)
    np.testing.assert_allclose(moms[5:, 1], u_mom, rtol=1e-5)


def test_fine_tune_freeze_epochs_zero_skips_frozen_phase(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fine_tune(1, base_lr=2e-3, freeze_epochs=0, cbs=rec)
    assert len(rec.lrs) == 5
    assert set(learn.recorder.phases) == {"unfrozen"}


def test_wd_and_moms_kwargs_reach_both_phases(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fine_tune(1, base_lr=2e-3, wd=0.1, moms=(0.9, 0.8, 0.9), cbs=rec)
    assert all(g["wd"] == 0.1 for g in learn.opt.param_groups)
    assert rec.moms[0][0] == pytest.approx(0.9) and rec.moms[5][0] == pytest.approx(0.9)


def test_accum_steps_reaches_both_phases(dls_5_batches):
    """With 2 batches per step each 5-batch epoch has 3 steps; the frozen phase's one-cycle (pct_start 0.99)
    and the unfrozen one's run over optimizer steps, each batch at its step's lr."""
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    steps = []
    learn.fine_tune(1, base_lr=2e-3, accum_steps=2, cbs=[rec, StepCounter(steps)])
    assert steps == [3, 3] and len(learn.recorder.losses) == 10
    step_of_batch = [0, 0, 1, 1, 2]
    f_lr, _ = one_cycle_oracle(3, 2e-3, pct_start=0.99)
    u_lr, _ = one_cycle_oracle(3, 1e-3, div=5.0, pct_start=0.3)
    np.testing.assert_allclose(np.array(rec.lrs)[:5, 1], f_lr[step_of_batch], rtol=1e-5)
    np.testing.assert_allclose(np.array(rec.lrs)[5:, 1], u_lr[step_of_batch], rtol=1e-5)


class StepCounter(Callback):
    """The optimizer steps of each fit."""

    def __init__(self, counts):
        self.counts = counts

    def before_fit(self):
        self.counts.append(0)

    def after_step(self):
        self.counts[-1] += 1
