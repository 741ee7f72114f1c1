"""Heads that go on a body: the default classifier head, a head from the user's own layers, and a
projection head for embeddings (docs/head.md).

Every head takes the body's output: a spatial map `(B, nf, H, W)` when `pool=True`, or already pooled
features `(B, nf)` when `pool=False` (a body that pools itself, e.g. a ViT).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn

from ..utils.checks import check_dropout, check_layer_sizes

DEFAULT_HIDDEN = 512


class SigmoidRange(nn.Module):
    """`low + (high - low) * sigmoid(x)`: outputs squeezed into `(low, high)` (fastai's `y_range` for regression)."""

    def __init__(self, low: float, high: float):
        super().__init__()
        if not high > low:
            raise ValueError(f"y_range must be (low, high) with low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(x)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive max pool and adaptive average pool, concatenated on the channel axis (max first):
    `(B, C, H, W) -> (B, 2C, size, size)`."""

    def __init__(self, size: int = 1):
        super().__init__()
        self.size = size
        self.max_pool = nn.AdaptiveMaxPool2d(size)
        self.avg_pool = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max_pool(x), self.avg_pool(x)], dim=1)


def init_linears(module: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in, ReLU gain: std = sqrt(2 / fan_in)) weights and zero biases for every
    nn.Linear in `module`; returns `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _pool_layers(pool: bool, concat_pool: bool) -> list[nn.Module]:
    if not pool:
        return []
    return [AdaptiveConcatPool2d() if concat_pool else nn.AdaptiveAvgPool2d(1), nn.Flatten()]


def _dropouts(ps: Union[float, Sequence[float]], n_blocks: int) -> list[float]:
    """One dropout probability per block: a float `p` gives p/2 for every block but the last, which gets p."""
    if isinstance(ps, (int, float)):
        return [ps / 2] * (n_blocks - 1) + [float(ps)]
    ps = [float(p) for p in ps]
    if len(ps) == 1:
        return _dropouts(ps[0], n_blocks)
    if len(ps) != n_blocks:
        raise ValueError(f"ps has {len(ps)} dropout probabilities but the head has {n_blocks} linear blocks "
                         f"(len(lin_ftrs) + 1): pass one float or a list of {n_blocks}")
    return ps


def create_head(nf: int, n_out: int, lin_ftrs: Optional[Sequence[int]] = None,
                ps: Union[float, Sequence[float]] = 0.5, pool: bool = True, concat_pool: bool = True,
                first_bn: bool = True, bn_final: bool = False, lin_first: bool = False,
                y_range: Optional[Sequence[float]] = None) -> nn.Sequential:
    """The default classifier head, as fastai builds it.

    Pooling (`concat_pool`: max and average concatenated, `2*nf` features; else average, `nf`; none
    when `pool=False`) and Flatten, then one block per Linear: hidden sizes `lin_ftrs` (default [512]),
    then `n_out`. Block i is `BatchNorm1d -> Dropout(p_i) -> Linear`, with ReLU after every Linear but
    the last. Dropouts default to `ps/2` for every block but the last, which gets `ps`; `ps` may also be
    a list, one per block. `first_bn=False` drops the first block's BatchNorm. A Linear has a bias only
    when its block has no BatchNorm. `bn_final` appends `BatchNorm1d(n_out, momentum=0.01)`.

    `lin_first=True` puts each hidden Linear before its norm: `Dropout(p_0)`, then per hidden block
    `Linear -> ReLU -> BatchNorm1d -> Dropout(p_{i+1})`, then `Linear(.., n_out)` with a bias. So every
    Linear still sees the same dropout, and the logits are never normalized or dropped out.
    `y_range=(low, high)` ends the head with `SigmoidRange(low, high)` (regression targets known to lie in that
    range). Linear weights are Kaiming normal (fan_in), biases zero.
    """
    if nf < 1 or n_out < 1:
        raise ValueError(f"create_head needs positive sizes, got nf={nf}, n_out={n_out}")
    ps, lin_ftrs = check_dropout(ps), check_layer_sizes(lin_ftrs)
    sizes = [nf * 2 if pool and concat_pool else nf] + list(lin_ftrs if lin_ftrs is not None else [DEFAULT_HIDDEN])
    sizes.append(n_out)
    n_blocks = len(sizes) - 1
    ps = _dropouts(ps, n_blocks)
    bns = [first_bn] + [True] * (n_blocks - 1)
    layers = _pool_layers(pool, concat_pool)
    if lin_first:
        layers.append(nn.Dropout(ps[0]))
        for i in range(n_blocks - 1):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=not bns[i]), nn.ReLU(inplace=True)]
            if bns[i]:
                layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(nn.Dropout(ps[i + 1]))
        layers.append(nn.Linear(sizes[-2], n_out))
    else:
        for i in range(n_blocks):
            if bns[i]:
                layers.append(nn.BatchNorm1d(sizes[i]))
            layers += [nn.Dropout(ps[i]), nn.Linear(sizes[i], sizes[i + 1], bias=not bns[i])]
            if i < n_blocks - 1:
                layers.append(nn.ReLU(inplace=True))
    if bn_final:
        layers.append(nn.BatchNorm1d(n_out, momentum=0.01))
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    return init_linears(nn.Sequential(*layers))


def _input_width(module: nn.Module) -> Optional[int]:
    """The number of input features a layer expects, for the layers that say so."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return None
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Bilinear):
        return module.in1_features
    if isinstance(module, (nn.BatchNorm1d, nn.InstanceNorm1d)):
        return module.num_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels
    return None


def _first_input_width(layers: Sequence[nn.Module]) -> Optional[int]:
    """Input width of the first layer (in forward order) that declares one; None when a layer with
    parameters of an unknown kind comes first (its input size cannot be told)."""
    for layer in layers:
        for module in layer.modules():
            width = _input_width(module)
            if width is not None:
                return width
            if any(True for _ in module.parameters(recurse=False)):
                return None
    return None


def head_from_layers(layers: Sequence[nn.Module], nf: int, pool: bool = True,
                     concat_pool: bool = False) -> nn.Sequential:
    """The user's layers as they are, after pooling and Flatten when the body is spatial (`pool=True`:
    average pooling by default, so the first Linear sees `nf` features; `2*nf` with `concat_pool`).

    The first layer that declares an input size (Linear `in_features`, BatchNorm1d/LayerNorm width, ...)
    must match the pooled feature count, else a ValueError says which Linear to use.
    The layers keep their own initialization.
    """
    layers = list(layers)
    if not layers:
        raise ValueError("the head's layer list is empty: give at least one layer, e.g. [nn.Linear(nf, n_out)]")
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"head layer {i} is a {type(layer).__name__}, not an nn.Module")
    expected = nf * 2 if pool and concat_pool else nf
    width = _first_input_width(layers)
    if width is not None and width != expected:
        raise ValueError(f"head's first layer expects {width} input features but the body gives {expected}: "
                         f"use nn.Linear({expected}, ...)")
    return nn.Sequential(*_pool_layers(pool, concat_pool), *layers)


def projection_head(nf: int, output_dim: int, hidden: Optional[int] = None, pool: bool = True) -> nn.Sequential:
    """A small MLP that maps the body's features to a `output_dim`-dimensional embedding (the idea of Jina
    Finetuner's Tailor): average pool and Flatten (when `pool`), `Linear(nf, hidden)`, ReLU,
    `Linear(hidden, output_dim)`; `hidden` defaults to `nf`. Kaiming-normal weights, zero biases."""
    if nf < 1 or output_dim < 1:
        raise ValueError(f"projection_head needs positive sizes, got nf={nf}, output_dim={output_dim}")
    hidden = hidden or nf
    return init_linears(nn.Sequential(*_pool_layers(pool, concat_pool=False), nn.Linear(nf, hidden),
                                      nn.ReLU(inplace=True), nn.Linear(hidden, output_dim)))
