"""The default fine_tune's choice (choose='held_out'): the cross-validated accuracy of a logistic regression of
the training images' features decides between keeping it and the stage-wise recipe, which then runs exactly
as when asked for by number; the validation set is never read; the pieces (the item subset, the average
pooling, the probe's steps) against hand-worked numbers."""
import numpy as np
import pytest
import torch

import fastfreeze.finetune.default_choice as default_choice
from helpers import same, state_of, tiny_learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.finetune.default_choice import (MIN_PER_CLASS_TO_FINE_TUNE, MIN_PER_CLASS_TO_MEASURE,
                                                PROBE_SEPARATES, FEW_PROBE_SEPARATES, ItemSubset,
                                                average_pooled, separation_needed)
from fastfreeze.finetune.linear_probe import probe_steps
from fastfreeze.finetune.logistic_probe import C_GRID, cross_validated_accuracy

N_CLASSES = 3


def image_arrays(per_class, size=32):
    """The training images and labels `image_dls` builds."""
    n = per_class * N_CLASSES
    rng = np.random.default_rng(0)
    y = np.arange(n) % N_CLASSES
    return (rng.integers(0, 120, (n, size, size, 3)) + 60 * y[:, None, None, None]).astype(np.uint8), y


def image_dls(per_class, valid_seed=100, n_valid=12, size=32):
    """Random images whose class shows in their mean brightness (so that the candidates differ), labels
    round-robin; the validation set comes from its own seed."""
    x, y = image_arrays(per_class, size)
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


def test_average_pooling_takes_the_mean_over_the_spatial_positions_and_leaves_pooled_features():
    spatial = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)  # channel k of item i: 4 values
    # item 0, channel 0 holds 0, 1, 2, 3 (mean 1.5); each channel on is 4 higher, each item 12
    expected = torch.tensor([[1.5, 5.5, 9.5], [13.5, 17.5, 21.5]])
    assert torch.equal(average_pooled(spatial), expected) and average_pooled(spatial).dtype == torch.float32
    pooled = torch.tensor([[1.0, 2.0]], dtype=torch.float16)
    assert torch.equal(average_pooled(pooled), torch.tensor([[1.0, 2.0]]))


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
    assert PROBE_SEPARATES == 0.955
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", threshold)
    learn = tiny_learner(image_dls(PER_CLASS))
    body = state_of(learn.model.body)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.sampled_items == PER_CLASS * N_CLASSES and choice.C in C_GRID and 0 <= choice.cv_accuracy <= 1
    out = capsys.readouterr().out
    assert (f"a logistic regression of the body's features classifies {choice.cv_accuracy:.1%} of the held-out "
            "folds of 75 training images") in out
    assert (f"(C={choice.C:.3g} chosen by 5-fold cross-validation, " in out) == (threshold == 0.0)  # when kept
    if threshold > 1:
        assert choice.recipe == "stagewise" and "so fastai's recipe over the stage groups" in out
        named = tiny_learner(image_dls(PER_CLASS))
        named.fine_tune(1, base_lr=learn.auto_lr["base_lr"])
        assert same(state_of(named.model), state_of(learn.model))
        assert learn.recorder.phases == named.recorder.phases
    else:
        assert choice.recipe == "probe" and choice.probe == "logistic regression" and "logistic regression" in out
        assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


def test_the_measure_is_the_cross_validated_accuracy_on_the_un_augmented_training_features():
    """Worked out apart from the choice: the body's features of the training images preprocessed as validation
    images are (no augmentation), averaged over positions, then 5-fold cross-validation over the C grid."""
    learn = tiny_learner(image_dls(PER_CLASS))
    x, y = image_arrays(PER_CLASS)
    body = learn.model.body.eval()
    with torch.no_grad():
        feats = torch.cat([body(xb.to(learn.device)).mean(dim=(2, 3)) for xb, *_ in learn.dls.test_dl(x)])
    expected = max(cross_validated_accuracy(feats.cpu(), torch.as_tensor(y), N_CLASSES))
    learn.fine_tune(1)
    assert learn.fine_tune_choice.cv_accuracy == pytest.approx(expected, abs=1e-12)


