"""EMA of the weights: the average against one worked out here, validation on it, export of it, and exact
resume from checkpoints that hold it."""
import copy

import pytest
import torch
import torch.nn as nn

from fastfreeze import Callback, DataLoaders, Learner, load_learner, vision_learner
from fastfreeze.core.checkpoint import CheckpointCallback
from fastfreeze.callbacks.ema import EMA
from fastfreeze.finetune.feature_cache import FeatureCache
from helpers import KillAfterEpoch, array_dls, blobs, make_learner, mlp2, transfer_learner


class WeightsAfterStep(Callback):
    """The model's state dict after every optimizer step."""

    def __init__(self):
        self.states = []

    def after_step(self):
        self.states.append({k: v.detach().clone() for k, v in self.learn.model.state_dict().items()})


def hand_average(states, decays):
    """ema_1 = w_1; ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t for floating tensors; integers copied."""
    avg = {k: v.clone() for k, v in states[0].items()}
    for state, d in zip(states[1:], decays[1:]):
        for k, v in state.items():
            avg[k] = d * avg[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    return avg


def assert_state_close(got, expected, atol=1e-6):
    assert list(got) == list(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=atol, msg=k)


def test_average_equals_the_hand_computed_one(dls_5_batches):
    ema, seen = EMA(decay=0.5, warmup=False, validate=False), WeightsAfterStep()
    learn = Learner(mlp2(), dls_5_batches, cbs=[ema, seen], progress=False)
    learn.fit(1, lr=1e-2)
    assert ema.updates == 5
    assert_state_close(ema.ema.module.state_dict(), hand_average(seen.states, [0.0] + [0.5] * 4))
    # BatchNorm statistics are averaged too, and the average differs from the last weights
    assert not torch.allclose(ema.ema.module.state_dict()["0.1.running_mean"], seen.states[-1]["0.1.running_mean"])


def test_warmup_decay_is_timms_formula(dls_5_batches):
    ema, seen = EMA(decay=0.6, warmup=True, warmup_power=0.75, validate=False), WeightsAfterStep()
    learn = Learner(mlp2(), dls_5_batches, cbs=[ema, seen], progress=False)
    learn.fit(2, lr=1e-2)
    # update u (1-based) uses t = u - 1: decay min(0.6, 1 - (1 + t) ** -0.75): 0, 0.405, 0.561, 0.6, 0.6, ...
    decays = [min(0.6, 1 - (1 + t) ** -0.75) for t in range(10)]
    assert decays[1] == pytest.approx(0.4054, abs=1e-4) and decays[3] == 0.6
    assert_state_close(ema.ema.module.state_dict(), hand_average(seen.states, decays))


def five_batches():
    return DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0)


def test_validation_runs_on_the_average_and_training_on_the_weights():
    plain = Learner(mlp2(), five_batches(), progress=False)
    plain.fit(2, lr=1e-2)
    ema = EMA(decay=0.5, warmup=False)
    dls = five_batches()
    learn = Learner(mlp2(), dls, cbs=ema, progress=False)
    learn.fit(2, lr=1e-2)
    for a, b in zip(learn.model.parameters(), plain.model.parameters()):  # swapping back is exact
        assert torch.equal(a, b)
    averaged = copy.deepcopy(learn.model).eval()
    averaged.load_state_dict(ema.ema.module.state_dict())
    xv, yv = dls.valid.dataset.tensors
    expected = nn.functional.cross_entropy(averaged(xv), yv).item()
    assert learn.recorder.values[-1]["valid_loss"] == pytest.approx(expected, rel=1e-6)
    assert learn.validate()[0] == pytest.approx(expected, rel=1e-6)
    trained = nn.functional.cross_entropy(plain.model.eval()(xv), yv).item()
    assert abs(trained - expected) > 1e-4  # so the check above can fail


