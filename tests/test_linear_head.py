"""A linear classifier of average-pooled features written into a head: in eval mode the head computes
((avg - mean) / std) @ W.T + b, worked out here directly from W, b, mean and std; heads it cannot hold are
named and left untouched; a later fit can still train the head."""
import pytest
import torch
import torch.nn as nn

from helpers import same, state_of
from fastfreeze.models.head import SigmoidRange, create_head
from fastfreeze.models.linear_head import linear_head_layout, write_linear_classifier

NF, C = 16, 3


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(40, NF, 2, 2, generator=g) * 3 + 1
    avg = feats.mean(dim=(2, 3)).double()
    weight = torch.randn(C, NF, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    mean, std = avg.mean(0) + 0.5, avg.std(0) * 2  # any standardisation, not only the features' own
    return feats, weight, bias, mean, std, ((avg - mean) / std) @ weight.T + bias


def written(head, feats, weight, bias, mean, std):
    head.train()
    head(feats)  # running statistics that are not the ones written
    why = write_linear_classifier(head, head[:2](feats), mean, std, weight, bias)
    head.eval()
    return why


HEADS = {
    "create_head (concat pool, BatchNorms, no bias on the last Linear)": lambda: create_head(NF, C),
    "create_head, average pooling": lambda: create_head(NF, C, concat_pool=False),
    "create_head, lin_first": lambda: create_head(NF, C, lin_first=True),
    "create_head, 6 hidden units (2 x classes)": lambda: create_head(NF, C, lin_ftrs=[6]),
    "by hand: Linear, ReLU, Linear": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(NF, 8),
                                                           nn.ReLU(), nn.Linear(8, C)),
    "by hand: one Linear": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(NF, C)),
}


@pytest.mark.parametrize("make", HEADS.values(), ids=HEADS.keys())
def test_the_head_computes_the_linear_classifier(make):
    feats, weight, bias, mean, std, expected = problem()
    head = make()
    assert written(head, feats, weight, bias, mean, std) == ""
    with torch.no_grad():
        assert torch.allclose(head(feats).double(), expected, atol=1e-5, rtol=1e-5)


def pooled_head(*layers):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *layers)


REFUSED = {
    "create_head, lin_ftrs=[]: its Linear has no bias": (lambda: create_head(NF, C, lin_ftrs=[]),
                                                         "the head's only Linear has no bias"),
    "two hidden layers": (lambda: create_head(NF, C, lin_ftrs=[32, 32]),
                          "the head has layers after its classifier (ReLU)"),
    "5 hidden units, fewer than 2 x 3": (lambda: create_head(NF, C, lin_ftrs=[5]),
                                         "the hidden layer has fewer than 2 x 3 units"),
    "a SigmoidRange at the end": (lambda: nn.Sequential(*create_head(NF, C), SigmoidRange(0, 1)),
                                  "the head has layers after its classifier (SigmoidRange)"),
    "no pooling": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(NF * 4, C)),
                   "the head does not start with global average or concat pooling"),
    "pooling to 2 x 2": (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(NF * 4, C)),
                         "the head does not start with global average or concat pooling"),
    "not a Sequential": (lambda: nn.Linear(NF, C), "the head is a Linear, not an nn.Sequential"),
    "no Flatten": (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Linear(NF, C)),
                   "the head's pooling is not followed by Flatten"),
    "no Linear": (lambda: pooled_head(nn.BatchNorm1d(NF)), "the head has no Linear layer after its pooling"),
    "a hidden layer and no Linear after it": (lambda: pooled_head(nn.Linear(NF, 8), nn.ReLU(), nn.BatchNorm1d(8)),
                                              "the head's hidden layer is not followed by a Linear"),
    "no bias for the last Linear, no BatchNorm to carry it": (
        lambda: pooled_head(nn.Linear(NF, 8), nn.ReLU(), nn.Linear(8, C, bias=False)),
        "the head's last Linear has no bias and no BatchNorm before it to carry one"),
    "a first BatchNorm without affine parameters": (
        lambda: pooled_head(nn.BatchNorm1d(NF, affine=False), nn.Linear(NF, C)),
        "a BatchNorm of the head has no affine parameters or no running statistics"),
    "a second BatchNorm without running statistics": (
        lambda: pooled_head(nn.Linear(NF, 8), nn.ReLU(), nn.BatchNorm1d(8, track_running_stats=False),
                            nn.Linear(8, C)),
        "a BatchNorm of the head has no affine parameters or no running statistics"),
    "3 outputs expected, 4 given": (lambda: pooled_head(nn.Linear(NF, 4)), "the head's last Linear has 4 outputs, not 3"),
}


def test_the_layout_of_a_head_that_can_hold_it_comes_with_no_reason():
    parts, why = linear_head_layout(nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(NF, C)), C)
    assert why == "" and parts["concat"] is False and parts["bn1"] is None and "linear2" not in parts


@pytest.mark.parametrize("make, why", REFUSED.values(), ids=REFUSED.keys())
def test_a_head_that_cannot_hold_it_is_named_and_left_untouched(make, why):
    _, weight, bias, mean, std, _ = problem()
    head = make()
    before = state_of(head)
    pooled = torch.randn(40, 2 * NF)
    assert write_linear_classifier(head, pooled, mean, std, weight, bias) == why
    assert same(state_of(head), before)


def test_a_later_fit_trains_the_hidden_units_the_classifier_does_not_use():
    feats, weight, bias, mean, std, _ = problem()
    head = create_head(NF, C)
    written(head, feats, weight, bias, mean, std)
    head.train()
    nn.functional.cross_entropy(head(feats), torch.arange(40) % C).backward()
    last = head[-1].weight.grad
    assert last[:, 2 * C:].abs().sum() > 0  # the zero columns of the unused units get gradients
