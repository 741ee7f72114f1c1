"""The default fine_tune's choice (choose='held_out'): a probe scored on a held-out fifth of the training set
decides between keeping it and the stage-wise recipe, which then runs exactly as when asked for by number;
the validation set is never read; the pieces (the item subset, the stratified slice, the probe's steps)
against hand-worked numbers."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fastfreeze.finetune.default_choice as default_choice
from helpers import same, state_of, tiny_learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.finetune.default_choice import (HOLDOUT_FRACTION, MIN_PER_CLASS_TO_FINE_TUNE,
                                                MIN_PER_CLASS_TO_MEASURE, PROBE_SEPARATES, ItemSubset,
                                                held_out_split)
from fastfreeze.finetune.linear_probe import probe_steps

N_CLASSES = 3


def image_dls(per_class, valid_seed=100, n_valid=12, size=32):
    """Random images whose class shows in their mean brightness (so that the candidates differ), labels
    round-robin; the validation set comes from its own seed."""
    n = per_class * N_CLASSES
    rng = np.random.default_rng(0)
    y = np.arange(n) % N_CLASSES
    x = (rng.integers(0, 120, (n, size, size, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    v = np.random.default_rng(valid_seed)
    yv = v.integers(0, N_CLASSES, n_valid)
    xv = (v.integers(0, 120, (n_valid, size, size, 3)) + 60 * yv[:, None, None, None]).astype(np.uint8)
    return ImageDataLoaders.from_arrays(x, y, xv, yv, size=size, bs=8, vocab=[f"c{i}" for i in range(N_CLASSES)])


# ---------------------------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------------------------
class Keys:
    """A dataset that returns the keys it is asked for."""

    def __len__(self):
        return 10

    def __getitem__(self, key):
        return key


def test_item_subset_maps_plain_and_epoch_seeded_keys_to_the_dataset_positions():
    subset = ItemSubset(Keys(), [7, 2, 5])
    assert len(subset) == 3
    assert [subset[i] for i in range(3)] == [7, 2, 5]
    assert subset[(1, 99)] == (2, 99)  # (position, epoch seed): the seed passes through
    assert subset.__getitems__([2, (0, 4)]) == [5, (7, 4)]


def test_the_held_out_slice_is_a_stratified_fifth_disjoint_from_the_fitted_items():
    # 3 classes of 10, 20 and 15 items at positions 100..144: round(10*0.2)=2, 4 and 3 held out per class
    targets = torch.tensor([0] * 10 + [1] * 20 + [2] * 15)
    positions = np.arange(100, 145)
    fitted, held = held_out_split(targets, positions)
    assert HOLDOUT_FRACTION == 0.2
    assert len(held) == 2 + 4 + 3 and len(fitted) == 45 - 9
    assert not set(fitted) & set(held) and set(fitted) | set(held) == set(positions)
    held_classes = targets[torch.as_tensor(held - 100)]
    assert torch.bincount(held_classes).tolist() == [2, 4, 3]
    assert np.array_equal(held_out_split(targets, positions)[1], held)  # seeded: the same slice every time


def test_the_probe_makes_25_passes_over_the_cached_items():
    # full-batch steps up to 512 items; above, steps of 512 random items, 25 per started 512
    assert [probe_steps(n) for n in (10, 512, 513, 1024, 2048)] == [25, 25, 50, 50, 100]


# ---------------------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------------------
PER_CLASS = MIN_PER_CLASS_TO_FINE_TUNE  # the comparison's smallest training set: 25 per class, 75 items


@pytest.mark.parametrize("threshold", [1.01, 0.0], ids=["stage-wise", "probe"])
def test_the_outcome_is_what_the_choice_says(threshold, monkeypatch, capsys):
    """A threshold above 1 no probe reaches sends it to the stage-wise recipe, whose run is then bit-identical to
    fine_tune(base_lr=<the 'auto' value>): measuring leaves the learner, its loaders and the RNG as they were.
    A threshold of 0 keeps the probe, the logistic regression (tests/test_logistic_probe.py checks its
    predictions): the body untouched, no epoch run."""
    assert PROBE_SEPARATES == 0.96
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", threshold)
    learn = tiny_learner(image_dls(PER_CLASS))
    body = state_of(learn.model.body)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.holdout_items == round(PER_CLASS * HOLDOUT_FRACTION) * N_CLASSES  # 5 of each class
    assert set(choice.scores) == {"probe"} == set(choice.losses) and 0 <= choice.scores["probe"] <= 1
    out = capsys.readouterr().out
    assert f"a probe fitted on 60 training images classifies {choice.scores['probe']:.1%} of the other 15" in out
    if threshold > 1:
        assert choice.recipe == "stagewise" and "so fastai's recipe over the stage groups" in out
        named = tiny_learner(image_dls(PER_CLASS))
        named.fine_tune(1, base_lr=learn.auto_lr["base_lr"])
        assert same(state_of(named.model), state_of(learn.model))
        assert learn.recorder.phases == named.recorder.phases
    else:
        assert choice.recipe == "probe" and choice.probe == "logistic regression" and "logistic regression" in out
        assert choice.C is not None and 0 <= choice.cv_accuracy <= 1
        assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


def test_the_comparison_never_reads_the_validation_set():
    finals = []
    for valid_seed, n_valid in [(100, 12), (200, 30)]:
        learn = tiny_learner(image_dls(PER_CLASS, valid_seed=valid_seed, n_valid=n_valid))
        learn.fine_tune(1)
        finals.append((state_of(learn.model), learn.fine_tune_choice.scores))
    assert finals[0][1] == finals[1][1]
    assert same(finals[0][0], finals[1][0])


def test_below_15_images_per_class_the_head_probe_is_kept_without_measuring():
    assert MIN_PER_CLASS_TO_MEASURE == 15
    learn = tiny_learner(image_dls(MIN_PER_CLASS_TO_MEASURE - 1))
    body = state_of(learn.model.body)
    learn.fine_tune(2)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.probe == "head" and choice.scores == {} and choice.holdout_items == 0
    assert choice.reason.startswith("14 training images per class (fewer than 25)")
    assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


@pytest.mark.parametrize("threshold", [1.01, 0.0], ids=["below", "at least"])
def test_from_15_to_24_images_per_class_the_measure_picks_the_probe(threshold, monkeypatch):
    """Too few images to fine-tune either way: when the held-out probe separates the classes, the logistic
    regression; when it does not, the head probe, as below 15 per class."""
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", threshold)
    learn = tiny_learner(image_dls(MIN_PER_CLASS_TO_FINE_TUNE - 1))  # 24 per class
    body = state_of(learn.model.body)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.holdout_items == round(24 * HOLDOUT_FRACTION) * N_CLASSES
    assert choice.probe == ("head" if threshold > 1 else "logistic regression")
    if threshold > 1:
        assert "24 training images per class are too few to fine-tune the body (fewer than 25)" in choice.reason
    assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


def test_an_unknown_chooser_is_refused_before_training():
    learn = tiny_learner(image_dls(PER_CLASS))
    with pytest.raises(ValueError, match="choose must be one of 'held_out', 'by_size', got 'best'"):
        learn.fine_tune(1, choose="best")
    assert learn.recorder.phases == []


def test_the_held_out_accuracy_is_an_exact_ratio_so_24_of_25_meets_96_percent():
    class Predicting:
        def get_preds(self, dl, activation):
            targets = torch.arange(25) % 5
            logits = nn.functional.one_hot(targets, 5).float()
            logits[:1] = logits[:1].roll(1, dims=1)  # 1 wrong: 24 right of 25
            return logits, targets

    accuracy, _ = default_choice.held_out_score(Predicting(), None)
    assert accuracy == 0.96 and accuracy >= PROBE_SEPARATES  # torch's float32 mean gives 0.959999979


def test_a_head_that_cannot_hold_the_logistic_regression_gets_the_head_probe_and_says_why(monkeypatch):
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", 0.0)
    learn = tiny_learner(image_dls(PER_CLASS), lin_ftrs=[])  # one Linear after a BatchNorm: no bias
    head = state_of(learn.model.head)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.probe == "head" and choice.C is None
    assert "the head is fitted as a probe on the cached body features (the head's only Linear has no bias)" in choice.reason
    assert not same(state_of(learn.model.head), head) and learn.recorder.phases == []


def test_a_written_head_that_does_not_reproduce_the_logistic_regression_is_put_back(monkeypatch):
    """The check on the training features: a writer that gets the head wrong is caught, the head restored to what
    it was, and the head probe fitted instead, from the same start as without the writer."""
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", 0.0)

    def wrong_writer(head, *args):
        with torch.no_grad():
            head[-1].weight.zero_()
        return ""

    reference = tiny_learner(image_dls(PER_CLASS), lin_ftrs=[])  # the head probe from the same start
    reference.fine_tune(1)
    monkeypatch.setattr(default_choice, "write_linear_classifier", wrong_writer)
    learn = tiny_learner(image_dls(PER_CLASS), lin_ftrs=[])
    monkeypatch.setattr(default_choice, "linear_head_layout", lambda head, c: ({"concat": True}, ""))
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.probe == "head" and "the head does not reproduce the logistic regression" in choice.reason
    assert same(state_of(learn.model.head), state_of(reference.model.head))
