"""Losses beyond torch's own (a supervised contrastive loss for projection heads, docs/head.md; the multi-label
loss, docs/tasks.md), losses weighted per class for imbalanced classes (docs/imbalance.md), the activation a
loss implies for predictions, and the loss of each item."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class SupervisedContrastiveLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., 2020) on L2-normalised embeddings.

    For each anchor i with at least one other item of its class in the batch:
    `-mean_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )`, with `s` the cosine similarity and
    `t` the temperature; the loss is the mean over such anchors (0 when the batch has no positive pair).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings.float(), dim=-1)
        logits = z @ z.T / self.temperature
        n = z.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positives.sum(1)
        has_pos = n_pos > 0
        if not has_pos.any():
            return embeddings.sum() * 0.0
        pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
        return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()


class MultiLabelLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on the logits for multi-label targets (multi-hot rows of 0s and 1s, any integer or
    float dtype: cast to the outputs' dtype here, as fastai's `BCEWithLogitsLossFlat` does). `thresh` is the
    probability above which `predict` reports a tag."""

    def __init__(self, thresh: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.thresh = thresh

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, target.to(input.dtype))


# -------------------------------------------------------------------------------------------------
# what a loss implies for predictions
# -------------------------------------------------------------------------------------------------
ACTIVATIONS = ("softmax", "sigmoid", "none")


def activation_for(loss_func: object) -> str:
    """The activation that turns raw outputs into predictions for `loss_func`: 'softmax' for cross-entropy,
    'sigmoid' for BCE with logits, 'none' for anything else (regression, embeddings)."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return "softmax"
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        return "sigmoid"
    return "none"


def activate(activation: str, out: torch.Tensor) -> torch.Tensor:
    """Apply an activation named by `activation_for` to raw outputs (in float32)."""
    if activation == "softmax":
        return torch.softmax(out.float(), dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(out.float())
    if activation == "none":
        return out.float()
    raise ValueError(f"unknown activation {activation!r}: one of {ACTIVATIONS}")


def per_item_losses(loss_func: object, out: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """The loss of every item, `(N,)`, in float32: `loss_func` with `reduction='none'` (a copy: the learner's
    loss is not touched), averaged over any other dimension (the tags of a multi-label item, the values of a
    regression target); a loss without a `reduction` attribute is called once per item."""
    if isinstance(getattr(loss_func, "reduction", None), str):
        unreduced = copy.copy(loss_func)
        unreduced.reduction = "none"
        losses = unreduced(out, targ).float()
        return losses.reshape(len(out), -1).mean(1) if losses.ndim > 1 else losses
    return torch.stack([loss_func(out[i:i + 1], targ[i:i + 1]).float() for i in range(len(out))])


# -------------------------------------------------------------------------------------------------
# class weights for imbalanced classes (docs/imbalance.md)
# -------------------------------------------------------------------------------------------------
def balanced_class_weights(counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's 'balanced' class weights from the training items of each class:
    `weight_c = n_items / (n_classes * count_c)` (1 for every class when they are equally frequent), float32.
    A class without a training item has no weight: ValueError."""
    counts = torch.as_tensor(counts).double()
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class(es) {empty} have no training item, so 'balanced' cannot weight them (n_items / "
                         f"(n_classes * 0)): add training items of those classes, or give class_weights as one "
                         f"weight per class")
    return (counts.sum() / (len(counts) * counts)).float()


def balanced_pos_weight(positives: torch.Tensor, n_items: int) -> torch.Tensor:
    """Multi-label 'balanced' weights, BCE's `pos_weight`: for each tag `negatives / positives` of the training
    items, so that its positives weigh as much as its negatives in the loss, float32. A tag that no training
    item has, or that every one has, cannot be balanced: ValueError."""
    positives = torch.as_tensor(positives).double()
    negatives = n_items - positives
    never = (positives == 0).nonzero().flatten().tolist()
    always = (negatives == 0).nonzero().flatten().tolist()
    if never or always:
        which = (f"tag(s) {never} are on no training item" if never else "") + \
                ("; " if never and always else "") + (f"tag(s) {always} are on every training item" if always else "")
        raise ValueError(f"{which}, so 'balanced' cannot weigh their positives against their negatives: add "
                         f"training items with and without those tags, or give class_weights as one pos_weight "
                         f"per tag")
    return (negatives / positives).float()


def class_weighted_loss(class_weights: Any, targets: torch.Tensor, n_out: int, multi_label: bool) -> nn.Module:
    """The default loss weighted per class: `nn.CrossEntropyLoss(weight=w)` (single-label; the batch loss is
    `sum_i w[y_i] * nll_i / sum_i w[y_i]`) or `MultiLabelLoss(pos_weight=w)` (multi-label: each tag's positive
    term times `w[tag]`).

    `class_weights`: 'balanced' (`balanced_class_weights` of the counts of `targets`, the training targets:
    class indices, or `balanced_pos_weight` of multi-hot rows), or one non-negative finite weight per output
    (a list or a tensor of length `n_out`)."""
    targets = torch.as_tensor(targets)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced' or one weight per class, got {class_weights!r}")
        if multi_label:
            weights = balanced_pos_weight(targets.long().sum(0), len(targets))
        else:
            weights = balanced_class_weights(torch.bincount(targets.long().reshape(-1), minlength=n_out))
    else:
        try:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError):
            raise TypeError(f"class_weights must be 'balanced', a list or a tensor of numbers, got "
                            f"{type(class_weights).__name__}") from None
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or not bool((weights > 0).any()):
            raise ValueError(f"class_weights must be finite, non-negative and not all zero, got {weights.tolist()}")
    if len(weights) != n_out:
        raise ValueError(f"{len(weights)} class weights for a model with {n_out} outputs: give one weight per "
                         f"{'tag' if multi_label else 'class'}, in the vocab's order")
    return MultiLabelLoss(pos_weight=weights) if multi_label else nn.CrossEntropyLoss(weight=weights)
