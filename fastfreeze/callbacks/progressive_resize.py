"""Progressive resizing: train on small images first and grow them to the final size over the run
(docs/progressive-resizing.md).

`ProgressiveResize(start, end)` sets the size the training items are made at before each epoch, through
`ImageDataLoaders.set_train_size` (the loaders are not rebuilt; worker processes, persistent ones too, see each
change). Inside `fine_tune` it knows the phases (`learn.fine_tune_state`): the phases that train the head
only (the body frozen) stay at `start`, and the epochs of the other phases, taken in order as one run of `n`
epochs, grow from `start` to `end`:

    epoch t of n (0-based):   size(t) = R(start + (end - start) * t / (n - 1))         (n = 1: end)
    with steps=k:             size(t) = R(start + (end - start) * floor(t * k / n) / (k - 1))
    R(x) = multiple * floor(x / multiple + 1/2)   (the nearest multiple, halves rounded up)

so the first growing epoch is at `start` and the last at `end`. A fit outside `fine_tune` is one phase: it grows
over its epochs, unless it trains the head only (then all at `start`); `grow_frozen=True` grows over head-only
epochs too. Validation, `predict` and exports stay at the data's own size, which must be `end`.

The sizes follow from the phase and the epoch alone, so a resumed run trains each epoch at the size the
uninterrupted one did; the callback's settings and the sizes it has used are kept in checkpoints, and resuming
with other settings is an error. A fit whose size changes is never trained on cached body features
(`changes_input_size`, read by `feature_cache`); a head-only phase at one size may be (at that size).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from ..core.callback import Callback
from ..data.image_data import ImageDataLoaders
from ..utils.checks import is_int


def round_to_multiple(x: float, multiple: int) -> int:
    """`x` to the nearest multiple of `multiple`, halves rounded up: `multiple * floor(x / multiple + 1/2)`."""
    return multiple * math.floor(x / multiple + 0.5)


def grown_size(start: int, end: int, t: int, n: int, multiple: int, steps: Optional[int] = None) -> int:
    """The size of growing epoch `t` (0-based) of `n`: linear from `start` (t = 0) to `end` (t = n - 1), or in
    `steps` equal stretches, rounded to `multiple` (module docstring)."""
    if n <= 1:
        fraction = 1.0
    elif steps is None:
        fraction = t / (n - 1)
    else:
        fraction = (t * steps // n) / (steps - 1)
    return round_to_multiple(start + (end - start) * fraction, multiple)


def phase_sizes(start: int, end: int, phase_epochs: Sequence[int], grows: Sequence[bool], multiple: int,
                steps: Optional[int] = None) -> list[list[int]]:
    """The size of every epoch of every phase: `start` in a phase that does not grow, else `grown_size` of
    the epoch's place among the epochs of all growing phases."""
    n = sum(e for e, g in zip(phase_epochs, grows) if g)
    sizes, t = [], 0
    for epochs, growing in zip(phase_epochs, grows):
        if growing:
            sizes.append([grown_size(start, end, t + e, n, multiple, steps) for e in range(epochs)])
            t += epochs
        else:
            sizes.append([start] * epochs)
    return sizes


def _check_size(value: Any, name: str, multiple: int) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"ProgressiveResize's {name} must be a positive whole number of pixels, got {value!r}")
    if value % multiple:
        raise ValueError(f"ProgressiveResize's {name}={value} is not a multiple of multiple={multiple}: every size is "
                         f"rounded to a multiple, so pass {name}={round_to_multiple(value, multiple) or multiple} "
                         f"or a multiple that divides it (e.g. multiple=8)")
    return int(value)


