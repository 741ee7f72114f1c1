"""Images in a grid with a title under each (`show_batch`, `show_results`, `plot_top_losses`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .files import save_figure


def image_grid(images: Union[np.ndarray, Sequence[np.ndarray]], titles: Sequence[str],
               colors: Optional[Sequence[str]] = None, path: Union[str, Path, None] = None,
               size: float = 2.0) -> Any:
    """A square-ish grid of `images` (`(H, W, 3)` floats in [0, 1]), each titled (in `colors[i]` when given);
    saved to `path` when given. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    figure, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors is not None else "black")
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path, bbox_inches="tight")
    return figure
