"""Metrics: accuracy, error rate and top-k accuracy by hand, accumulated over batches weighted by their size."""
import pytest
import torch

from fastfreeze.metrics import Metric, accuracy, as_metric, error_rate, top_k, top_k_accuracy

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
