"""Losses: the supervised contrastive loss against its formula worked by hand, and the activation each loss
implies for predictions."""
import math

import pytest
import torch
import torch.nn as nn

from fastfreeze.core.losses import SupervisedContrastiveLoss, activate, activation_for


def test_supervised_contrastive_loss_on_four_items_by_hand():
    """Unit embeddings e0=(1,0), e1=(0.6,0.8), e2=(0,1), e3=(-1,0), labels 0,0,1,1, temperature 0.5.
    Cosine similarities: s01=0.6, s02=0, s03=-1, s12=0.8, s13=-0.6, s23=0. For anchor i with its one positive p:
    -(s_ip/t - log sum_{a != i} exp(s_ia/t)); the loss is the mean over the four anchors."""
    e = math.exp
    per_anchor = [
        -(1.2 - math.log(e(1.2) + e(0.0) + e(-2.0))),   # anchor 0: positive 1; others s02=0, s03=-1
        -(1.2 - math.log(e(1.2) + e(1.6) + e(-1.2))),   # anchor 1: positive 0; s12=0.8, s13=-0.6
        -(0.0 - math.log(e(0.0) + e(1.6) + e(0.0))),    # anchor 2: positive 3 (s23=0); s20=0, s21=0.8
        -(0.0 - math.log(e(-2.0) + e(-1.2) + e(0.0))),  # anchor 3: positive 2 (s32=0); s30=-1, s31=-0.6
    ]
    expected = sum(per_anchor) / 4
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss_func = SupervisedContrastiveLoss(temperature=0.5)
    assert loss_func(z, labels).item() == pytest.approx(expected, rel=1e-6)
    assert loss_func(3 * z, labels).item() == pytest.approx(expected, rel=1e-6)  # on L2-normalised embeddings
    assert expected > 0


def test_supervised_contrastive_loss_without_a_positive_pair_is_zero_and_keeps_the_graph():
    z = torch.randn(3, 4, requires_grad=True)
    loss = SupervisedContrastiveLoss()(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_activation_for_each_loss():
    assert activation_for(nn.CrossEntropyLoss()) == "softmax"
    assert activation_for(nn.BCEWithLogitsLoss()) == "sigmoid"
    assert activation_for(nn.MSELoss()) == "none" and activation_for(SupervisedContrastiveLoss()) == "none"
    out = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(activate("softmax", out), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(activate("sigmoid", out), torch.tensor([[0.5, 0.75]]))
    assert torch.equal(activate("none", out), out)
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        activate("relu", out)


def supcon_by_hand(z, labels, t):
    """The formula of losses.SupervisedContrastiveLoss written out with Python floats."""
    unit = [[v / math.hypot(*row) for v in row] for row in z]
    sim = [[sum(a * b for a, b in zip(u, w)) for w in unit] for u in unit]
    per_anchor = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if positives:
            log_denominator = math.log(sum(math.exp(sim[i][a] / t) for a in others))
            per_anchor.append(-sum(sim[i][p] / t - log_denominator for p in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def test_supervised_contrastive_loss_default_temperature_several_positives_and_lone_anchors():
    """Anchor 0 has two positives, anchor 3 none (it is left out of the mean); the default temperature 0.1."""
    z = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]]
    labels = [0, 0, 0, 1]
    expected = supcon_by_hand(z, labels, 0.1)
    loss = SupervisedContrastiveLoss()(torch.tensor(z), torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert SupervisedContrastiveLoss(0.1).temperature == SupervisedContrastiveLoss().temperature == 0.1


def test_supervised_contrastive_loss_computes_in_float32_for_half_precision_embeddings():
    """Embeddings exactly representable in bfloat16; the loss in float32 matches the formula to 1e-6, where
    bfloat16 arithmetic would be off by about 1e-2."""
    z = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5], [0.5, -2.0]]
    labels = [0, 0, 1, 1, 0]
    loss = SupervisedContrastiveLoss(0.5)(torch.tensor(z, dtype=torch.bfloat16), torch.tensor(labels))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(supcon_by_hand(z, labels, 0.5), rel=1e-6)


def test_per_item_losses_leave_the_learner_loss_alone_and_average_other_dimensions():
    from fastfreeze.core.losses import MultiLabelLoss, per_item_losses
    out = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    ce = nn.CrossEntropyLoss()
    # softmax (1/4, 3/4): item 0 of class 1 loses log(4/3), item 1 of class 1 loses log 4
    assert per_item_losses(ce, out, torch.tensor([1, 1])).tolist() == pytest.approx([math.log(4 / 3), math.log(4)])
    assert ce.reduction == "mean"
    # BCE per tag: sigmoid(0) = 1/2, sigmoid(log 3) = 3/4; item 0 targets (1, 1): (log 2 + log 4/3) / 2
    multi = per_item_losses(MultiLabelLoss(), out, torch.tensor([[1, 1], [0, 0]]))
    assert multi.tolist() == pytest.approx([(math.log(2) + math.log(4 / 3)) / 2, (math.log(4) + math.log(2)) / 2])

    def no_reduction_attribute(o, t):
        return ((o - t) ** 2).mean()
    assert per_item_losses(no_reduction_attribute, out, torch.zeros(2, 2)).tolist() == \
        pytest.approx([math.log(3.0) ** 2 / 2] * 2)


def test_per_item_losses_call_a_loss_without_reduction_on_each_item_alone():
    """Items of different losses: (1, 2) against (0, 0) gives (1 + 4) / 2, (3, 5) against (1, 1) gives
    (4 + 16) / 2; a slice of two items, or of two targets, would mix them."""
    from fastfreeze.core.losses import per_item_losses

    def squared_error(o, t):
        assert o.shape == t.shape == (1, 2)
        return ((o - t) ** 2).mean()
    out = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert per_item_losses(squared_error, out, torch.tensor([[0.0, 0.0], [1.0, 1.0]])).tolist() == [2.5, 10.0]


def test_multi_label_loss_threshold():
    from fastfreeze.core.losses import MultiLabelLoss
    assert MultiLabelLoss().thresh == 0.5 and MultiLabelLoss(thresh=0.3).thresh == 0.3
    assert MultiLabelLoss(pos_weight=torch.tensor([2.0])).pos_weight.tolist() == [2.0]
