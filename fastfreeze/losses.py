"""Losses beyond torch's own: a supervised contrastive loss for training projection heads (embeddings)."""
from __future__ import annotations

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
