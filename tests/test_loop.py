"""Learner: layer groups, optimizer, freezing, the loop and its events, evaluation, saving."""

import pytest
import torch
import torch.nn as nn

from fastfreeze import (Callback, CancelBatchException, CancelEpochException, CancelFitException, DataLoaders, Learner,
                        accuracy)
from helpers import blobs, mlp2, mlp3, snapshot


def is_norm_param(learn, p):
    return id(p) in learn.norm_param_ids


# -- layer groups -----------------------------------------------------------------------------------

def test_default_groups_are_top_level_children_in_order(dls_5_batches):
    model = mlp3()
    learn = Learner(model, dls_5_batches, progress=False)
    assert learn.n_groups == 3
    for group, child in zip(learn.layer_groups, model):
        assert [id(p) for p in group] == [id(p) for p in child.parameters()]
    assert len(learn.opt.param_groups) == 3
    for pg, group in zip(learn.opt.param_groups, learn.layer_groups):
        assert [id(p) for p in pg["params"]] == [id(p) for p in group]


def test_splitter_missing_or_repeated_parameter_is_an_error(dls_5_batches):
    model = mlp3()
    with pytest.raises(ValueError, match="in no layer group"):
        Learner(model, dls_5_batches, splitter=lambda m: [m[0], m[1]], progress=False)
    with pytest.raises(ValueError, match="exactly one group"):
        Learner(model, dls_5_batches, splitter=lambda m: [m[0], m[0], m[1], m[2]], progress=False)
    with pytest.raises(ValueError, match="not part of the model"):
        Learner(model, dls_5_batches, splitter=lambda m: [m, nn.Linear(2, 2)], progress=False)


def test_splitter_errors_name_the_parameters(dls_5_batches):
    model = mlp3()
    with pytest.raises(ValueError, match=r"parameter '0.0.weight' is in layer groups 0 and 1: every parameter must be "
                                         r"in exactly one group"):
        Learner(model, dls_5_batches, splitter=lambda m: [m[0], m[0], m[1], m[2]], progress=False)
    with pytest.raises(ValueError, match=r"^2 parameters are in no layer group \(2.weight, 2.bias\): the splitter"):
        Learner(model, dls_5_batches, splitter=lambda m: [m[0], m[1]], progress=False)
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)], nn.Linear(4, 3))  # 12 parameters
    with pytest.raises(ValueError, match=r"^10 parameters are in no layer group \(0.weight, 0.bias, 1.weight, 1.bias, "
                                         r"2.weight, 2.bias, 3.weight, 3.bias and 2 more\)"):
        Learner(deep, dls_5_batches, splitter=lambda m: [m[5]], progress=False)
    nine = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)], nn.Linear(4, 4, bias=False), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^9 parameters are in no layer group \(0.weight, 0.bias, 1.weight, 1.bias, "
                                         r"2.weight, 2.bias, 3.weight, 3.bias and 1 more\)"):
        Learner(nine, dls_5_batches, splitter=lambda m: [m[5]], progress=False)
    eight = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)], nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^8 parameters are in no layer group \(0.weight, 0.bias, 1.weight, 1.bias, "
                                         r"2.weight, 2.bias, 3.weight, 3.bias\): the splitter"):
        Learner(eight, dls_5_batches, splitter=lambda m: [m[4]], progress=False)


def test_splitter_with_parameter_lists(dls_5_batches):
    model = mlp3()
    learn = Learner(model, dls_5_batches, progress=False,
                    splitter=lambda m: [list(m[0].parameters()) + list(m[1].parameters()), m[2].parameters()])
    assert learn.n_groups == 2


# -- freezing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("train_bn", [True, False])
def test_freeze_keeps_frozen_weights_bit_identical(dls_5_batches, train_bn):
    learn = Learner(mlp3(), dls_5_batches, train_bn=train_bn, progress=False)
    learn.freeze()
    assert learn.frozen_groups == 2
    body = [p for g in learn.layer_groups[:2] for p in g]
    non_norm = [p for p in body if not is_norm_param(learn, p)]
    norm = [p for p in body if is_norm_param(learn, p)]
    before_non_norm, before_norm = snapshot(non_norm), snapshot(norm)
    head_before = snapshot(learn.layer_groups[2])
    learn.fit(2, lr=1e-2)
    for p, b in zip(non_norm, before_non_norm):
        assert torch.equal(p, b)
    changed_norm = any(not torch.equal(p, b) for p, b in zip(norm, before_norm))
    assert changed_norm == train_bn  # train_bn: norm params of frozen groups keep training
    assert all(not torch.equal(p, b) for p, b in zip(learn.layer_groups[2], head_before))
    assert all(p.requires_grad == (train_bn and is_norm_param(learn, p)) for p in body)


