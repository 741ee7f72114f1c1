"""Normalization layers: which modules count, and the norm policy of frozen groups ('frozen' costs a forward
pass only)."""
import timm.layers
import torch
import torch.nn as nn

from fastfreeze import Callback
from fastfreeze.core.norm import is_norm, no_decay_param_ids, norm_param_ids
from helpers import transfer_learner


def test_every_normalization_layer_counts_and_nothing_else():
    norms = [nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.InstanceNorm2d(4, affine=True),
             nn.LayerNorm(4), nn.GroupNorm(2, 4), timm.layers.BatchNormAct2d(4), timm.layers.LayerNorm2d(4),
             timm.layers.GroupNormAct(4, num_groups=2), timm.layers.RmsNorm(4), timm.layers.RmsNorm2d(4),
             timm.layers.SimpleNorm(4), timm.layers.SimpleNorm2d(4), timm.layers.FrozenBatchNormAct2d(4),
             nn.LocalResponseNorm(2)]
    others = [nn.Linear(4, 4), nn.Conv2d(4, 4, 3), nn.Embedding(4, 4), nn.ReLU(), nn.Dropout()]
    assert all(is_norm(m) for m in norms)
    assert not any(is_norm(m) for m in others)


def test_norm_parameters_and_biases_are_exempt_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    conv, bn, _, fc = model
    assert norm_param_ids(model) == {id(bn.weight), id(bn.bias)}
    assert no_decay_param_ids(model) == {id(bn.weight), id(bn.bias), id(conv.bias), id(fc.bias)}
    # a norm layer's own parameters only: not those of a module inside it (timm's BatchNormAct2d with a PReLU)
    bn_act = timm.layers.BatchNormAct2d(4, act_layer=nn.PReLU)
    assert len(list(bn_act.act.parameters())) == 1
    assert norm_param_ids(bn_act) == {id(bn_act.weight), id(bn_act.bias)}
    assert no_decay_param_ids(bn_act) == {id(bn_act.weight), id(bn_act.bias)}  # the PReLU weight is decayed


class CountBodyActivations(Callback):
    """During training batches: whether the body's output needs grad, and how many tensors autograd saves
    for backward while the body runs."""

    def before_fit(self):
        self.saved, self.out_requires_grad, self.in_body = 0, set(), False
        body = self.learn.model.body
        self.handles = [body.register_forward_pre_hook(self.enter), body.register_forward_hook(self.leave)]
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()

    def enter(self, module, inputs):
        self.in_body = self.learn.training

    def leave(self, module, inputs, out):
        if self.learn.training:
            self.out_requires_grad.add(out.requires_grad)
        self.in_body = False

    def pack(self, t):
        self.saved += self.in_body
        return t

    def after_fit(self):
        self.hooks.__exit__(None, None, None)
        for h in self.handles:
            h.remove()


def test_norm_frozen_body_costs_a_forward_pass_only():
    frozen = transfer_learner(norm="frozen")
    probe = CountBodyActivations()
    frozen.fit(1, 1e-2, cbs=probe)
    assert probe.out_requires_grad == {False} and probe.saved == 0
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.body.parameters())
    assert all(p.grad is None for p in frozen.model.head.parameters())  # zero_grad(set_to_none) after each step

    # the contrast: norm='train' trains the body's BatchNorm, so autograd keeps the body's activations
    trained_norm = transfer_learner(norm="train")
    probe = CountBodyActivations()
    trained_norm.fit(1, 1e-2, cbs=probe)
    assert probe.out_requires_grad == {True} and probe.saved > 0


def test_norm_recalibrate_reestimates_frozen_batchnorm_statistics_on_the_training_data():
    """norm='recalibrate': before a frozen fit, the frozen body's BatchNorm statistics become the average over
    the training batches of each batch's mean and unbiased variance (a cumulative average, worked out here from
    what the layer received), and then stay fixed through the fit, as with 'frozen'."""
    learn = transfer_learner(norm="recalibrate")
    bn = learn.model.body[1]
    assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))
    seen = []
    bn.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    body_params = [p.detach().clone() for p in learn.model.body.parameters()]
    learn.fit(2, 1e-2)
    pre_bn = seen[:5]  # the recalibration pass: the 5 training batches of 8, before the fit's own batches
    assert [len(h) for h in pre_bn] == [8] * 5
    expected_mean = torch.stack([h.mean(0) for h in pre_bn]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in pre_bn]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1  # put back after the pass
    assert all(torch.equal(p, q) for p, q in zip(learn.model.body.parameters(), body_params))
    assert learn.recalibrated_for == 1
    learn.fit(1, 1e-2)  # the same freezing: not recalibrated again, the statistics stay
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    # the contrast: 'frozen' keeps the initial statistics
    frozen = transfer_learner(norm="frozen")
    frozen.fit(1, 1e-2)
    assert torch.equal(frozen.model.body[1].running_mean, torch.zeros(16))
    assert float((expected_mean.abs()).max()) > 0.1 and float((expected_var - 1).abs().max()) > 0.1
