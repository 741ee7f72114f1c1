"""What to look at after a fit (docs/interpretation.md): `ClassificationInterpretation` (fastai's: the confusion
matrix, the most confused pairs of classes, the items with the highest loss) and `show_results` (images with
their predicted and actual labels, for every task).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..core.loop import BaseLearner
from ..core.losses import per_item_losses
from ..core.metrics import confusion_matrix
from ..core.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, decode_prediction, target_text, task_of
from ..data.preprocess import denormalize
from ..utils.files import save_figure
from ..utils.show import image_grid


def _images(learn: BaseLearner, dl: Any, indices: Iterable[int]) -> np.ndarray:
    """The inputs of items `indices` of `dl`'s dataset as displayable images (normalisation undone)."""
    data_config = getattr(learn.dls, "data_config", None)
    dataset = getattr(dl, "dataset", None)
    if data_config is None or dataset is None:
        raise TypeError("showing images needs image DataLoaders (ImageDataLoaders: their data_config says how to "
                        "undo the normalisation) over a dataset that can be indexed")
    return denormalize(torch.stack([dataset[int(i)][0] for i in indices]), data_config)


class ClassificationInterpretation:
    """The predictions of a single-label classifier on a whole labelled set, for inspection.

    `probs` `(N, C)`, `targs` `(N,)`, `losses` `(N,)` (the learner's loss per item), in the order of `dl`.
    Build it with `from_learner`."""

    def __init__(self, learn: BaseLearner, dl: Any, probs: Tensor, targs: Tensor, losses: Tensor):
        self.learn, self.dl, self.probs, self.targs, self.losses = learn, dl, probs, targs, losses
        self.preds = probs.argmax(-1)
        vocab = getattr(learn.dls, "vocab", None)
        self.vocab: list[str] = list(vocab) if vocab else [str(i) for i in range(probs.shape[-1])]

    @classmethod
    def from_learner(cls, learn: BaseLearner, dl: Optional[Any] = None) -> "ClassificationInterpretation":
        """Predict `dl` (default: the validation set) once and keep the probabilities, targets and losses."""
        task = task_of(learn.loss_func, learn.dls)
        if task != SINGLE_LABEL:
            raise ValueError(f"ClassificationInterpretation is for single-label classifiers, and this learner's task "
                             f"is {task}: use learn.show_results() to look at its predictions")
        dl = dl if dl is not None else learn.dls.valid
        raw, targs = learn.get_preds(dl, activation=False)
        if targs is None:
            raise ValueError("the data has no labels: interpretation compares predictions with labels (build the "
                             "DataLoader with labels, e.g. dls.test_dl(items, labels=...))")
        return cls(learn, dl, learn.activation(raw), targs, per_item_losses(learn.loss_func, raw, targs))

    def confusion_matrix(self) -> Tensor:
        """Counts `(C, C)`: row = actual class, column = predicted class (in vocab order)."""
        return confusion_matrix(self.preds, self.targs, self.probs.shape[-1])

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """`(actual, predicted, count)` for every pair of different classes confused at least `min_val` times,
        the most frequent first (ties in vocab order)."""
        cm = self.confusion_matrix()
        pairs = [(self.vocab[a], self.vocab[p], int(cm[a, p])) for a in range(len(cm)) for p in range(len(cm))
                 if a != p and int(cm[a, p]) >= min_val]
        return sorted(pairs, key=lambda pair: -pair[2])

    def top_losses(self, k: Optional[int] = None, largest: bool = True) -> tuple[Tensor, Tensor]:
        """`(losses, indices)` of the `k` items (all by default) with the largest (or smallest) loss."""
        k = len(self.losses) if k is None else min(k, len(self.losses))
        return self.losses.topk(k, largest=largest)

    def plot_confusion_matrix(self, normalize: bool = False, path: Union[str, Path, None] = None,
                              cmap: str = "Blues") -> Any:
        """The confusion matrix as a figure (counts, or each row divided by its total with `normalize`);
        saved to `path` when given."""
        import matplotlib.pyplot as plt
        cm = self.confusion_matrix().double()
        if normalize:
            cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
        n = len(cm)
        figure, ax = plt.subplots(figsize=(max(4.0, 0.6 * n + 2), max(4.0, 0.6 * n + 2)))
        ax.imshow(cm.numpy(), cmap=cmap)
        ax.set_xticks(range(n), self.vocab, rotation=90)
        ax.set_yticks(range(n), self.vocab)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        high = float(cm.max()) if n else 0.0
        for a in range(n):
            for p in range(n):
                value = float(cm[a, p])
                ax.text(p, a, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                        fontsize=8, color="white" if value > high / 2 else "black")
        ax.set_title("confusion matrix" + (" (normalised by row)" if normalize else ""))
        figure.tight_layout()
        if path is not None:
            save_figure(figure, path, bbox_inches="tight")
        return figure

    def plot_top_losses(self, k: int = 9, path: Union[str, Path, None] = None) -> Any:
        """The `k` items with the highest loss: image, predicted / actual class, loss, probability of the
        prediction; saved to `path` when given."""
        losses, indices = self.top_losses(k)
        titles = [f"{self.vocab[int(self.preds[i])]} / {self.vocab[int(self.targs[i])]}\n"
                  f"loss {float(loss):.2f}, p {float(self.probs[i, self.preds[i]]):.2f}"
                  for loss, i in zip(losses, indices)]
        figure = image_grid(_images(self.learn, self.dl, indices.tolist()), titles)
        figure.suptitle("predicted / actual, loss, probability of the prediction", fontsize=9)
        figure.tight_layout()
        if path is not None:
            save_figure(figure, path, bbox_inches="tight")
        return figure


