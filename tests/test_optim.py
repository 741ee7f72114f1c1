"""The optimizer: fastai's AdamW by default, one param group per layer group, decoupled weight decay at each
group's lr with norms and biases exempt, applied only on steps that happen."""
import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.core.optim import DecoupledWeightDecay, adamw, momentum_of, set_momentum
from helpers import blobs, mlp2, mlp3, one_cycle_oracle, snapshot


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


def fused_adamw(param_groups, lr):
    """fastai's AdamW with torch's fused kernel, which on a skipped fp16 step runs but changes nothing, and
    tells the weight decay so through `opt.found_inf` (the fused path of GPUs, available on the CPU too)."""
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.0, fused=True)


def test_a_step_a_fused_optimizer_skips_decays_nothing_and_the_others_decay_as_usual():
    x, y = blobs(40)
    runs = []
    for opt_func in (adamw, fused_adamw):
        probe = OverflowOnce()
        learn = Learner(mlp2(), DataLoaders.from_tensors(x, y, bs=8, shuffle=False), precision="fp16", wd=0.1,
                        lr=0.1, progress=False, cbs=probe, opt_func=opt_func)
        learn.fit(1)
        for before, after in zip(probe.before, probe.after):
            assert torch.equal(before, after)
        runs.append(learn)
    assert runs[1].opt.defaults["fused"] and not runs[0].opt.defaults["fused"]
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()):  # the other 4 steps: the same decay
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def with_grads(*values):
    params = [nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in values]
    for p in params:
        p.grad = torch.ones_like(p)
    return params


def test_decoupled_weight_decay_multiplies_by_one_minus_lr_times_wd_per_group():
    """The hook called by hand on an SGD whose groups are set up for each rule (no step is taken)."""
    a, b, c, d, e = with_grads([1.0, -2.0], [4.0], [8.0], [3.0], [5.0])
    d.grad = None  # no gradient this step: not decayed
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1, "wd": 0.0},      # wd 0
                           {"params": [d], "lr": 0.1, "wd": 0.5},      # nothing with a gradient
                           {"params": [b, e], "lr": 0.1, "wd": 0.2},   # e is exempt (not in the decayed list)
                           {"params": [c], "lr": 0.1}], lr=0.1)        # no 'wd' key: no decay
    hook = DecoupledWeightDecay(opt, [[a], [d], [b], [c]])
    hook(opt, (), {})
    assert torch.equal(a, torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert torch.equal(d, torch.tensor([3.0], dtype=torch.float64)) and torch.equal(e, torch.tensor([5.0], dtype=torch.float64))
    assert torch.equal(b, torch.tensor([4.0 * (1 - 0.1 * 0.2)], dtype=torch.float64))
    assert torch.equal(c, torch.tensor([8.0], dtype=torch.float64))
    opt.param_groups[2]["lr"], opt.param_groups[2]["wd"] = 0.5, 2.0  # lr * wd = 1: decayed to zero
    hook(opt, (), {})
    assert torch.equal(b, torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 lists of decayed parameters for 4 param groups"):
        DecoupledWeightDecay(opt, [[a], [b]])


@pytest.mark.parametrize("found_inf,factor", [(0.0, 0.98), (1.0, 1.0), (2.0, 1.0)])
def test_decoupled_weight_decay_reads_found_inf_as_the_fused_kernels_do(found_inf, factor):
    """GradScaler gives a fused optimizer `found_inf`, summed over devices (so 2 with two overflowing devices):
    any value but 0 means the kernel skips the step, and the decay too. float64 parameters: the factor is
    computed in their dtype, exactly."""
    (w,) = with_grads([4.0, -8.0])
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1, "wd": 0.2}], lr=0.1)
    hook = DecoupledWeightDecay(opt, [[w]])
    opt.found_inf = torch.tensor(found_inf)  # float32, as GradScaler's
    hook(opt, (), {})
    assert torch.equal(w, torch.tensor([4.0, -8.0], dtype=torch.float64) * torch.tensor(factor, dtype=torch.float64))


def test_momentum_is_betas_0_for_adam_momentum_for_sgd_and_none_otherwise():
    p = nn.Parameter(torch.zeros(2))
    adam = torch.optim.AdamW([p], betas=(0.9, 0.99)).param_groups[0]
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.8).param_groups[0]
    rprop = torch.optim.Rprop([p]).param_groups[0]
    assert momentum_of(adam) == 0.9 and momentum_of(sgd) == 0.8 and math.isnan(momentum_of(rprop))
    set_momentum(adam, 0.85)
    set_momentum(sgd, 0.7)
    set_momentum(rprop, 0.5)
    assert adam["betas"] == (0.85, 0.99) and sgd["momentum"] == 0.7 and "momentum" not in rprop and "betas" not in rprop