def test_unfreeze_trains_everything(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    learn.freeze()
    learn.unfreeze()
    before = snapshot(learn.model.parameters())
    learn.fit(1, lr=1e-2)
    assert all(not torch.equal(p, b) for p, b in zip(learn.model.parameters(), before))


def test_refreeze_after_unfrozen_training_does_not_decay_frozen_weights(dls_5_batches):
    """fastai's bug: after unfrozen training, freeze() leaves zero grads and weight decay still shrinks
    the frozen weights. Here they must not change at all."""
    learn = Learner(mlp3(), dls_5_batches, wd=0.5, train_bn=False, progress=False)
    learn.fit(1, lr=1e-2)
    learn.freeze()
    body = [p for g in learn.layer_groups[:2] for p in g]
    assert all(p.grad is None for p in body)
    before = snapshot(body)
    learn.fit(1, lr=1e-2)
    assert all(torch.equal(p, b) for p, b in zip(body, before))


@pytest.mark.parametrize("n", [0, 1, 2, -1, -2, -3])
def test_freeze_to_every_valid_index(dls_5_batches, n):
    learn = Learner(mlp3(), dls_5_batches, train_bn=False, progress=False)
    learn.freeze_to(n)
    k = n if n >= 0 else 3 + n
    for i, group in enumerate(learn.layer_groups):
        assert all(p.requires_grad == (i >= k) for p in group)
    before = [snapshot(g) for g in learn.layer_groups]
    learn.fit(1, lr=1e-2)
    for i, (group, b) in enumerate(zip(learn.layer_groups, before)):
        unchanged = all(torch.equal(p, q) for p, q in zip(group, b))
        assert unchanged == (i < k)


def test_freeze_to_takes_an_int(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    for n in (1.0, True, "1"):
        with pytest.raises(TypeError, match="freeze_to takes an int group index"):
            learn.freeze_to(n)


def test_freeze_drops_the_gradients_of_frozen_parameters_only(dls_5_batches):
    """Gradients left by a backward before freezing: frozen parameters lose theirs (no step may use them),
    trainable ones keep theirs."""
    learn = Learner(mlp3(), dls_5_batches, train_bn=False, progress=False)
    x, _ = next(iter(dls_5_batches.train))
    learn.model(x).sum().backward()
    learn.freeze()
    assert all(p.grad is None for g in learn.layer_groups[:2] for p in g)
    assert all(p.grad is not None for p in learn.layer_groups[2])


def test_frozen_modules_are_the_largest_wholly_frozen_ones(dls_5_batches):
    model = mlp3()
    learn = Learner(model, dls_5_batches, progress=False)
    assert learn.frozen_modules() == []
    learn.freeze_to(1)
    assert learn.frozen_modules() == [model[0]]
    learn.freeze()
    assert learn.frozen_modules() == [model[0], model[1]]
    learn.freeze_to(0)
    assert learn.frozen_modules() == []


@pytest.mark.parametrize("n", [3, 7, -4])
def test_freeze_to_out_of_range_says_the_valid_range(dls_5_batches, n):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match=r"\[-3, 2\]"):
        learn.freeze_to(n)


def test_freeze_to_resets_optimizer_state_by_default(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    learn.fit(1)
    assert len(learn.opt.state) > 0
    learn.freeze_to(1)
    assert len(learn.opt.state) == 0
    keep = Learner(mlp3(), dls_5_batches, reset_opt=False, progress=False)
    keep.fit(1)
    keep.freeze_to(1)
    assert len(keep.opt.state) > 0


def test_norm_frozen_keeps_every_parameter_and_buffer_of_frozen_groups(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, norm="frozen", progress=False)
    learn.freeze()
    frozen_state = {k: v.clone() for k, v in learn.model[:2].state_dict().items()}
    learn.fit(2, lr=1e-2)
    for k, v in learn.model[:2].state_dict().items():
        assert torch.equal(v, frozen_state[k]), k
    # with norm='train' the BatchNorm running statistics move
    learn2 = Learner(mlp3(), dls_5_batches, norm="train", progress=False)
    learn2.freeze()
    mean_before = learn2.model[0][1].running_mean.clone()
    learn2.fit(1, lr=1e-2)
    assert not torch.equal(learn2.model[0][1].running_mean, mean_before)


def test_groups_table(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    learn.freeze()
    rows = learn.groups_table()
    assert [r["group"] for r in rows] == [0, 1, 2]
    assert rows[0]["params"] == 4 * 16 + 16 + 16 + 16
    assert rows[0]["trainable"] == 32 and rows[0]["state"] == "frozen (norm trains)"
    assert rows[2]["state"] == "trainable" and rows[2]["params"] == 16 * 3 + 3
    assert [r["modules"] for r in rows] == ["0", "1", "2"]  # each group is one whole top-level child


# -- the loop -------------------------------------------------------------------------------------

def test_learns_a_separable_task(dls_5_batches):
    x, y = blobs(600, seed=2)
    xv, yv = blobs(300, seed=3)
    dls = DataLoaders.from_tensors(x, y, xv, yv, bs=32, seed=0)
    learn = Learner(mlp3(), dls, metrics=accuracy, progress=False)
    learn.fit_one_cycle(3, 1e-2)
    loss, acc = learn.validate()
    assert acc > 0.95
    assert learn.recorder.values[-1]["accuracy"] == pytest.approx(acc)


def test_cancel_batch_epoch_and_fit(dls_5_batches):
    class SkipOdd(Callback):
        def before_batch(self):
            if self.learn.training and self.learn.iter % 2:
                raise CancelBatchException()
    learn = Learner(mlp2(), dls_5_batches, cbs=SkipOdd(), progress=False)
    learn.fit(1)
    assert len(learn.recorder.losses) == 3  # batches 0, 2, 4

    class StopAfterTwo(Callback):
        order = 100  # after the Recorder has recorded the batch

        def after_batch(self):
            if self.learn.training and self.learn.train_iter == 1:
                raise CancelFitException()
    learn = Learner(mlp2(), dls_5_batches, cbs=StopAfterTwo(), progress=False)
    learn.fit(3)
    assert len(learn.recorder.losses) == 2 and learn.recorder.values == []

    class SkipEpoch(Callback):
        def after_train(self):
            if self.learn.epoch == 0:
                raise CancelEpochException()
    learn = Learner(mlp2(), dls_5_batches, cbs=SkipEpoch(), progress=False)
    learn.fit(2)
    assert [r["epoch"] for r in learn.recorder.values] == [1]


def test_interrupt_leaves_learner_usable(dls_5_batches):
    class Boom(Callback):
        order = 100  # after the Recorder has recorded the batch

        def after_batch(self):
            if self.learn.training and self.learn.iter == 2:
                raise KeyboardInterrupt
    boom = Boom()
    learn = Learner(mlp2(), dls_5_batches, metrics=accuracy)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, cbs=boom)
    assert boom not in learn.cbs and not learn.model.training
    assert len(learn.recorder.losses) == 3  # what was done is kept
    learn.fit(1)
    assert len(learn.recorder.values) == 1


def test_nan_loss_stops_before_touching_weights(dls_5_batches):
    class Poison(Callback):
        def after_pred(self):
            if self.learn.training and self.learn.iter == 3:
                self.learn.pred = self.learn.pred * float("nan")
    learn = Learner(mlp2(), dls_5_batches, cbs=Poison(), progress=False)
    learn.divergence_guard.check_every = 1  # every step's loss read before the step (the default reads at the epoch's end)
    seen = []

    class Snap(Callback):
        order = 100

        def after_step(self):
            seen.append(snapshot(self.learn.model.parameters()))
    learn.add_cbs(Snap())
    with pytest.raises(FloatingPointError, match="loss is nan"):
        learn.fit(1)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), seen[-1]))


