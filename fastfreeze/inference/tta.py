"""Test-time augmentation: each input's predictions averaged over a few deterministic views of it
(`learn.tta`, docs/interpretation.md).

The views are taken from the evaluation input itself (after timm's evaluation transform or the array
preprocessing), so they apply to every kind of data: the input, its horizontal flip, then crops of `scale` of
its height and width (timm's default crop_pct, 0.875) at the centre and the four corners, each resized back to
the input size (bilinear) and each followed by its flip. The activated outputs (probabilities for a classifier,
the values for regression) are averaged over the first `n` views.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.loop import BaseLearner

View = Callable[[Tensor], Tensor]
CROP_POSITIONS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
DEFAULT_SCALE = 0.875


def identity(x: Tensor) -> Tensor:
    """The input as it is."""
    return x


def hflip(x: Tensor) -> Tensor:
    """The batch `(B, C, H, W)` flipped left to right."""
    return x.flip(-1)


def crop_view(position: str, scale: float = DEFAULT_SCALE) -> View:
    """A view cropping `scale` of the height and width at `position` (one of `CROP_POSITIONS`), resized back to
    the input size with bilinear interpolation."""
    if position not in CROP_POSITIONS:
        raise ValueError(f"position must be one of {CROP_POSITIONS}, got {position!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")

    def view(x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        top = {"center": (height - h) // 2, "top_left": 0, "top_right": 0}.get(position, height - h)
        left = {"center": (width - w) // 2, "top_left": 0, "bottom_left": 0}.get(position, width - w)
        crop = x[..., top:top + h, left:left + w]
        return F.interpolate(crop.float(), size=(height, width), mode="bilinear", align_corners=False).to(x.dtype)
    view.__name__ = f"crop_{position}"
    return view


def tta_views(n: int = 4, scale: float = DEFAULT_SCALE) -> list[View]:
    """The first `n` views: the input, its flip, then for each crop position (centre first) the crop and its
    flip (at most 12 views)."""
    views: list[View] = [identity, hflip]
    for position in CROP_POSITIONS:
        crop = crop_view(position, scale)
        views += [crop, _flipped(crop)]
    if not 1 <= n <= len(views):
        raise ValueError(f"n must be between 1 and {len(views)} views, got {n}")
    return views[:n]


def _flipped(view: View) -> View:
    def flipped(x: Tensor) -> Tensor:
        return hflip(view(x))
    flipped.__name__ = f"{getattr(view, '__name__', 'view')}_flipped"
    return flipped


@torch.no_grad()
def tta(learn: BaseLearner, dl: Optional[Iterable] = None, n: int = 4, views: Optional[Sequence[View]] = None,
        scale: float = DEFAULT_SCALE) -> tuple[Tensor, Optional[Tensor]]:
    """`(predictions, targets)` over `dl` (default: the validation set) as `get_preds` gives them, each
    prediction the mean of the activated outputs over `n` views of the input (`tta_views`; or your own
    `views`, functions of a batch `(B, C, H, W)`). `n=1` is `get_preds` itself."""
    dl = dl if dl is not None else learn.dls.valid
    if dl is None:
        raise ValueError("no data for tta: pass a dl or give DataLoaders a valid set")
    views = list(views) if views is not None else tta_views(n, scale)
    if not views:
        raise ValueError("tta needs at least one view")

    def averaged_over_views(xb: tuple) -> Tensor:
        (x,) = xb
        total = None
        for view in views:
            with learn.autocast():
                out = learn.model(view(x))
            probs = learn.activation(out)
            total = probs if total is None else total + probs
        return total / len(views)

    return learn.get_preds(dl, predict_batch=averaged_over_views)