def test_the_comparison_never_reads_the_validation_set():
    finals = []
    for valid_seed, n_valid in [(100, 12), (200, 30)]:
        learn = tiny_learner(image_dls(PER_CLASS, valid_seed=valid_seed, n_valid=n_valid))
        learn.fine_tune(1)
        choice = learn.fine_tune_choice
        finals.append((state_of(learn.model), (choice.recipe, choice.C, choice.cv_accuracy)))
    assert finals[0][1] == finals[1][1]
    assert same(finals[0][0], finals[1][0])


def test_below_15_images_per_class_the_head_probe_is_kept_without_measuring():
    assert MIN_PER_CLASS_TO_MEASURE == 15
    learn = tiny_learner(image_dls(MIN_PER_CLASS_TO_MEASURE - 1))
    body = state_of(learn.model.body)
    learn.fine_tune(2)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.probe == "head" and choice.cv_accuracy is None
    assert choice.sampled_items == 0 and choice.C is None
    assert choice.reason.startswith("14 training images per class (fewer than 25)")
    assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


@pytest.mark.parametrize("threshold", [1.01, 0.0], ids=["below", "at least"])
def test_from_15_to_24_images_per_class_the_measure_picks_the_probe(threshold, monkeypatch):
    """Too few images to fine-tune either way: when the cross-validated regression separates the classes, it
    is kept; when it does not, the head probe, as below 15 per class."""
    monkeypatch.setattr(default_choice, "FEW_PROBE_SEPARATES", threshold)
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", 1 - threshold)  # not the bar below 25 per class
    learn = tiny_learner(image_dls(MIN_PER_CLASS_TO_FINE_TUNE - 1))  # 24 per class
    body = state_of(learn.model.body)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.sampled_items == 24 * N_CLASSES
    assert choice.probe == ("head" if threshold > 1 else "logistic regression")
    if threshold > 1:
        assert "24 training images per class are too few to fine-tune the body (fewer than 25)" in choice.reason
    assert learn.recorder.phases == [] and same(state_of(learn.model.body), body)


def test_a_class_too_small_to_cross_validate_falls_back_to_the_rule_by_size_and_says_why():
    """25 per class but one class with 4 images: 5-fold cross-validation cannot hold one of them out in every
    fold, so nothing is measured and the stage-wise recipe runs (the rule by size), the reason saying so."""
    x, y = image_arrays(36)  # 36 of classes 0 and 1, 4 of class 2: 76 images, 25.3 per class
    keep = np.flatnonzero(y != 2).tolist() + np.flatnonzero(y == 2)[:4].tolist()
    xv, yv = image_arrays(4)
    dls = ImageDataLoaders.from_arrays(x[keep], y[keep], xv, yv, size=32, bs=8,
                                       vocab=[f"c{i}" for i in range(N_CLASSES)])
    learn = tiny_learner(dls)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.cv_accuracy is None and choice.recipe == "stagewise"
    assert choice.reason.startswith("a class has 4 of the sampled training images, fewer than the 5 "
                                    "cross-validation needs, so the features are not measured: ")


def test_the_bar_is_lower_where_the_alternative_is_the_head_probe():
    assert (FEW_PROBE_SEPARATES, PROBE_SEPARATES) == (0.895, 0.955)
    assert [separation_needed(n) for n in (15, 24.9, 25, 300)] == [0.895, 0.895, 0.955, 0.955]


def test_an_unknown_chooser_is_refused_before_training():
    learn = tiny_learner(image_dls(PER_CLASS))
    with pytest.raises(ValueError, match="choose must be one of 'held_out', 'by_size', got 'best'"):
        learn.fine_tune(1, choose="best")
    assert learn.recorder.phases == []


def test_a_head_that_cannot_hold_the_logistic_regression_gets_the_head_probe_and_says_why(monkeypatch):
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", 0.0)
    learn = tiny_learner(image_dls(PER_CLASS), lin_ftrs=[])  # one Linear after a BatchNorm: no bias
    head = state_of(learn.model.head)
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.recipe == "probe" and choice.probe == "head" and choice.cv_accuracy is not None  # measured, not kept
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
