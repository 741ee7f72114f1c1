"""Metrics: accuracy, error rate and top-k accuracy by hand, accumulated over batches weighted by their size;
whole-set metrics against scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from helpers import FixedLogits
from fastfreeze import DataLoaders, Learner
from fastfreeze.core.metrics import (APScoreMulti, BalancedAccuracy, F1Score, F1ScoreMulti, Metric, RocAuc,
                                     accumulated_value, accuracy, accuracy_multi, as_metric, confusion_matrix,
                                     error_rate, metric_name, top_k, top_k_accuracy)

PRED = torch.tensor([[0.1, 0.7, 0.2],    # argmax 1, ranking 1 > 2 > 0
                     [0.5, 0.3, 0.2],    # argmax 0, ranking 0 > 1 > 2
                     [0.2, 0.3, 0.5],    # argmax 2, ranking 2 > 1 > 0
                     [0.3, 0.4, 0.3]])   # argmax 1
TARG = torch.tensor([1, 2, 0, 1])        # right, wrong (2 ranked 3rd), wrong (0 ranked 3rd), right


def test_accuracy_error_rate_and_top_k_by_hand():
    assert accuracy(PRED, TARG).item() == pytest.approx(0.5)
    assert error_rate(PRED, TARG).item() == pytest.approx(0.5)
    assert accuracy(PRED[:3], TARG[:3]).item() == pytest.approx(1 / 3)  # not symmetric: 1 right of 3
    assert error_rate(PRED[:3], TARG[:3]).item() == pytest.approx(2 / 3)
    assert top_k_accuracy(PRED, TARG, k=2).item() == pytest.approx(0.5)  # the two misses are ranked third
    assert top_k_accuracy(PRED, TARG, k=3).item() == pytest.approx(1.0)
    assert top_k(2).__name__ == "top_2_accuracy" and top_k(2)(PRED, TARG).item() == pytest.approx(0.5)


def test_metric_is_the_mean_over_items_not_over_batches():
    m = as_metric(accuracy)
    assert isinstance(m, Metric) and m.name == "accuracy" and as_metric(m) is m
    m.accumulate(PRED[:3], TARG[:3])  # 1 right of 3
    m.accumulate(PRED[3:], TARG[3:])  # 1 right of 1
    assert m.value == pytest.approx(2 / 4)  # the mean of batch means would be 2/3
    m.reset()
    assert m.count == 0 and m.value != m.value  # nan before any batch


# ------------------------------------------------------------------------------------------------ whole-set metrics

# 6 items in batches of 4 and 2. Whole set: class 0 has tp 2, fp 1, fn 1 and class 1 the same: F1 2/3 each,
# macro 2/3. Batch 1 (targets 0 0 0 1, predicted 0 0 1 1): F1 4/5 and 2/3; batch 2 (targets 1 1, predicted 0 1):
# F1 0 and 2/3. Size-weighted mean of the batch values: (4 * 11/15 + 2 * 1/3) / 6 = 0.6, not 2/3.
TARGETS = torch.tensor([0, 0, 0, 1, 1, 1])
PREDICTED = torch.tensor([0, 0, 1, 1, 0, 1])


def fixed_learner(logits, targets, bs, **kwargs):
    valid = DataLoader(TensorDataset(torch.arange(len(targets)), targets), batch_size=bs)
    return Learner(FixedLogits(logits), DataLoaders(valid, valid), progress=False, **kwargs)


def batch_f1(pred, targ):
    return torch.tensor(f1_score(targ.numpy(), pred.argmax(-1).numpy(), average="macro", labels=[0, 1],
                                 zero_division=0))


def test_whole_set_f1_is_not_the_mean_of_batch_values_and_the_learner_reports_the_whole_set():
    logits = torch.nn.functional.one_hot(PREDICTED, 2).float() * 3
    assert f1_score(TARGETS, PREDICTED, average="macro") == pytest.approx(2 / 3)  # the oracle agrees by hand
    learn = fixed_learner(logits, TARGETS, bs=4, metrics=[batch_f1, F1Score(), BalancedAccuracy()])
    _, per_batch, whole, balanced = learn.validate()
    assert per_batch == pytest.approx(0.6) and whole == pytest.approx(2 / 3)
    assert balanced == pytest.approx(balanced_accuracy_score(TARGETS, PREDICTED))
    assert learn.recorder.metric_names == ["train_loss", "valid_loss", "batch_f1", "f1_score", "balanced_accuracy"]


def test_torchmetrics_objects_are_whole_set_metrics_named_after_their_class():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
    logits = torch.nn.functional.one_hot(PREDICTED, 2).float() * 3
    learn = fixed_learner(logits, TARGETS, bs=4, metrics=[MulticlassF1Score(num_classes=2, average="macro"),
                                                          MulticlassAccuracy(num_classes=2, average="micro")])
    assert learn.validate()[1:] == pytest.approx([2 / 3, 4 / 6])
    assert learn.recorder.metric_names[2:] == ["multiclass_f1_score", "multiclass_accuracy"]
    assert learn.validate()[1:] == pytest.approx([2 / 3, 4 / 6])  # reset between validations


def test_built_in_whole_set_metrics_against_scikit_learn():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(60, 4, generator=g), 1)
    targ = torch.randint(0, 4, (60,), generator=g)
    for metric, expected in [(F1Score(), f1_score(targ, probs.argmax(1), average="macro")),
                             (BalancedAccuracy(), balanced_accuracy_score(targ, probs.argmax(1))),
                             (RocAuc(), roc_auc_score(targ, probs, multi_class="ovr", average="macro"))]:
        metric.update(probs[:25], targ[:25])
        metric.update(probs[25:], targ[25:])
        assert metric.compute() == pytest.approx(expected, abs=1e-6), metric
    binary = torch.softmax(torch.randn(30, 2, generator=g), 1)
    binary_targ = torch.arange(30) % 2
    auc = RocAuc()
    auc.update(binary, binary_targ)
    assert auc.compute() == pytest.approx(roc_auc_score(binary_targ, binary[:, 1]), abs=1e-6)
    multi_probs = torch.rand(40, 3, generator=g)
    multi_targ = (torch.rand(40, 3, generator=g) > 0.5).long()
    for metric, expected in [(F1ScoreMulti(0.4), f1_score(multi_targ, (multi_probs > 0.4).long(), average="macro")),
                             (APScoreMulti(), average_precision_score(multi_targ, multi_probs, average="macro"))]:
        metric.update(multi_probs, multi_targ)
        assert metric.compute() == pytest.approx(expected, abs=1e-6), metric
    assert F1Score().compute() != F1Score().compute()  # nan before any batch


def test_accuracy_multi_and_the_confusion_matrix_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.1], [-3.0, 1.0, -0.1]])  # probabilities 0.88 0.27 0.52 / 0.05 0.73 0.48
    targ = torch.tensor([[1, 0, 0], [0, 1, 1]])
    assert accuracy_multi(logits, targ).item() == pytest.approx(4 / 6)  # wrong: (0, 2) and (1, 2)
    assert accuracy_multi(logits, targ, thresh=0.6).item() == pytest.approx(5 / 6)  # (0, 2) becomes right
    assert accuracy_multi(logits.sigmoid(), targ, sigmoid=False).item() == pytest.approx(4 / 6)
    cm = confusion_matrix(PREDICTED, TARGETS, 2)
    assert cm.tolist() == [[2, 1], [1, 2]]  # rows actual, columns predicted


def test_gathering_over_ranks_and_what_cannot_be_combined():
    mine, theirs = (torch.nn.functional.one_hot(PREDICTED[:4], 2).float(), TARGETS[:4]), \
        (torch.nn.functional.one_hot(PREDICTED[4:], 2).float(), TARGETS[4:])
    f1 = F1Score()
    f1.update(*mine)
    assert f1.compute() == pytest.approx(11 / 15)  # this rank's share alone
    assert accumulated_value(f1, gather=lambda obj: [obj, theirs]) == pytest.approx(2 / 3)  # the whole set

    class Mine:
        def reset(self):
            pass

        def update(self, p, t):
            pass

        def compute(self):
            return torch.tensor([0.5, 0.5])
    with pytest.raises(TypeError, match="metric mine .* cannot be combined over processes"):
        accumulated_value(Mine(), gather=lambda obj: [obj])
    with pytest.raises(TypeError, match=r"metric mine computed \(2,\), not one number"):
        accumulated_value(Mine())
    assert metric_name(Mine()) == "mine" and np.isnan(accumulated_value(F1Score()))
