"""A logistic-regression probe: the linear probe of transfer-learning papers, fitted properly.

On the body's average-pooled features of the training images, standardised (each feature to mean 0 and
standard deviation 1 over the training items), a multinomial logistic regression with an L2 penalty on the
weights (not the biases) minimises

    mean over items of cross-entropy  +  ||W||^2 / (2 C n)

(n items; the same minimum as `0.5 ||W||^2 + C * sum of cross-entropies`, scikit-learn's parametrisation).
`C` is chosen from `C_GRID` by `FOLDS`-fold stratified cross-validation on the training items: the C with the
best mean held-out accuracy, and among equal accuracies the middle one (`middle_of_best`: when several
classify the held-out items equally well, as when the classes separate and accuracy plateaus over a range of C,
the middle of that range is the farthest from both its ends, where the penalty starts to under- or over-fit;
docs/few-shot.md compares it with the plateau's strongest penalty and its weakest). The problem is convex, so
any solver that converges finds the same weights; this one runs full-batch L-BFGS, warm-started along the
grid. The kept fit runs in float64. The cross-validation's 65 fits run in float32 (`CV_DTYPE`), 6 times faster
on 2,048 Fashion-MNIST images (they stop at float32's resolution instead of grinding on to 1e-6 in float64); on
the body features of 45 runs of docs/few-shot.md's sweep the best accuracy was the same on 43 and moved by 0.1
and 0.5 point on two digit runs, and the chosen C moved one grid step on 3.

The default `fine_tune` keeps this probe when the pretrained features already separate the classes
(`default_choice`, docs/few-shot.md), written exactly into the model's head (`models.linear_head`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


# C from 1e-4 to 1e2, two values a decade
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))
FOLDS = 5
# L-BFGS stops when the largest gradient entry of the objective falls below this, or after MAX_ITER iterations
GRAD_TOLERANCE, MAX_ITER = 1e-6, 500
# the cross-validation's fits run in float32, the kept fit in float64 (the module docstring)
CV_DTYPE = torch.float32


@dataclass
class LogisticProbe:
    """A fitted probe: `logits = ((x - mean) / std) @ weight.T + bias` for average-pooled features `x`
    (float64 tensors: `mean`, `std` of shape (F,), `weight` (classes, F), `bias` (classes,)). `C` the chosen
    penalty, `cv_accuracy` its mean held-out accuracy over the folds (None when it was not chosen by
    cross-validation)."""
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    cv_accuracy: Optional[float] = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight.T + self.bias


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each feature over the items (population std). A constant feature, or one that varies by
    less than a millionth of its mean (float32 rounding), gets std 1: it is left unscaled, not blown up."""
    x = x.double()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6 * mean.abs(), std, torch.ones_like(std))


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, C: float, n_classes: int,
                            start: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                            dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimising the module docstring's objective on standardised features `x` (n, F) and class
    indices `y`, from `start` (zeros when None), computed in `dtype`."""
    x = x.to(dtype)
    n = len(y)
    weight = (start[0].clone() if start else torch.zeros(n_classes, x.shape[1], dtype=dtype)).requires_grad_()
    bias = (start[1].clone() if start else torch.zeros(n_classes, dtype=dtype)).requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=MAX_ITER, tolerance_grad=GRAD_TOLERANCE,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + (weight * weight).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weight.detach(), bias.detach()


def cross_validated_accuracy(x: torch.Tensor, y: torch.Tensor, n_classes: int, grid: tuple[float, ...] = C_GRID,
                             folds: int = FOLDS, seed: int = 0, dtype: torch.dtype = CV_DTYPE) -> list[float]:
    """The mean held-out accuracy of each C in `grid` over `folds` stratified folds of the items (seeded):
    fold k holds out, in each class, the k-th of `folds` near-equal parts of its shuffled items. The fits run in
    `dtype` (`CV_DTYPE`: the module docstring)."""
    y_np = y.cpu().numpy()
    rng = np.random.default_rng(seed)
    part = np.empty(len(y_np), dtype=np.int64)
    for label in np.unique(y_np):
        members = rng.permutation(np.flatnonzero(y_np == label))
        part[members] = np.arange(len(members)) % folds
    scores = []  # one row per fold that holds out items (a fold is empty when every class has fewer items)
    for k in range(folds):
        held, kept = torch.from_numpy(part == k), torch.from_numpy(part != k)
        if not held.any():
            continue
        scores.append(np.zeros(len(grid)))
        mean, std = standardise(x[kept])
        xk, xh = ((x[kept].double() - mean) / std).to(dtype), ((x[held].double() - mean) / std).to(dtype)
        start = None
        for j, C in enumerate(grid):  # from the strongest penalty up, each fit starting from the one before
            start = fit_logistic_regression(xk, y[kept], C, n_classes, start, dtype)
            scores[-1][j] = ((xh @ start[0].T + start[1]).argmax(dim=1) == y[held]).double().mean().item()
    return np.mean(scores, axis=0).tolist()


def fewest_per_class(y: torch.Tensor, n_classes: int) -> int:
    """The fewest items of a class present in `y` (classes with none are not counted): cross-validation needs
    at least `FOLDS` of each."""
    counts = torch.bincount(y, minlength=n_classes)
    return int(counts[counts > 0].min())


def middle_of_best(accuracy: list[float]) -> int:
    """The grid position of the C to keep: among the positions with the best accuracy, the middle one (the
    higher of the two middle ones when their number is even). Accuracies within 1e-9 of the best tie with it:
    two means of the same fold accuracies summed in another order may differ in the last bit."""
    best = np.flatnonzero(np.asarray(accuracy) >= max(accuracy) - 1e-9)
    return int(best[len(best) // 2])


def fit_logistic_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, grid: tuple[float, ...] = C_GRID,
                       folds: int = FOLDS, seed: int = 0) -> LogisticProbe:
    """The probe on average-pooled features `x` (n, F) with class indices `y`: C by cross-validation (the module
    docstring), then refitted on all the items. Every class needs at least `folds` items."""
    fewest = fewest_per_class(y, n_classes)
    if fewest < folds:
        raise ValueError(f"a class has {fewest} items: choosing C by {folds}-fold cross-validation needs at least "
                         f"{folds} per class")
    accuracy = cross_validated_accuracy(x, y, n_classes, grid, folds, seed)
    best = middle_of_best(accuracy)
    mean, std = standardise(x)
    weight, bias = fit_logistic_regression((x.double() - mean) / std, y, grid[best], n_classes)
    return LogisticProbe(mean, std, weight, bias, grid[best], accuracy[best])