def test_applied_swaps_in_the_average_for_export(tmp_path):
    ema = EMA(decay=0.5, warmup=False)
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False, cbs=ema, path=tmp_path)
    learn.fit(1, lr=1e-2)
    trained = {k: v.clone() for k, v in learn.model.state_dict().items()}
    average = {k: v.clone() for k, v in ema.ema.module.state_dict().items()}
    assert any(not torch.equal(average[k], v) for k, v in trained.items())
    with ema.applied():
        for k, v in learn.model.state_dict().items():
            assert torch.equal(v, average[k])
        learn.export("ema_export")
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, trained[k])
    assert all(torch.equal(v, average[k]) for k, v in ema.ema.module.state_dict().items())
    predictor = load_learner(tmp_path / "ema_export")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = ema.ema.module.eval()(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(predictor.forward(x), expected.detach())


def test_applied_before_training_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no average yet"):
        with EMA().applied():
            pass


def test_resume_with_ema_is_bit_exact(tmp_path):
    full_ema = EMA(decay=0.9)
    full = make_learner(tmp_path / "full", cbs=full_ema)
    full.fit_one_cycle(3, 1e-2, accum_steps=2)

    killed = make_learner(tmp_path / "run", cbs=EMA(decay=0.9))
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 1e-2, accum_steps=2, cbs=[CheckpointCallback(), KillAfterEpoch()])

    resumed_ema = EMA(decay=0.9)  # a new process: new learner, new callback, other weights and RNG
    resumed = make_learner(tmp_path / "run", seed=5, cbs=resumed_ema)
    resumed.fit_one_cycle(3, 1e-2, accum_steps=2, resume_from="checkpoint")
    assert resumed_ema.updates == full_ema.updates == 9  # 3 epochs of 3 steps (5 batches, 2 per step)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for k, v in full_ema.ema.module.state_dict().items():
        assert torch.equal(resumed_ema.ema.module.state_dict()[k], v), k
    assert resumed.recorder.values[-1]["valid_loss"] == full.recorder.values[-1]["valid_loss"]


def test_resume_needs_the_same_callbacks_and_accumulation(tmp_path):
    make_learner(tmp_path, cbs=EMA()).fit_one_cycle(2, 1e-2, cbs=CheckpointCallback())
    with pytest.raises(ValueError, match=r"holds the state of the callbacks \['ema'\], but this learner has \[\]"):
        make_learner(tmp_path).fit_one_cycle(2, 1e-2, resume_from="checkpoint")
    with pytest.raises(ValueError, match="accum_steps=1, not 2"):
        make_learner(tmp_path, cbs=EMA()).fit_one_cycle(2, 1e-2, accum_steps=2, resume_from="checkpoint")


def test_lr_find_leaves_the_average_alone(dls_5_batches):
    ema = EMA(decay=0.5)
    learn = Learner(mlp2(), dls_5_batches, cbs=ema, progress=False)
    learn.lr_find(num_it=10)
    assert ema.ema is None and ema.updates == 0
    learn.fit(1, lr=1e-2)
    before = {k: v.clone() for k, v in ema.ema.module.state_dict().items()}
    learn.lr_find(num_it=10)
    assert ema.updates == 5
    for k, v in ema.ema.module.state_dict().items():
        assert torch.equal(v, before[k])


def test_average_covers_the_whole_model_when_the_head_trains_on_cached_features():
    ema = EMA(decay=0.5, warmup=False)
    learn = transfer_learner(cbs=[ema])  # body frozen, norm='frozen': the fit is cached
    body_before = {k: v.clone() for k, v in learn.model.body.state_dict().items()}
    cache = FeatureCache(verbose=False)
    learn.fit(2, lr=1e-2, cbs=[cache])
    assert cache.info is not None  # the head did train on cached features
    averaged = ema.ema.module.state_dict()
    assert set(averaged) == set(learn.model.state_dict())
    for k, v in body_before.items():
        assert torch.equal(averaged[f"body.{k}"], v)  # the frozen body's average is the body
    assert not torch.equal(averaged["head.2.weight"], learn.model.state_dict()["head.2.weight"])


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, "0.9"])
def test_decay_must_be_in_zero_one(bad):
    with pytest.raises(ValueError, match=r"EMA decay must be a number in \[0, 1\)"):
        EMA(decay=bad)