class ProgressiveResize(Callback):
    """Grow the training input size from `start` to `end` pixels (square images) over a fit or a `fine_tune`.

    Args:
        start: the size of the first epochs, and of the phases that train the head only.
        end: the size of the last epoch; None: the data's size. It must be the data's size
            (`ImageDataLoaders(..., size=end)`), at which validation, `predict` and exports run.
        multiple: every size is a multiple of it (32 suits CNNs with 5 stride-2 stages; `start` and `end` must
            be multiples).
        steps: None grows every epoch (linear); an int k >= 2 grows in k equal stretches of epochs.
        grow_frozen: grow over head-only phases too (no feature cache there then) instead of keeping them at
            `start`.

    `history` lists `(phase label, epoch, size)` for every epoch trained with this callback (kept in
    checkpoints). Add it to the fits that should grow (`fine_tune(..., cbs=ProgressiveResize(64, 96))`); the
    training size goes back to the data's own after each fit."""
    order = -25  # before FeatureCache (-20) extracts features, so that it reads items at this fit's size
    state_key = "progressive_resize"

    def __init__(self, start: int, end: Optional[int] = None, multiple: int = 32, steps: Optional[int] = None,
                 grow_frozen: bool = False):
        if not is_int(multiple) or multiple < 1:
            raise ValueError(f"ProgressiveResize's multiple must be a positive whole number, got {multiple!r}")
        self.multiple = int(multiple)
        self.start = _check_size(start, "start", self.multiple)
        self.end = None if end is None else _check_size(end, "end", self.multiple)
        if self.end is not None and self.end < self.start:
            raise ValueError(f"ProgressiveResize grows the images: start={start} must be at most end={end}")
        if steps is not None and (not is_int(steps) or steps < 2):
            raise ValueError(f"ProgressiveResize's steps must be None (a new size every epoch) or a whole number "
                             f">= 2 (that many sizes), got {steps!r}")
        self.steps, self.grow_frozen = steps, bool(grow_frozen)
        self.history: list[tuple[str, int, int]] = []
        self.sizes: list[int] = []  # this fit's size of each epoch
        self.changes_input_size = False  # whether the size changes within this fit (feature_cache reads it)
        self.running = False

    def __repr__(self) -> str:
        return (f"ProgressiveResize(start={self.start}, end={self.end}, multiple={self.multiple}, "
                f"steps={self.steps}, grow_frozen={self.grow_frozen})")

    # -- the plan ---------------------------------------------------------------------------------
    def data_size(self) -> int:
        """The size of the learner's data (validation's), checked to be square and `end` when given."""
        dls = self.learn.dls
        if not isinstance(dls, ImageDataLoaders) or dls.train_size is None:
            raise TypeError(f"ProgressiveResize changes the size of ImageDataLoaders, and this learner's data is a "
                            f"{type(dls).__name__} built from loaders given directly: build it with "
                            "ImageDataLoaders.from_folder, from_lists, from_df, from_csv or from_arrays")
        height, width = dls.data_config["input_size"][-2:]
        if height != width:
            raise ValueError(f"ProgressiveResize grows square images, but the data is {height}x{width}: build it "
                             f"with size={max(height, width)} (one number)")
        if self.end is not None and self.end != height:
            raise ValueError(f"ProgressiveResize ends at {self.end} px, but the data is made at {height} px, the "
                             f"size validation, predict and export use: build the data with size={self.end}, or "
                             f"leave end out to end at {height}")
        if self.end is None and height < self.start:
            raise ValueError(f"ProgressiveResize starts at {self.start} px, above the data's {height} px: start at "
                             f"a smaller size")
        if height % self.multiple:
            raise ValueError(f"the data's size {height} is not a multiple of multiple={self.multiple}: pass a "
                             f"multiple that divides it (e.g. multiple=8), or build the data at another size")
        return int(height)

    def plan(self) -> list[list[int]]:
        """The size of every epoch of every phase of the running `fine_tune` (one phase: this fit, outside it)."""
        learn = self.learn
        end = self.data_size()
        state = getattr(learn, "fine_tune_state", None)
        if state is not None and "phase_epochs" in state:
            epochs, frozen = state["phase_epochs"], state["phase_frozen"]
        else:
            epochs, frozen = [learn.n_epoch], [learn.frozen_groups]
        grows = [self.grow_frozen or k < learn.n_groups - 1 for k in frozen]
        return phase_sizes(self.start, end, epochs, grows, self.multiple, self.steps)

    def fit_sizes(self) -> list[int]:
        """The size of each epoch of the fit that is starting."""
        state = getattr(self.learn, "fine_tune_state", None)
        plan = self.plan()
        sizes = plan[state["phase"]] if state is not None and "phase_epochs" in state else plan[0]
        if len(sizes) != self.learn.n_epoch:
            raise RuntimeError(f"ProgressiveResize planned {len(sizes)} epochs for this fit, which has "
                               f"{self.learn.n_epoch}: a fit run inside fine_tune's phase?")
        return sizes

    def check_model_takes(self, sizes: Sequence[int]) -> None:
        """A clear error when a layer of the model takes one input size only (timm's patch embedding of a ViT
        built without `dynamic_img_size`: `strict_img_size`) and `sizes` holds another."""
        for name, module in self.learn.model.named_modules():
            fixed = getattr(module, "img_size", None) if getattr(module, "strict_img_size", False) else None
            if fixed is not None and any((size, size) != tuple(fixed) for size in sizes):
                raise ValueError(f"{name} ({type(module).__name__}) takes {tuple(fixed)} inputs only, and "
                                 f"ProgressiveResize would feed it {sorted(set(sizes))}: build the model with "
                                 "vision_learner(..., timm_kwargs={'dynamic_img_size': True}) (timm ViTs), or "
                                 "train it at its one size")

    # -- events -----------------------------------------------------------------------------------
    def before_fit(self) -> None:
        self.sizes = self.fit_sizes()
        self.check_model_takes(self.sizes)
        self.running = True
        self.changes_input_size = len(set(self.sizes[self.learn.start_epoch:])) > 1
        self.learn.dls.set_train_size(self.sizes[self.learn.start_epoch])

    def before_epoch(self) -> None:
        size = self.sizes[self.learn.epoch]
        self.learn.dls.set_train_size(size)
        self.history.append((self.learn.phase, int(self.learn.epoch), size))

    def after_fit(self) -> None:
        if self.running:
            self.learn.dls.set_train_size(None)
        self.running, self.changes_input_size = False, False

    # -- checkpoints ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "multiple": self.multiple, "steps": self.steps,
                "grow_frozen": self.grow_frozen}

    def state_dict(self) -> dict[str, Any]:
        """The settings and the sizes used so far (`history`)."""
        return {"settings": self.settings(), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["settings"] != self.settings():
            saved = ", ".join(f"{k}={v!r}" for k, v in state["settings"].items())
            raise ValueError(f"the checkpoint was written with ProgressiveResize({saved}), not {self!r}: resume "
                             "with the same settings, or the sizes after the resume would not be the run's")
        self.history = [(str(p), int(e), int(s)) for p, e, s in state["history"]]