# -- evaluation -------------------------------------------------------------------------------------

def test_validate_is_size_weighted():
    """A metric averaged per batch would differ: batch sizes 16 and 4, accuracies 1.0 and 0.0."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    xv = torch.tensor([[1.0, 0.0]] * 16 + [[1.0, 0.0]] * 4)
    yv = torch.tensor([0] * 16 + [1] * 4)
    dls = DataLoaders.from_tensors(xv, yv, xv, yv, bs=8)  # valid batch size 16 -> batches of 16 and 4
    learn = Learner(model, dls, metrics=accuracy, progress=False)
    loss, acc = learn.validate()
    assert acc == pytest.approx(16 / 20)
    logits = model(xv)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, yv).item(), rel=1e-6)


def test_get_preds_and_predict(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    probs, targs = learn.get_preds()
    assert probs.shape == (24, 3) and targs.shape == (24,)
    torch.testing.assert_close(probs.sum(1), torch.ones(24))
    x = dls_5_batches.valid.dataset[5][0]
    label, idx, p = learn.predict(x)
    torch.testing.assert_close(p, probs[5])
    assert idx == int(probs[5].argmax()) and label == idx


def test_save_and_load_roundtrip(tmp_path, dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, path=tmp_path, progress=False)
    learn.fit(1)
    file = learn.save("stage1")
    assert file == tmp_path / "models" / "stage1.pth" and file.exists()
    assert not list(tmp_path.glob("models/*.tmp"))
    saved = snapshot(learn.model.parameters())
    learn.fit(1, lr=1e-2)
    learn.load("stage1")
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), saved))
    with pytest.raises(FileNotFoundError, match="nope"):
        learn.load("nope")


# -- gradient accumulation ------------------------------------------------------------------------

def no_batch_stats_mlp() -> nn.Sequential:
    """Two layer groups and no BatchNorm or Dropout: a batch of 16 and two of 8 give the same gradients."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(4, 16), nn.ReLU()), nn.Linear(16, 3))


