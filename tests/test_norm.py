"""Normalization layers: which modules count, and the norm policy of frozen groups ('frozen' costs a forward
pass only)."""
import timm.layers
import torch
import torch.nn as nn

from fastfreeze import Callback
from fastfreeze.norm import is_norm, no_decay_param_ids, norm_param_ids
from conftest import transfer_learner


def test_every_normalization_layer_counts_and_nothing_else():
    norms = [nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.InstanceNorm2d(4, affine=True),
             nn.LayerNorm(4), nn.GroupNorm(2, 4), timm.layers.BatchNormAct2d(4), timm.layers.LayerNorm2d(4),
             timm.layers.GroupNormAct(4, num_groups=2), timm.layers.RmsNorm(4)]
    others = [nn.Linear(4, 4), nn.Conv2d(4, 4, 3), nn.Embedding(4, 4), nn.ReLU(), nn.Dropout()]
    assert all(is_norm(m) for m in norms)
    assert not any(is_norm(m) for m in others)


def test_norm_parameters_and_biases_are_exempt_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    conv, bn, _, fc = model
    assert norm_param_ids(model) == {id(bn.weight), id(bn.bias)}
    assert no_decay_param_ids(model) == {id(bn.weight), id(bn.bias), id(conv.bias), id(fc.bias)}


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
