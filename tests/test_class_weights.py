"""`vision_learner(..., class_weights=...)` (core/losses.py, docs/imbalance.md): the weights from class counts
worked out by hand (scikit-learn's 'balanced' formula; negatives/positives for multi-label), loss values by hand,
the refusals, and predictions that the weights leave alone (export included)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastfreeze import ImageDataLoaders
from fastfreeze.core.losses import MultiLabelLoss, balanced_class_weights, class_weighted_loss
from fastfreeze.inference.predictor import load_learner
from helpers import tiny_learner

X = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)


def counts_6_2_dls():
    """8 training images: 6 of class 'a', 2 of class 'b'; 4 validation images."""
    return ImageDataLoaders.from_arrays(X[:8], [0] * 6 + [1] * 2, X[8:], [0, 1, 0, 1], vocab=["a", "b"], size=16,
                                        bs=4)


def test_balanced_weights_from_counts_6_and_2_are_8_over_2x6_and_8_over_2x2():
    learn = tiny_learner(counts_6_2_dls(), class_weights="balanced")
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)
    assert learn.loss_func.weight.tolist() == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])  # [0.667, 2.0]
    # three classes, counts [5, 3, 2] of 10: 10 / (3 * count)
    assert balanced_class_weights(torch.tensor([5, 3, 2])).tolist() == pytest.approx([10 / 15, 10 / 9, 10 / 6])
    assert balanced_class_weights(torch.tensor([4, 4])).tolist() == [1.0, 1.0]


def test_the_weighted_loss_of_a_two_item_batch_by_hand():
    """torch's weighted mean: (w_a * nll_1 + w_b * nll_2) / (w_a + w_b), with nll = log(1 + e^(-margin))
    for two logits."""
    learn = tiny_learner(counts_6_2_dls(), class_weights="balanced")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w_a, w_b = 8 / 12, 8 / 4
    nll_1, nll_2 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    expected = (w_a * nll_1 + w_b * nll_2) / (w_a + w_b)
    assert learn.loss_func(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    unweighted = (nll_1 + nll_2) / 2  # the plain loss differs: the weights do act
    assert abs(expected - unweighted) > 0.04


def test_multi_label_balanced_is_pos_weight_negatives_over_positives_with_the_loss_by_hand():
    """4 training items; tag 0 on 1 of them, tag 1 on 3: pos_weight [3/1, 1/3]. One item, logits (0, 1),
    tags (1, 0): BCE = mean(-3 * log(sigmoid(0)), -log(1 - sigmoid(1)))."""
    y = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])
    dls = ImageDataLoaders.from_arrays(X[:4], y, X[4:6], np.array([[1, 0], [0, 1]]), vocab=["cat", "dog"], size=16,
                                       bs=2)
    learn = tiny_learner(dls, class_weights="balanced")
    assert isinstance(learn.loss_func, MultiLabelLoss)
    assert learn.loss_func.pos_weight.tolist() == pytest.approx([3.0, 1 / 3])
    expected = (-3 * math.log(0.5) - math.log(1 - 1 / (1 + math.exp(-1)))) / 2
    loss = learn.loss_func(torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_given_as_a_list_or_a_tensor_are_used_as_they_are():
    learn = tiny_learner(counts_6_2_dls(), class_weights=[1.0, 4.0])
    assert learn.loss_func.weight.tolist() == [1.0, 4.0]
    learn = tiny_learner(counts_6_2_dls(), class_weights=torch.tensor([0.5, 1.5]))
    assert learn.loss_func.weight.tolist() == [0.5, 1.5]


def test_class_weights_refusals_say_what_to_do():
    three = ImageDataLoaders.from_arrays(X[:8], [0] * 6 + [1] * 2, X[8:], [0, 1, 0, 1], vocab=["a", "b", "c"],
                                         size=16, bs=4)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no training item.*add training items"):
        tiny_learner(three, class_weights="balanced")
    with pytest.raises(ValueError, match="3 class weights for a model with 2 outputs: give one weight per class"):
        tiny_learner(counts_6_2_dls(), class_weights=[1, 2, 3])
    with pytest.raises(ValueError, match="finite, non-negative and not all zero"):
        tiny_learner(counts_6_2_dls(), class_weights=[1, -2])
    with pytest.raises(ValueError, match="must be 'balanced' or one weight per class"):
        tiny_learner(counts_6_2_dls(), class_weights="inverse")
    with pytest.raises(ValueError, match="give either class_weights= or loss_func="):
        tiny_learner(counts_6_2_dls(), class_weights="balanced", loss_func=nn.CrossEntropyLoss())
    regression = ImageDataLoaders.from_arrays(X[:8], np.linspace(0, 1, 8), X[8:], np.linspace(0, 1, 4), size=16,
                                              bs=4)
    with pytest.raises(ValueError, match="regression task: drop class_weights"):
        tiny_learner(regression, class_weights="balanced")
    always = np.array([[1, 1], [1, 0], [1, 1], [1, 0]])  # tag 0 on every item: no negatives to weigh against
    with pytest.raises(ValueError, match=r"tag\(s\) \[0\] are on every training item"):
        class_weighted_loss("balanced", torch.tensor(always), 2, multi_label=True)


def test_balanced_counts_only_the_training_items_of_a_valid_pct_split():
    """from_arrays with valid_pct: 'balanced' counts the training items only (10 of class 0, 5 of class 1 after
    a stratified 0.2 split of 12 and 6: round(2.4) = 2 and round(1.2) = 1 go to validation)."""
    x = np.random.default_rng(1).integers(0, 256, (18, 16, 16, 3), dtype=np.uint8)
    dls = ImageDataLoaders.from_arrays(x, [0] * 12 + [1] * 6, valid_pct=0.2, size=16, bs=4)
    learn = tiny_learner(dls, class_weights="balanced")
    assert learn.loss_func.weight.tolist() == pytest.approx([15 / (2 * 10), 15 / (2 * 5)])


def test_class_weights_change_training_but_not_prediction_or_export(tmp_path):
    weighted = tiny_learner(counts_6_2_dls(), class_weights="balanced")
    plain = tiny_learner(counts_6_2_dls())
    image = X[9]
    assert torch.equal(weighted.predict(image)[2], plain.predict(image)[2])  # same initial model, same outputs
    weighted.fit(1, 1e-2)
    plain.fit(1, 1e-2)
    assert not torch.equal(weighted.model.head[-1].weight, plain.model.head[-1].weight)
    weighted.export(tmp_path / "export")
    loaded = load_learner(tmp_path / "export")
    assert torch.allclose(loaded.predict(image)[2], weighted.predict(image)[2], atol=1e-6)

