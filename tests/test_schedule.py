"""Learning rate and momentum of every group at every step, against docs/schedules.md, worked out here."""
import numpy as np

from fastfreeze import Learner
from conftest import RecordParams, mlp2, mlp3, one_cycle_oracle


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
