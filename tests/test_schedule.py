"""Learning rate and momentum of every group at every step, against docs/schedules.md, worked out here."""
import math

import numpy as np
import pytest

from fastfreeze import Callback, Learner
from conftest import mlp2, mlp3


class RecordParams(Callback):
    """A user callback reading the optimizer's param groups after each training step."""

    def __init__(self):
        self.lrs, self.moms = [], []

    def after_batch(self):
        if self.learn.training:
            self.lrs.append([g["lr"] for g in self.learn.opt.param_groups])
            self.moms.append([g["betas"][0] for g in self.learn.opt.param_groups])


def spec_one_cycle(n_steps, lr, div=25.0, div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)):
    """docs/schedules.md (one-cycle), written out independently of fastfreeze."""
    lrs, ms = [], []
    for t in range(n_steps):
        pos = t / n_steps
        if pos < pct_start:
            q = pos / pct_start
            s_lr, e_lr, s_m, e_m = lr / div, lr, moms[0], moms[1]
        else:
            q = (pos - pct_start) / (1 - pct_start)
            s_lr, e_lr, s_m, e_m = lr, lr / div_final, moms[1], moms[2]
        lrs.append(s_lr + (1 + math.cos(math.pi * (1 - q))) * (e_lr - s_lr) / 2)
        ms.append(s_m + (1 + math.cos(math.pi * (1 - q))) * (e_m - s_m) / 2)
    return np.array(lrs), np.array(ms)


def make(model, dls):
    return Learner(model, dls, progress=False)


def test_fit_one_cycle_single_lr_matches_spec_check_values(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fit_one_cycle(2, 1e-3, cbs=rec)
    lrs = np.array(rec.lrs)
    assert lrs.shape == (10, 2)
    # the check table of docs/schedules.md (4 significant digits)
    spec = [4e-5, 3.717e-4, 9.083e-4, 9.891e-4, 9.045e-4, 7.5e-4, 5.523e-4, 3.455e-4, 1.654e-4, 4.324e-5]
    np.testing.assert_allclose(lrs[:, 1], spec, rtol=1e-3)
    exp_lr, exp_mom = spec_one_cycle(10, 1e-3)
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
        exp_lr, exp_mom = spec_one_cycle(15, peak)
        np.testing.assert_allclose(lrs[:, g], exp_lr, rtol=1e-5)
        np.testing.assert_allclose(np.array(rec.moms)[:, g], exp_mom, rtol=1e-5)


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
    f_lr, f_mom = spec_one_cycle(5, 2e-3, pct_start=0.99)
    np.testing.assert_allclose(lrs[:5, 1], f_lr, rtol=1e-5)
    np.testing.assert_allclose(lrs[:5, 0], f_lr / 10, rtol=1e-5)
    np.testing.assert_allclose(moms[:5, 1], f_mom, rtol=1e-5)
    u_lr, u_mom = spec_one_cycle(10, 1e-3, div=5.0, pct_start=0.3)
    np.testing.assert_allclose(lrs[5:, 1], u_lr, rtol=1e-5)
    np.testing.assert_allclose(lrs[5:, 0], u_lr / 100, rtol=1e-5)
    np.testing.assert_allclose(moms[5:, 1], u_mom, rtol=1e-5)


def test_fine_tune_freeze_epochs_zero_skips_frozen_phase(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fine_tune(1, base_lr=2e-3, freeze_epochs=0, cbs=rec)
    assert len(rec.lrs) == 5
    assert set(learn.recorder.phases) == {"unfrozen"}


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


def test_wd_and_moms_kwargs_reach_both_phases(dls_5_batches):
    learn = make(mlp2(), dls_5_batches)
    rec = RecordParams()
    learn.fine_tune(1, base_lr=2e-3, wd=0.1, moms=(0.9, 0.8, 0.9), cbs=rec)
    assert all(g["wd"] == 0.1 for g in learn.opt.param_groups)
    assert rec.moms[0][0] == pytest.approx(0.9) and rec.moms[5][0] == pytest.approx(0.9)