def test_accumulating_two_batches_of_8_equals_one_batch_of_16():
    x, y = blobs(48)
    xv, yv = blobs(24, seed=1)
    # the same seeded shuffle: batches 2k and 2k+1 of 8 hold the items of batch k of 16
    big = Learner(no_batch_stats_mlp(), DataLoaders.from_tensors(x, y, xv, yv, bs=16, seed=0), progress=False)
    small = Learner(no_batch_stats_mlp(), DataLoaders.from_tensors(x, y, xv, yv, bs=8, seed=0), progress=False)
    big.fit_one_cycle(2, 1e-2)
    small.fit_one_cycle(2, 1e-2, accum_steps=2)
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # every batch's loss is recorded; the first step's two halves average to the big batch's loss (same weights)
    assert len(small.recorder.losses) == 12 and len(big.recorder.losses) == 6
    assert (small.recorder.losses[0] + small.recorder.losses[1]) / 2 == pytest.approx(big.recorder.losses[0], abs=1e-6)
    # the schedule counts optimizer steps: both batches of a step run at that step's lr, the one-cycle of 6 steps
    assert small.recorder.lrs[0::2] == small.recorder.lrs[1::2] == big.recorder.lrs
    from helpers import one_cycle_oracle
    import numpy as np
    np.testing.assert_allclose([r[-1] for r in big.recorder.lrs], one_cycle_oracle(6, 1e-2)[0], rtol=1e-6)
    assert (small.train_iter, small.step_iter, big.step_iter) == (12, 6, 6)


def test_accumulation_steps_after_every_nth_batch_and_at_the_end_of_the_epoch(dls_5_batches):
    """5 batches with accum_steps=2: steps after batches 2, 4 and 5, on the mean gradient of the batches each
    takes; checked against plain SGD written out by hand (no weight decay, fixed lr)."""
    model = no_batch_stats_mlp()
    expected = no_batch_stats_mlp()
    sgd = lambda groups, lr: torch.optim.SGD(groups, lr=lr)  # noqa: E731
    steps = []

    class CountSteps(Callback):
        def after_step(self):
            steps.append(self.learn.iter)
    learn = Learner(model, dls_5_batches, opt_func=sgd, wd=0.0, cbs=CountSteps(), progress=False)
    order = [(xb.clone(), yb.clone()) for xb, yb in DataLoaders.from_tensors(*blobs(40), bs=8, seed=0).train]
    learn.fit(1, lr=0.1, accum_steps=2)
    assert steps == [1, 3, 4] and learn.step_iter == 3
    for group in (order[0:2], order[2:4], order[4:5]):
        expected.zero_grad()
        for xb, yb in group:
            (nn.functional.cross_entropy(expected(xb), yb) / len(group)).backward()
        with torch.no_grad():
            for p in expected.parameters():
                p -= 0.1 * p.grad
    for a, b in zip(learn.model.parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_accum_steps_must_be_a_positive_int(dls_5_batches, bad):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match="accum_steps must be a positive int"):
        learn.fit(1, accum_steps=bad)


def test_accumulation_needs_a_training_set_with_a_length():
    class NoLength:
        def __iter__(self):
            yield from DataLoaders.from_tensors(*blobs(16), bs=8).train
    learn = Learner(mlp2(), DataLoaders(NoLength()), progress=False)
    learn.fit(1, accum_steps=1)  # fine without accumulation
    with pytest.raises(TypeError, match="accum_steps > 1 needs a training set with a length"):
        learn.fit(1, accum_steps=2)
