"""The logistic-regression probe: its fit against scikit-learn's (an independent solver of the same convex
problem), the choice of C by cross-validation (the middle of equal accuracies), and the default fine_tune
keeping it: the learner then predicts what a logistic regression fitted by scikit-learn on the same features
predicts."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import fastfreeze.finetune.default_choice as default_choice
from helpers import tiny_learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.finetune.logistic_probe import (C_GRID, cross_validated_accuracy, fit_logistic_probe,
                                                fit_logistic_regression, middle_of_best, standardise)


def blobs(per_class, n_classes=3, n_feats=6, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, n_feats))
    y = np.repeat(np.arange(n_classes), per_class)
    x = centres[y] + rng.normal(0, spread, (len(y), n_feats))
    return torch.tensor(x), torch.tensor(y)


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_the_fit_is_scikit_learns_logistic_regression(C):
    """The same minimum of mean cross-entropy + ||W||^2 / (2 C n) as scikit-learn's solver run to a tight
    tolerance: the objective within 1e-8, the weights within 1e-3 of their scale (at C=10 the minimum is flat
    in some directions, where a gradient tolerance of 1e-6 leaves the weights a few 1e-4 apart)."""
    x, y = blobs(20, n_feats=30, spread=4.0)  # overlapping classes in 30 dimensions
    mean, std = standardise(x)
    xs = (x - mean) / std
    weight, bias = fit_logistic_regression(xs, y, C, 3)
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    ref_weight, ref_bias = torch.tensor(reference.coef_), torch.tensor(reference.intercept_)

    def objective(w, b):
        return float(torch.nn.functional.cross_entropy(xs @ w.T + b, y) + (w * w).sum() / (2 * C * len(y)))
    assert objective(weight, bias) - objective(ref_weight, ref_bias) < 1e-8
    scale = max(float(ref_weight.abs().max()), float(ref_bias.abs().max()), 1.0)
    assert float((weight - ref_weight).abs().max()) < 1e-3 * scale
    assert float((bias - ref_bias).abs().max()) < 1e-3 * scale


def test_standardising_uses_the_population_std_and_leaves_a_constant_feature_alone():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = standardise(x)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # sqrt(((1-2)^2 + (3-2)^2) / 2) = 1
    # float32 rounding around 1000: a relative spread of 1e-8, below a millionth of the mean
    _, std = standardise(torch.tensor([[1000.0, 4.0], [1000.00001, 8.0]], dtype=torch.float64))
    assert std.tolist() == [1.0, 2.0]


def test_cross_validation_holds_out_a_stratified_fifth_in_each_fold(monkeypatch):
    import fastfreeze.finetune.logistic_probe as lp
    held_counts = []

    def fake_fit(x, y, C, n_classes, start=None, dtype=torch.float64):
        return torch.zeros(n_classes, x.shape[1], dtype=dtype), torch.zeros(n_classes, dtype=dtype)

    monkeypatch.setattr(lp, "fit_logistic_regression", fake_fit)
    original = lp.standardise
    monkeypatch.setattr(lp, "standardise", lambda x: (held_counts.append(len(x)), original(x))[1])
    x, y = blobs(10, n_classes=2)  # 20 items, 10 per class: each fold fits 16 and holds out 2 per class
    scores = cross_validated_accuracy(x, y, 2, grid=(1.0,))
    assert held_counts == [16] * 5
    # all-zero weights tie every class; argmax picks class 0, right on the 2 class-0 items of 4 held out
    assert scores == [0.5]


def folds_by_hand(y, folds, seed):
    """The documented folds: in each class (in order of label), its items shuffled by one numpy generator
    seeded `seed`, the i-th of them in fold i % folds."""
    rng = np.random.default_rng(seed)
    part = np.zeros(len(y), dtype=int)
    for label in sorted(set(y.tolist())):
        members = rng.permutation(np.flatnonzero(y.numpy() == label))
        for i, item in enumerate(members):
            part[item] = i % folds
    return part


def test_cross_validation_is_scikit_learns_fits_scored_on_the_documented_folds():
    x, y = blobs(12, n_feats=5, spread=3.5, seed=4)  # classes overlap: accuracies differ between Cs and folds
    grid = (1e-3, 1e-1, 10.0)
    part = folds_by_hand(y, 5, seed=7)
    expected = []
    for C in grid:
        right = []
        for k in range(5):
            kept, held = part != k, part == k
            mean, std = x[kept].mean(0), x[kept].std(0, unbiased=False)
            model = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(((x[kept] - mean) / std).numpy(), y[kept])
            right.append((model.predict(((x[held] - mean) / std).numpy()) == y[held].numpy()).mean())
        expected.append(np.mean(right))
    assert cross_validated_accuracy(x, y, 3, grid, seed=7) == pytest.approx(expected, abs=1e-12)
    assert len(set(expected)) > 1  # the check can tell the Cs apart
    assert cross_validated_accuracy(x, y, 3, grid, seed=7, dtype=torch.float64) == pytest.approx(expected, abs=1e-12)
    probe = fit_logistic_probe(x, y, 3, grid, seed=7)
    assert probe.cv_accuracy == pytest.approx(max(expected), abs=1e-12) and probe.C == grid[int(np.argmax(expected))]


def test_the_cross_validation_fits_in_float32_and_the_kept_fit_in_float64(monkeypatch):
    import fastfreeze.finetune.logistic_probe as lp
    dtypes = []
    original = lp.fit_logistic_regression

    def recording_fit(x, y, C, n_classes, start=None, dtype=torch.float64):
        dtypes.append(dtype)
        return original(x, y, C, n_classes, start, dtype)

    monkeypatch.setattr(lp, "fit_logistic_regression", recording_fit)
    x, y = blobs(10, n_classes=2)
    probe = fit_logistic_probe(x, y, 2, grid=(0.1, 1.0))
    assert dtypes == [torch.float32] * 10 + [torch.float64]  # 5 folds x 2 Cs, then the kept fit
    assert probe.weight.dtype == probe.bias.dtype == torch.float64


def test_an_empty_fold_is_left_out_of_the_mean():
    # 2 classes of 3 items, 5 folds: folds 3 and 4 hold nothing out; the mean is over folds 0-2 only
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert cross_validated_accuracy(x, y, 2, grid=(10.0,)) == [1.0]


def test_among_equal_accuracies_the_middle_one_is_chosen():
    # the best accuracy at positions 3, 4, 5 (middle 4); at 1, 2, 5, 6 (two middles: the higher, 5); alone at 0
    assert middle_of_best([0.5, 0.6, 0.6, 0.9, 0.9, 0.9, 0.7]) == 4
    assert middle_of_best([0.5, 0.9, 0.9, 0.6, 0.7, 0.9, 0.9]) == 5
    assert middle_of_best([1.0, 0.9, 0.9]) == 0
    assert middle_of_best([0.1 + 0.2, 0.3, 0.2]) == 1  # 0.30000000000000004 and 0.3 tie: positions 0 and 1


def test_well_separated_classes_get_the_middle_of_the_grid():
    # every C classifies every held-out item: all 13 tie, and the 7th, 1e-1, is kept
    x, y = blobs(15, spread=0.1)
    probe = fit_logistic_probe(x, y, 3)
    assert probe.C == C_GRID[6] == pytest.approx(0.1) and probe.cv_accuracy == 1.0


def test_a_weak_penalty_is_chosen_when_a_strong_one_loses_held_out_accuracy():
    # 3 to 1 imbalance and overlapping classes: under a strong penalty the (unpenalised) bias wins and every
    # item is called the majority class (75% accuracy); a weaker penalty finds the minority class
    rng = np.random.default_rng(1)
    y = np.array([0] * 30 + [1] * 10)
    x = rng.normal(0, 1, (40, 2))
    x[:, 0] += 2.5 * y
    x, y = torch.tensor(x), torch.tensor(y)
    accuracy = cross_validated_accuracy(x, y, 2)
    assert accuracy[0] == pytest.approx(0.75)
    # the best, 92.5% (37 of 40), from C = 1 (position 9) to 100: the higher of the two middle ones, 31.6
    assert accuracy[9:] == pytest.approx([0.925] * 4) and all(a < 0.925 for a in accuracy[:9])
    probe = fit_logistic_probe(x, y, 2)
    assert probe.C == C_GRID[11] == pytest.approx(10 ** 1.5) and probe.cv_accuracy == pytest.approx(0.925)


def test_too_few_items_of_a_class_for_cross_validation_are_refused():
    x, y = blobs(4)
    with pytest.raises(ValueError, match="a class has 4 items: choosing C by 5-fold cross-validation needs at least 5"):
        fit_logistic_probe(x, y, 3)
    x, y = blobs(6)
    with pytest.raises(ValueError, match="a class has 1 items"):
        fit_logistic_probe(x[:13], y[:13], 3)  # 6, 6 and 1
    x, y = blobs(5)
    assert fit_logistic_probe(x, y, 3).C in C_GRID  # 5 per class: enough
    assert fit_logistic_probe(x, y, 4).weight.shape == (4, 6)  # a class with no items at all is not refused


def test_the_kept_probe_predicts_what_scikit_learn_fits_on_the_same_features(monkeypatch):
    """End to end: the default fine_tune keeps the logistic regression (the threshold set to 0); its predictions on
    the validation set are those of scikit-learn's LogisticRegression with the same C, fitted on the
    average-pooled body features of the training images made without augmentation."""
    monkeypatch.setattr(default_choice, "PROBE_SEPARATES", 0.0)
    rng = np.random.default_rng(0)
    y = np.arange(75) % 3
    x = (rng.integers(0, 120, (75, 32, 32, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    yv = np.arange(12) % 3
    xv = (rng.integers(0, 120, (12, 32, 32, 3)) + 60 * yv[:, None, None, None]).astype(np.uint8)
    dls = ImageDataLoaders.from_arrays(x, y, xv, yv, size=32, bs=8, augment=True, vocab=["a", "b", "c"])
    learn = tiny_learner(dls)
    body = learn.model.body
    learn.fine_tune(1)
    choice = learn.fine_tune_choice
    assert choice.probe == "logistic regression"

    def averages(dl):
        body.eval()
        with torch.no_grad():
            return torch.cat([body(xb).double().mean(dim=(2, 3)) for xb, *_ in dl])
    train = averages(dls.test_dl(x))  # the training images as validation images are made: no flips
    valid = averages(dls.test_dl(xv))
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std[std == 0] = 1  # a constant feature (a channel the random body never fires) is left as it is
    reference = LogisticRegression(C=choice.C, tol=1e-10, max_iter=10_000).fit(((train - mean) / std).numpy(), y)
    expected = reference.predict_proba(((valid - mean) / std).numpy())
    probs, _ = learn.get_preds(dl=dls.test_dl(xv, yv))
    assert np.abs(probs.double().numpy() - expected).max() < 1e-3
