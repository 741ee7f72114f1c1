"""Losses beyond torch's own (a supervised contrastive loss for projection heads, docs/head.md; the multi-label
loss, docs/tasks.md), the activation a loss implies for predictions, and the loss of each item."""
from __future__ import annotations

import copy

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
