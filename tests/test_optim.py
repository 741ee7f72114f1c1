"""The optimizer: fastai's AdamW by default, one param group per layer group, decoupled weight decay at each
group's lr with norms and biases exempt, applied only on steps that happen."""
import copy
import functools

import pytest
import torch
import torch.nn as nn

from fastfreeze import Callback, DataLoaders, Learner
from conftest import blobs, mlp2, mlp3


def snapshot(params):
    return [p.detach().clone() for p in params]


def test_default_optimizer_is_fastai_adamw_with_no_decay_on_norm_and_bias(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    assert isinstance(learn.opt, torch.optim.AdamW)
    for pg in learn.opt.param_groups:
        assert pg["betas"] == (0.9, 0.99) and pg["eps"] == 1e-5 and pg["wd"] == 0.01 and pg["lr"] == 1e-3
    decayed = {id(p) for g in learn.weight_decay.params for p in g}
    model = learn.model
    assert id(model[0][0].weight) in decayed and id(model[2].weight) in decayed
    for p in (model[0][0].bias, model[0][1].weight, model[0][1].bias, model[2].bias):
        assert id(p) not in decayed
    learn2 = Learner(mlp3(), dls_5_batches, wd_bn_bias=True, progress=False)
    assert sum(len(g) for g in learn2.weight_decay.params) == sum(1 for _ in learn2.model.parameters())


def test_weight_decay_matches_torch_adamw_exactly():
    """With wd_bn_bias=True every parameter is decayed: the result must equal torch's own AdamW."""
    x, y = blobs(40)
    dls_5_batches = DataLoaders.from_tensors(x, y, bs=8, shuffle=False)
    model = mlp2()
    ref = copy.deepcopy(model)
    learn = Learner(model, dls_5_batches, wd=0.1, wd_bn_bias=True, progress=False)
    learn.fit(1, lr=1e-2)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1)
    ref.train()
    for x, y in dls_5_batches.train:
        loss = nn.functional.cross_entropy(ref(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(learn.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


class OverflowOnce(Callback):
    """Makes batch `at` overflow as an fp16 step can (an infinite gradient) and keeps the parameters as they
    were before that step and after it."""

    def __init__(self, at=2):
        self.at = at

    def after_backward(self):
        if self.learn.training and self.learn.iter == self.at:
            self.before = snapshot(self.learn.model.parameters())
            next(iter(self.learn.model.parameters())).grad.fill_(float("inf"))

    def after_step(self):
        if self.learn.training and self.learn.iter == self.at:
            self.after = snapshot(self.learn.model.parameters())


def test_a_step_the_grad_scaler_skips_decays_nothing(dls_5_batches):
    """fp16 on the CPU trains with a GradScaler: an overflowing step is skipped, and its weight decay with it
    (decayed weights would shrink by 1 - lr*wd = 0.99 even with no gradient step)."""
    probe = OverflowOnce()
    learn = Learner(mlp2(), dls_5_batches, precision="fp16", wd=0.1, lr=0.1, progress=False, cbs=probe)
    learn.fit(1)
    assert learn.scaler is not None
    for before, after in zip(probe.before, probe.after):
        assert torch.equal(before, after)
    assert not all(torch.equal(p, q) for p, q in zip(probe.after, learn.model.parameters()))  # later steps train


def test_an_optimizer_that_decays_by_itself_is_refused_while_the_learner_decays(dls_5_batches):
    own_decay = functools.partial(torch.optim.AdamW, weight_decay=0.05)
    with pytest.raises(ValueError, match=r"applies its own weight_decay=0.05, and the Learner applies wd=0.01 too: "
                                         r"the weights would be decayed twice"):
        Learner(mlp2(), dls_5_batches, opt_func=own_decay, progress=False)
    learn = Learner(mlp2(), dls_5_batches, opt_func=torch.optim.AdamW, wd=0, progress=False)  # torch's default 0.01
    with pytest.raises(ValueError, match="decayed twice"):
        learn.fit(1, wd=0.01)


def test_an_optimizer_that_decays_by_itself_decays_once_when_the_learner_does_not():
    """wd=0 on the Learner: torch's AdamW(weight_decay=0.05) decays every parameter itself, exactly once."""
    x, y = blobs(40)
    dls = DataLoaders.from_tensors(x, y, bs=8, shuffle=False)
    model = mlp2()
    ref = copy.deepcopy(model)
    learn = Learner(model, dls, opt_func=functools.partial(torch.optim.AdamW, weight_decay=0.05), wd=0,
                    progress=False)
    learn.fit(1, lr=1e-2)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.05)
    ref.train()
    for xb, yb in dls.train:
        nn.functional.cross_entropy(ref(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(learn.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


class SetLrsEveryStep(Callback):
    """Writes lr_i(t) into each group before training step t: discriminative and changing from step to step."""

    def __init__(self, lrs):
        self.lrs = lrs

    def before_batch(self):
        if self.learn.training:
            for group, lr in zip(self.learn.opt.param_groups, self.lrs[self.learn.train_iter]):
                group["lr"] = lr


def test_default_weight_decay_matches_torch_adamw_with_a_decay_and_a_no_decay_group_per_layer_group():
    """The default (norms and biases exempt, each layer group decayed at its own lr) is torch's AdamW over two
    param groups per layer group, {weights, weight_decay=wd} and {norm params and biases, weight_decay=0}, both
    at the layer group's lr; over 10 steps with three lrs a decade apart that change at every step."""
    x, y = blobs(40)
    dls = DataLoaders.from_tensors(x, y, bs=8, shuffle=False)
    model = mlp3()
    ref = copy.deepcopy(model)
    wd, n_steps = 0.1, 10
    lrs = [[1e-3 * (1 + t / 4), 1e-2 * (1 + t / 4), 1e-1 * (1 + t / 4)] for t in range(n_steps)]
    learn = Learner(model, dls, wd=wd, progress=False, cbs=SetLrsEveryStep(lrs))
    learn.fit(2)

    exempt = [[m.bias, m.weight] if isinstance(m, nn.BatchNorm1d) else [m.bias] for m in ref.modules()
              if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    exempt_ids = {id(p) for ps in exempt for p in ps}
    torch_groups = []
    for child in ref:  # the layer groups: mlp3's three top-level children
        torch_groups.append({"params": [p for p in child.parameters() if id(p) not in exempt_ids], "weight_decay": wd})
        torch_groups.append({"params": [p for p in child.parameters() if id(p) in exempt_ids], "weight_decay": 0.0})
    assert [len(g["params"]) for g in torch_groups] == [1, 3, 1, 3, 1, 1]
    opt = torch.optim.AdamW(torch_groups, lr=0.0, betas=(0.9, 0.99), eps=1e-5)
    ref.train()
    batches = list(dls.train) * 2
    assert len(batches) == n_steps
    for t, (xb, yb) in enumerate(batches):
        for i, group in enumerate(opt.param_groups):
            group["lr"] = lrs[t][i // 2]
        nn.functional.cross_entropy(ref(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    for (name, p), q in zip(learn.model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
