"""Tests for fastfreeze/core/tasks.py: the three tasks read from labels, encoded by hand-worked examples, and what
each implies for the loss and for predict."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastfreeze.core.losses import MultiLabelLoss
from fastfreeze.core.tasks import (MULTI_LABEL, REGRESSION, SINGLE_LABEL, decode_prediction, encode_array,
                                   encode_values, loss_for, target_text, task_of)


def test_class_names_become_a_sorted_vocab():
    t = encode_values(["dog", "cat", "dog", "bird"])
    assert t.task == SINGLE_LABEL and t.vocab == ["bird", "cat", "dog"] and t.c == 3
    assert t.targets.tolist() == [2, 1, 2, 0] and t.targets.dtype == torch.int64


def test_numbers_in_a_table_are_class_names_sorted_by_value():
    t = encode_values([10, 2, 2, 7])  # as fastai's Categorize: the distinct values, sorted
    assert t.task == SINGLE_LABEL and t.vocab == ["2", "7", "10"] and t.targets.tolist() == [2, 0, 0, 1]
    with pytest.warns(UserWarning, match=r"floats that are all whole numbers \(2 distinct values, 1 to 3\): read as "
                                         r"class names \(task='single_label'\)\. If they are numbers to predict, pass "
                                         r"task='regression'"):
        assert encode_values([1.0, 3.0]).vocab == ["1", "3"]  # integral floats (pandas) are classes too, said


def test_tags_split_at_the_delimiter_or_given_as_lists_are_multi_hot_rows():
    by_delim = encode_values(["a b", "b", "c a"], label_delim=" ")
    by_list = encode_values([["a", "b"], ("b",), ["c", "a"]])
    for t in (by_delim, by_list):
        assert t.task == MULTI_LABEL and t.vocab == ["a", "b", "c"] and t.c == 3
        assert t.targets.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_fractional_numbers_are_regression_targets():
    t = encode_values([0.5, 1.25, 3.0])
    assert t.task == REGRESSION and t.vocab is None and t.c == 1
    assert t.targets.dtype == torch.float32 and t.targets.tolist() == [[0.5], [1.25], [3.0]]
    forced = encode_values([1, 2], task="regression")
    assert forced.task == REGRESSION and forced.targets.tolist() == [[1.0], [2.0]]


def test_empty_labels_are_errors_naming_their_row():
    rows = ["row 0 (a.png)", "row 1 (b.png)", "row 2 (c.png)"]
    for empty in ("", "  ", None, float("nan")):
        with pytest.raises(ValueError, match=r"row 1 \(b.png\) has an empty label"):
            encode_values(["x", empty, "y"], rows=rows)
    with pytest.raises(ValueError, match=r"row 2 \(c.png\) has no label: every image needs at least one tag"):
        encode_values(["a b", "b", ""], label_delim=" ", rows=rows)
    allowed = encode_values(["a b", "b", ""], label_delim=" ", allow_empty=True)
    assert allowed.targets.tolist() == [[1, 1], [0, 1], [0, 0]]
    with pytest.raises(ValueError, match=r"item 1 has the label 'zebra', which is not in the vocab \['cat', 'dog'\]"):
        encode_values(["cat", "zebra"], vocab=["cat", "dog"])


def test_arrays_class_indices_multi_hot_and_regression():
    single = encode_array(np.array([2, 0, 1, 2]))
    assert single.task == SINGLE_LABEL and single.c == 3 and single.targets.tolist() == [2, 0, 1, 2]
    assert encode_array(np.array([[1], [0]])).task == SINGLE_LABEL  # a column of class indices
    multi = encode_array(np.array([[1., 0., 1.], [0., 1., 0.]]))  # floats of 0/1, as np.zeros rows filled by hand
    assert multi.task == MULTI_LABEL and multi.c == 3 and multi.targets.dtype == torch.int64
    reg = encode_array(np.array([[0.5, 2.0], [1.0, 0.0]]))
    assert reg.task == REGRESSION and reg.c == 2 and reg.targets.tolist() == [[0.5, 2.0], [1.0, 0.0]]
    assert encode_array(np.array([0.5, 1.5])).targets.tolist() == [[0.5], [1.5]]


def test_bad_arrays_are_clear_errors():
    with pytest.raises(ValueError, match=r"item 1 has no label: its multi-hot row is all zeros \(1 such rows\)"):
        encode_array(np.array([[1, 0], [0, 0], [0, 1]]))
    assert encode_array(np.array([[1, 0], [0, 0]]), allow_empty=True).targets.tolist() == [[1, 0], [0, 0]]
    with pytest.raises(TypeError, match="fractional"):
        encode_array(np.array([0.5, 1.0]), task="single_label")
    with pytest.raises(ValueError, match="item 1 has a regression target that is NaN"):
        encode_array(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="2-D array of 0s and 1s"):
        encode_array(np.array([[1, 2]]), task="multi_label")
    with pytest.raises(ValueError, match="class indices >= 0"):
        encode_array(np.array([0, -1]))
    with pytest.raises(ValueError, match="task must be 'auto' or one of"):
        encode_array(np.array([0, 1]), task="classification")


def test_each_task_has_its_loss_and_the_multi_label_loss_matches_the_formula():
    assert type(loss_for(SINGLE_LABEL)) is nn.CrossEntropyLoss
    assert type(loss_for(REGRESSION)) is nn.MSELoss
    loss = loss_for(MULTI_LABEL)
    assert isinstance(loss, MultiLabelLoss) and loss.thresh == 0.5
    # logits (0, 2), targets (1, 0) as int64: -(log sigmoid(0) + log(1 - sigmoid(2))) / 2 = (log 2 + log(1 + e^2)) / 2
    value = loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[1, 0]]))
    assert value.item() == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2, rel=1e-6)


def test_task_of_reads_the_data_then_the_loss():
    class Dls:
        task = MULTI_LABEL
    assert task_of(nn.CrossEntropyLoss(), Dls()) == MULTI_LABEL
    assert task_of(nn.BCEWithLogitsLoss()) == MULTI_LABEL
    assert task_of(nn.L1Loss()) == REGRESSION and task_of(nn.MSELoss(), None) == REGRESSION
    assert task_of(nn.NLLLoss()) == SINGLE_LABEL


def test_predictions_decoded_per_task():
    probs = torch.tensor([0.7, 0.2, 0.55])
    labels, mask, p = decode_prediction(MULTI_LABEL, probs, ["a", "b", "c"], thresh=0.5)
    assert labels == ["a", "c"] and mask.tolist() == [True, False, True] and p is probs
    assert decode_prediction(MULTI_LABEL, probs, ["a", "b", "c"], thresh=0.6)[0] == ["a"]
    assert decode_prediction(MULTI_LABEL, probs, None, thresh=0.1)[0] == [0, 1, 2]
    assert decode_prediction(SINGLE_LABEL, probs, ["a", "b", "c"])[:2] == ("a", 0)
    assert decode_prediction(REGRESSION, torch.tensor([2.5]))[0] == 2.5
    assert decode_prediction(REGRESSION, torch.tensor([2.5, -1.0]))[0] == [2.5, -1.0]
    assert target_text(MULTI_LABEL, torch.tensor([1, 0, 1]), ["a", "b", "c"]) == "a;c"
    assert target_text(REGRESSION, torch.tensor([0.123456])) == "0.123"
    assert target_text(SINGLE_LABEL, torch.tensor(1), ["a", "b"]) == "b"