def test_one_cycle_momentum_reaches_sgd_and_the_recorder_reads_it_back(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, opt_func=lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9),
                    progress=False)
    learn.fit_one_cycle(2, 1e-2)
    _, expected = one_cycle_oracle(10, 1e-2)
    np.testing.assert_allclose(np.array(learn.recorder.moms), np.stack([expected] * 2, axis=1), rtol=1e-6)
    adam = Learner(mlp2(), dls_5_batches, progress=False)
    adam.fit_one_cycle(2, 1e-2)
    np.testing.assert_allclose(np.array(adam.recorder.moms), np.stack([expected] * 2, axis=1), rtol=1e-6)


def test_an_optimizer_without_weight_decay_or_momentum_trains_with_the_learners_decay(dls_5_batches):
    """Rprop has neither `weight_decay` nor a momentum: the Learner decays, the schedule writes lrs only."""
    learn = Learner(mlp2(), dls_5_batches, opt_func=lambda groups, lr: torch.optim.Rprop(groups, lr=lr), wd=0.1,
                    progress=False)
    learn.fit_one_cycle(1, 1e-2)
    assert all(math.isnan(m) for row in learn.recorder.moms for m in row)


class FakeCudaParameter(nn.Parameter):
    """A CPU parameter that says it is on CUDA: the fused kernel is chosen by `is_cuda`."""

    @property
    def is_cuda(self):
        return True


def test_default_optimizer_is_fused_only_when_every_parameter_is_on_an_available_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_cpu = adamw([{"params": [nn.Parameter(torch.zeros(2))]}], lr=0.05)
    assert on_cpu.defaults["fused"] is None and on_cpu.param_groups[0]["lr"] == 0.05
    on_gpu = adamw([{"params": [FakeCudaParameter(torch.zeros(2))]}], lr=0.05)
    assert on_gpu.defaults["fused"] is True
    mixed = adamw([{"params": [FakeCudaParameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]}], lr=0.05)
    assert mixed.defaults["fused"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert adamw([{"params": [FakeCudaParameter(torch.zeros(2))]}], lr=0.05).defaults["fused"] is None


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
    def torch_steps_then_compare():
        """torch's AdamW over the same batches at the same lrs (a decay and a no-decay group per layer group),
        then every parameter compared with the learner's."""
        for t, (xb, yb) in enumerate(batches):
            for i, group in enumerate(opt.param_groups):
                group["lr"] = lrs[t][i // 2]
            nn.functional.cross_entropy(ref(xb), yb).backward()
            opt.step()
            opt.zero_grad()
        for (name, p), q in zip(learn.model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)

    torch_steps_then_compare()

    # then the first layer group frozen (its BatchNorm still trains, undecayed; its Linear gets no gradient, so
    # nothing of it is decayed): for torch, the Linear does not require grad; both optimizers start afresh
    learn.freeze_to(1)
    learn.fit(2)
    ref[0][0].requires_grad_(False)
    opt.state.clear()
    torch_steps_then_compare()


def test_a_decay_rate_that_would_zero_or_flip_the_weights_is_refused_at_its_exact_boundaries():
    """`check_decay_rate` refuses wd >= 1 together with lr*wd >= 1 (then `1 - lr*wd <= 0`), both bounds included,
    and nothing else: a usual wd with a huge lr is the divergence check's case, not this one."""
    from fastfreeze.core.optim import check_decay_rate
    refused = [(1.0, 1.0), (0.25, 4.0), (1.0, 2.0)]  # lr*wd = 1 at wd = 1; = 1 at wd = 4; = 2 at wd = 2
    allowed = [(0.5, 1.0),    # wd = 1 but lr*wd = 0.5
               (3.0, 0.5),    # lr*wd = 1.5 but wd < 1
               (0.99, 1.0),   # lr*wd = 0.99, just below
               (0.3, 3.0)]    # lr*wd = 0.9 with wd = 3 (lr/wd would be 0.1; lr*wd is the rule)
    for lr, wd in refused:
        with pytest.raises(ValueError, match=r"1 - lr\*wd = "):
            check_decay_rate(lr, wd)
    for lr, wd in allowed:
        check_decay_rate(lr, wd)
