"""Tests for fastfreeze/inference/interpret.py: a confusion matrix, the most confused pairs and the top losses worked out
by hand on a tiny set, and the plots of a tiny vision learner."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import FixedLogits
from fastfreeze import ClassificationInterpretation, DataLoaders, Learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.vision import vision_learner

VOCAB = ["ant", "bee", "cat"]
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 2])
PREDICTED = torch.tensor([0, 1, 1, 1, 0, 0, 2])  # wrong: item 1 (ant as bee), items 4 and 5 (cat as ant)


def fixed_learner(**kwargs):
    logits = torch.nn.functional.one_hot(PREDICTED, 3).float() * 3
    dl = DataLoader(TensorDataset(torch.arange(len(TARGETS)), TARGETS), batch_size=3)
    return Learner(FixedLogits(logits), DataLoaders(dl, dl, vocab=VOCAB), progress=False, **kwargs)


def test_confusion_matrix_most_confused_and_top_losses_by_hand():
    interp = ClassificationInterpretation.from_learner(fixed_learner())
    assert interp.confusion_matrix().tolist() == [[1, 1, 0],   # ant: 1 right, 1 taken for a bee
                                                  [0, 2, 0],   # bee: both right
                                                  [2, 0, 1]]   # cat: 2 taken for ants, 1 right
    assert interp.most_confused() == [("cat", "ant", 2), ("ant", "bee", 1)]
    assert interp.most_confused(min_val=2) == [("cat", "ant", 2)]
    # logits 3 for the predicted class, 0 elsewhere: cross-entropy log(e^3 + 2) when wrong, log(1 + 2e^-3) when right
    losses, indices = interp.top_losses(3)
    assert sorted(indices.tolist()) == [1, 4, 5]
    assert losses.tolist() == pytest.approx([math.log(math.e ** 3 + 2)] * 3, rel=1e-5)
    smallest, _ = interp.top_losses(1, largest=False)
    assert smallest.item() == pytest.approx(math.log(1 + 2 * math.exp(-3)), rel=1e-5)


def test_interpretation_needs_a_single_label_learner_with_labels():
    with pytest.raises(ValueError, match="for single-label classifiers, and this learner's task is multi_label"):
        ClassificationInterpretation.from_learner(fixed_learner(loss_func=nn.BCEWithLogitsLoss()))


def test_plots_of_a_vision_learner(tmp_path):
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    dls = ImageDataLoaders.from_arrays(x, y, x, y, size=32, bs=4, vocab=VOCAB)
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    interp = ClassificationInterpretation.from_learner(learn)
    assert int(interp.confusion_matrix().sum()) == 12
    figure = interp.plot_top_losses(4, path=tmp_path / "top.png")
    losses, indices = interp.top_losses(4)
    first = figure.axes[0].get_title()
    assert first.startswith(f"{VOCAB[int(interp.preds[indices[0]])]} / {VOCAB[y[int(indices[0])]]}")
    assert f"loss {float(losses[0]):.2f}" in first
    interp.plot_confusion_matrix(path=tmp_path / "cm.png")
    interp.plot_confusion_matrix(normalize=True)
    figure = learn.show_results(n=5, path=tmp_path / "results.png")
    preds = learn.get_preds()[0].argmax(1)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f"{VOCAB[int(p)]}\n{VOCAB[t]}" for p, t in zip(preds[:5], y[:5])]
    colors = [ax.title.get_color() for ax in figure.axes if ax.get_title()]
    assert colors == ["green" if int(p) == t else "red" for p, t in zip(preds[:5], y[:5])]
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("top.png", "cm.png", "results.png"))
