"""Write a linear classifier of the body's average-pooled features exactly into a head.

The default `fine_tune` may keep a logistic-regression probe (`finetune.logistic_probe`) as its result; the
model must then predict what the probe predicts, with the head the user chose. This module writes

    logits = ((avg_pooled - mean) / std) @ weight.T + bias

into the head's own layers, exactly in eval mode, for the heads `create_head` builds with at most one hidden
layer (and the same shapes built by hand):

- pooling `AdaptiveConcatPool2d` (max, then average) or `AdaptiveAvgPool2d`, then `Flatten`;
- then `[BatchNorm1d] [Dropout] Linear(in, classes)` with a bias, or
  `[BatchNorm1d] [Dropout] Linear(in, hidden) ReLU [BatchNorm1d] [Dropout] Linear(hidden, classes)` with
  `hidden >= 2 * classes` (the bias goes into the last Linear's bias, or into the second BatchNorm's when
  the Linear has none, as `create_head`'s has not).

The first BatchNorm gets the running mean and variance of the pooled training features (what training would
have given it) and weight 1, bias 0; the standardisation left over goes into the first Linear. With a hidden
layer, hidden unit k carries `relu(z_k)` and unit `classes + k` carries `relu(-z_k)`, so the last Linear
recovers `z_k = relu(z_k) - relu(-z_k)`; the other hidden units keep their weights (a later fit can use them)
and get a zero column in the last Linear. The second BatchNorm is the identity on the units used. Dropout is
the identity in eval mode.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .head import AdaptiveConcatPool2d

POOLS = (AdaptiveConcatPool2d, nn.AdaptiveAvgPool2d)


def _take(layers: list[nn.Module], kind: type) -> Optional[nn.Module]:
    """Pop and return the first layer when it is a `kind`, else None."""
    return layers.pop(0) if layers and isinstance(layers[0], kind) else None


def linear_head_layout(head: nn.Module, n_classes: int) -> tuple[Optional[dict], str]:
    """(the head's layers by role, '') when a linear classifier can be written into `head`, else (None, why)."""
    if not isinstance(head, nn.Sequential):
        return None, f"the head is a {type(head).__name__}, not an nn.Sequential"
    layers = list(head)
    pool = _take(layers, POOLS)
    if pool is None or isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size not in (1, (1, 1)):
        return None, "the head does not start with global average or concat pooling"
    if _take(layers, nn.Flatten) is None:
        return None, "the head's pooling is not followed by Flatten"
    parts = {"concat": isinstance(pool, AdaptiveConcatPool2d), "bn1": _take(layers, nn.BatchNorm1d)}
    _take(layers, nn.Dropout)
    parts["linear1"] = _take(layers, nn.Linear)
    if parts["linear1"] is None:
        return None, "the head has no Linear layer after its pooling"
    if _take(layers, nn.ReLU) is not None:
        parts["bn2"] = _take(layers, nn.BatchNorm1d)
        _take(layers, nn.Dropout)
        parts["linear2"] = _take(layers, nn.Linear)
        if parts["linear2"] is None:
            return None, "the head's hidden layer is not followed by a Linear"
        if parts["linear2"].bias is None and parts["bn2"] is None:
            return None, "the head's last Linear has no bias and no BatchNorm before it to carry one"
        if parts["linear1"].out_features < 2 * n_classes:
            return None, f"the hidden layer has fewer than 2 x {n_classes} units"
    elif parts["linear1"].bias is None:
        return None, "the head's only Linear has no bias"
    for bn in (parts["bn1"], parts.get("bn2")):
        if bn is not None and not (bn.affine and bn.track_running_stats):
            return None, "a BatchNorm of the head has no affine parameters or no running statistics"
    if layers:
        return None, f"the head has layers after its classifier ({type(layers[0]).__name__})"
    last = parts.get("linear2", parts["linear1"])
    if last.out_features != n_classes:
        return None, f"the head's last Linear has {last.out_features} outputs, not {n_classes}"
    return parts, ""


@torch.no_grad()
def write_linear_classifier(head: nn.Module, pooled: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                            weight: torch.Tensor, bias: torch.Tensor) -> str:
    """Write `logits = ((avg - mean) / std) @ weight.T + bias` into `head` (the module docstring), where `avg`
    is the average-pooled half of `pooled`, the head's pooled features (after Flatten) of the training items.
    Returns '' when written, else why not (the head is then untouched)."""
    n_classes, n_feats = weight.shape
    parts, why = linear_head_layout(head, n_classes)
    if parts is None:
        return why
    pooled = pooled.double()
    if pooled.shape[1] != (2 if parts["concat"] else 1) * n_feats:
        return f"the head pools {pooled.shape[1]} features, not {n_feats} averages"
    avg = slice(n_feats, 2 * n_feats) if parts["concat"] else slice(0, n_feats)  # concat pools max, then average
    scale = torch.ones(pooled.shape[1], dtype=torch.float64)  # what the first BatchNorm divides by
    bn1 = parts["bn1"]
    if bn1 is not None:
        bn1.running_mean.copy_(pooled.mean(dim=0))
        bn1.running_var.copy_(pooled.var(dim=0, unbiased=True) if len(pooled) > 1 else torch.ones(pooled.shape[1]))
        bn1.weight.fill_(1.0)
        bn1.bias.zero_()
        scale = torch.sqrt(bn1.running_var.double() + bn1.eps)
        # the BatchNorm subtracts the training mean on the average half; the probe subtracts `mean`
        offset = (pooled.mean(dim=0)[avg] - mean.double()) / std.double()
    else:
        offset = -mean.double() / std.double()
    # z = (avg - mean) / std @ W.T + b = u_avg * (scale / std) @ W.T + offset @ W.T + b
    w_in = weight.double() * (scale[avg] / std.double())
    b_out = bias.double() + offset @ weight.double().T
    linear1 = parts["linear1"]
    first = torch.zeros(n_classes, pooled.shape[1], dtype=torch.float64)
    first[:, avg] = w_in
    if "linear2" not in parts:
        linear1.weight.copy_(first)
        linear1.bias.copy_(b_out)
        return ""
    linear1.weight[:n_classes] = first
    linear1.weight[n_classes:2 * n_classes] = -first
    if linear1.bias is not None:
        linear1.bias[:2 * n_classes] = 0.0
    s = 1.0  # the last Linear's weight on the units used, undoing the second BatchNorm's division
    bn2, linear2 = parts["bn2"], parts["linear2"]
    if bn2 is not None:
        bn2.running_mean[:2 * n_classes] = 0.0
        bn2.running_var[:2 * n_classes] = 1.0
        bn2.weight[:2 * n_classes] = 1.0
        bn2.bias[:2 * n_classes] = 0.0
        s = math.sqrt(1.0 + bn2.eps)
    linear2.weight.zero_()
    eye = torch.eye(n_classes, dtype=linear2.weight.dtype)
    linear2.weight[:, :n_classes] = s * eye
    linear2.weight[:, n_classes:2 * n_classes] = -s * eye
    if linear2.bias is not None:
        linear2.bias.copy_(b_out)
    else:  # unit k's BatchNorm adds bias_k / s, which the last Linear multiplies by s
        bn2.bias[:n_classes] = b_out / s
    return ""
