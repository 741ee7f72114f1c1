"""base_lr='auto': deterministic, leaves the learner untouched, and beats a hopeless fixed lr."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastfreeze import DataLoaders, Learner, accuracy
from fastfreeze.finetune.auto_lr import MAX_AUTO_LR, MIN_AUTO_LR, choose_base_lr, finite_median, pick_base_lr
from fastfreeze.models.body import TransferModel
from helpers import blobs


def transfer_learner(seed=0, n=240):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    head = nn.Sequential(nn.BatchNorm1d(32), nn.Linear(32, 3))
    x, y = blobs(n, spread=1.0)
    xv, yv = blobs(150, seed=1, spread=1.0)
    dls = DataLoaders.from_tensors(x, y, xv, yv, bs=16, seed=0)
    return Learner(TransferModel(body, head), dls, splitter=lambda m: [m.body, m.head], metrics=accuracy,
                   progress=False)


def test_pick_base_lr_rule():
    assert pick_base_lr(1e-3, 1e-2) == pytest.approx(1e-2)  # the 'minimum' suggestion
    assert pick_base_lr(1e-6, 1e-5) == MIN_AUTO_LR and pick_base_lr(1.0, 10.0) == MAX_AUTO_LR
    assert pick_base_lr(5e-4, float("nan")) == pytest.approx(5e-4)  # valley when minimum found nothing
    assert pick_base_lr(float("nan"), float("nan")) == 2e-3
    # read at batches of 64, trained at 16: square-root scaling halves it (sqrt(16/64) = 0.5)
    assert pick_base_lr(1e-3, 1e-2, train_bs=16, sweep_bs=64) == pytest.approx(5e-3)
    assert pick_base_lr(1e-3, 1e-2, train_bs=256, sweep_bs=64) == pytest.approx(2e-2)
    assert pick_base_lr(1e-3, 2e-2, train_bs=256, sweep_bs=64) == MAX_AUTO_LR  # clipped after scaling
    assert pick_base_lr(1e-3, 1e-2, train_bs=16) == pytest.approx(1e-2)  # no sweep batch size: no scaling
    assert pick_base_lr(1e-3, 1e-2, sweep_bs=64) == pytest.approx(1e-2)
    for nothing in (None, 0.0, -1e-3, float("inf")):  # 'minimum' found nothing usable: valley
        assert pick_base_lr(5e-4, nothing) == pytest.approx(5e-4)
        assert pick_base_lr(nothing, nothing) == 2e-3  # neither: fastai's default


def test_finite_median():
    assert finite_median([3e-3, 1e-3, 2e-3]) == 2e-3
    assert finite_median([1e-4, 1e-2]) == pytest.approx(1e-3, rel=1e-12)  # even: the geometric mean of the two
    assert finite_median([float("nan"), 1e-4, None, 1e-2]) == pytest.approx(1e-3, rel=1e-12)
    assert finite_median([1e-2, 1.0, float("inf"), 1e-1, 1e-3]) == pytest.approx(1e-3 ** 0.5, rel=1e-12)  # 4 finite
    assert math.isnan(finite_median([])) and math.isnan(finite_median([float("nan"), None]))


def test_auto_is_deterministic_and_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def prepared():
        learn = transfer_learner()
        learn.fit(1, lr=1e-3)  # some optimizer state to preserve
        learn.freeze()
        return learn
    learn = prepared()
    state = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_state = learn.opt.state_dict()
    opt_tensors = {(i, k): v.clone() for i, st in opt_state["state"].items() for k, v in st.items()}
    flags = [p.requires_grad for p in learn.model.parameters()]
    rng = torch.get_rng_state()
    files = sorted(os.listdir(tmp_path))
    lr1 = choose_base_lr(learn, verbose=False)
    lr2 = choose_base_lr(learn, verbose=False)
    assert lr1 == lr2
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for (i, k), v in opt_tensors.items():
        assert torch.equal(learn.opt.state_dict()["state"][i][k], v)
    assert [p.requires_grad for p in learn.model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert sorted(os.listdir(tmp_path)) == files
    # a second learner built the same way picks the same lr
    assert choose_base_lr(prepared(), verbose=False) == lr1


def test_auto_beats_a_hopeless_lr():
    """With base_lr=1e-6 nothing moves in 3 epochs; 'auto' must find an lr that learns the task."""
    tiny = transfer_learner()
    tiny.fine_tune(2, base_lr=1e-6, freeze_epochs=1)
    acc_tiny = tiny.validate()[1]
    auto = transfer_learner()
    auto.fine_tune(2, freeze_epochs=1)  # base_lr='auto' is the default
    acc_auto = auto.validate()[1]
    assert auto.auto_lr["base_lr"] > 1e-4
    assert acc_auto > 0.9 and acc_auto > acc_tiny + 0.2, (acc_auto, acc_tiny)


def test_auto_on_a_plain_learner_sweeps_the_frozen_model(dls_5_batches):
    from helpers import mlp3
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    lr = choose_base_lr(learn, verbose=False, num_it=30)
    assert learn.frozen_groups == 0
    # the rule on the recorded sweep, worked out here: the window drops the first 30 // 10 points and the last 5,
    # 'minimum' is a tenth of the lr at its lowest loss; the sweep ran at the training batch size (no scaling)
    sweep = learn.auto_lr["sweep"]
    lrs, losses = np.array(sweep["lrs"][3:-5]), np.array(sweep["losses"][3:-5])
    assert np.isfinite(losses).all() and len(sweep["lrs"]) > 8
    assert lr == min(max(lrs[losses.argmin()] / 10, MIN_AUTO_LR), MAX_AUTO_LR)
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())
    assert all(p.requires_grad for p in learn.model.parameters())


def test_the_head_sweep_uses_batches_of_64_whatever_the_training_batch_size():
    """Small training batches make the smoothed sweep loss turn up earlier (noise, not the lr scale): the
    sweep reads at SWEEP_BS = 64 items per batch, takes the median 'minimum' of N_SWEEPS shuffles, and
    scales it by sqrt(16/64) = 0.5 for this learner, which trains with batches of 16."""
    from fastfreeze.finetune.auto_lr import N_SWEEPS, SWEEP_BS
    learn = transfer_learner()
    assert learn.dls.train.batch_size == 16 and SWEEP_BS == 64
    choose_base_lr(learn, verbose=False, num_it=20)
    info = learn.auto_lr
    assert info["sweep_bs"] == 64 and "batches of 64" in info["how"] and info["train_bs"] == 16
    assert len(info["minimums"]) == N_SWEEPS and info["minimum"] == sorted(info["minimums"])[N_SWEEPS // 2]
    assert info["base_lr"] == pytest.approx(min(max(info["minimum"] * 0.5, MIN_AUTO_LR), MAX_AUTO_LR))


def test_under_accumulation_the_rule_scales_to_the_batch_a_step_sees():
    """Batches of 16, 2 per optimizer step: a step sees 32 items, so the 'minimum' is scaled by sqrt(32/64)."""
    learn = transfer_learner()
    choose_base_lr(learn, verbose=False, num_it=20, accum_steps=2)
    info = learn.auto_lr
    assert info["train_bs"] == 32 and info["sweep_bs"] == 64
    expected = min(max(info["minimum"] * math.sqrt(32 / 64), MIN_AUTO_LR), MAX_AUTO_LR)
    assert info["base_lr"] == pytest.approx(expected)