@torch.no_grad()
def show_results(learn: BaseLearner, dl: Optional[Any] = None, n: int = 9,
                 path: Union[str, Path, None] = None) -> Any:
    """The first `n` items of `dl` (default: the validation set) with their prediction above their label
    (green when right, red when wrong; black for regression), as `predict` decodes them for the task; saved
    to `path` when given. Returns the matplotlib figure."""
    dl = dl if dl is not None else learn.dls.valid
    if dl is None:
        raise ValueError("no data to show: pass a dl or give DataLoaders a valid set")
    task = task_of(learn.loss_func, learn.dls)
    vocab = getattr(learn.dls, "vocab", None)
    thresh = getattr(learn.loss_func, "thresh", 0.5)
    learn.model.eval()
    images, titles, colors = [], [], []
    for batch in dl:
        if len(batch) < 2:
            raise ValueError("show_results compares predictions with labels: the data has none")
        xb, yb = learn.to_device(batch)
        with learn.autocast():
            probs = learn.activation(learn.model(*xb)).cpu()
        for i in range(min(len(probs), n - len(titles))):
            decoded = decode_prediction(task, probs[i], vocab, thresh)
            target = yb[0][i].cpu()
            predicted = target_text(task, decoded[1].long() if task == MULTI_LABEL else
                                    (probs[i] if task == REGRESSION else torch.tensor(decoded[1])), vocab)
            actual = target_text(task, target, vocab)
            titles.append(f"{predicted}\n{actual}")
            colors.append("black" if task == REGRESSION else ("green" if predicted == actual else "red"))
            images.append(xb[0][i])
        if len(titles) >= n:
            break
    data_config = getattr(learn.dls, "data_config", None)
    if data_config is None:
        raise TypeError("show_results needs image DataLoaders (ImageDataLoaders: their data_config says how to undo "
                        "the normalisation)")
    figure = image_grid(denormalize(torch.stack(images), data_config), titles, colors)
    figure.suptitle("prediction / actual", fontsize=9)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path, bbox_inches="tight")
    return figure
