"""Host-device synchronisations of the training loop, counted exactly on the CPU.

Every time Python reads a value out of a tensor (`.item()`, `float(t)`, `int(t)`, `bool(t)`, `if t:`) torch
runs `aten._local_scalar_dense`, and on a GPU that read waits until the device has finished everything queued.
A `TorchDispatchMode` sees each one; the read is attributed to the innermost stack frame outside torch, and
counted when that frame is in fastfreeze's files (or in this file, for the hand-written loop). torch.optim's
reads of its own CPU step counters (the innermost frame that makes the read is in torch/optim/) are left out.

Reads are split into those made inside a training batch (from `before_batch` to `after_batch`) and the rest,
per epoch; both are taken over the steady state: every epoch of a fit but its first (the first pass over a
data set checks its labels, once). Counts are exact, unlike times: tests/test_host_syncs.py keeps the default
fit's count.

    python benchmarks/host_syncs.py [--batches 8]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastfreeze
from fastfreeze import EMA, Callback, F1Score, ImageDataLoaders, MixUp, ProgressCallback, accuracy, vision_learner

PACKAGE_DIR = os.path.dirname(fastfreeze.__file__)
TORCH_DIR = os.path.dirname(torch.__file__)
THIS_FILE = os.path.abspath(__file__)
ARCH = "test_resnet"  # timm's tiny ResNet for tests: seconds per run


@dataclass
class Reads:
    """What a `ReadCounter` saw: each counted read's place (file:line) and whether it was in a training batch."""
    in_batch: Counter = field(default_factory=Counter)
    between: Counter = field(default_factory=Counter)


class ReadCounter(TorchDispatchMode):
    """Counts `aten._local_scalar_dense` calls made by fastfreeze's code (or this file's), while `counting()`."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = Reads()
        self.in_batch = False
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active and func is torch.ops.aten._local_scalar_dense.default:
            place = caller_outside_torch()
            if place is not None:
                (self.reads.in_batch if self.in_batch else self.reads.between)[place] += 1
        return func(*args, **(kwargs or {}))


def caller_outside_torch() -> Optional[str]:
    """`file:line` of the innermost frame outside torch, when it is fastfreeze's or this file's and the read is not
    torch.optim's own; else None."""
    frames = traceback.extract_stack()[:-3]  # drop this function, __torch_dispatch__ and the mode's plumbing
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if path == THIS_FILE and frame.name in ("__torch_dispatch__", "caller_outside_torch"):
            continue
        if path.startswith(TORCH_DIR):
            if path.startswith(os.path.join(TORCH_DIR, "optim")):
                return None  # torch.optim reading its own step counters
            continue
        if path.startswith(PACKAGE_DIR) or path == THIS_FILE:
            return f"{os.path.relpath(path, os.path.dirname(PACKAGE_DIR))}:{frame.lineno}"
        return None
    return None


class BatchMarker(Callback):
    """Tells the counter when a steady-state training batch starts and ends, and counts those batches and epochs."""
    order = -10_000

    def __init__(self, counter: ReadCounter):
        self.counter, self.batches, self.epochs = counter, 0, 0
        self.phases: Optional[set[str]] = None  # count these phases only (None: all)

    def steady(self) -> bool:
        learn = self.learn
        return learn.epoch > learn.start_epoch and (self.phases is None or learn.phase in self.phases)

    def before_epoch(self) -> None:
        self.counter.active = self.steady()
        if self.counter.active:
            self.epochs += 1

    def before_batch(self) -> None:
        if self.counter.active and self.learn.training:
            self.counter.in_batch = True
            self.batches += 1

    def after_cancel_batch(self) -> None:
        self.counter.in_batch = False

    def after_epoch(self) -> None:
        self.counter.active = False

    after_fit = after_epoch


class LastBatchEnd(Callback):
    """Closes the batch window after every other callback's `after_batch`."""
    order = 10_000

    def __init__(self, counter: ReadCounter):
        self.counter = counter

    def after_batch(self) -> None:
        self.counter.in_batch = False


def image_dls(n_batches: int, bs: int = 8, size: int = 32) -> ImageDataLoaders:
    g = np.random.default_rng(0)
    n = n_batches * bs
    x = g.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    return ImageDataLoaders.from_arrays(x, y, x[: 2 * bs], y[: 2 * bs], size=size, bs=bs, vocab=["a", "b", "c"])


def count(run: Callable[[Any], None], n_batches: int, metrics: Any = accuracy, cbs: Any = (),
          phases: Optional[set[str]] = None, bars: bool = False) -> tuple[float, float, Reads]:
    """Reads per steady-state training batch, reads per steady-state epoch outside its training batches, and the
    places, for `run(learn)` on a fresh learner."""
    torch.manual_seed(0)
    counter = ReadCounter()
    marker = BatchMarker(counter)
    marker.phases = phases
    learn = vision_learner(image_dls(n_batches), ARCH, pretrained=False, metrics=metrics,
                           cbs=[marker, LastBatchEnd(counter), *cbs], progress=True)
    for cb in learn.cbs:
        if isinstance(cb, ProgressCallback):
            cb.batch_bars = bars
    with counter, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(learn)
    reads = counter.reads
    per_batch = sum(reads.in_batch.values()) / max(marker.batches, 1)
    per_epoch = sum(reads.between.values()) / max(marker.epochs, 1)
    return per_batch, per_epoch, reads


def fine_tune(learn: Any) -> None:
    """Both phases of fastai's recipe, run in full (no feature cache), three epochs each."""
    learn.fine_tune(3, base_lr=1e-3, freeze_epochs=3, cache_features=False)


def configurations() -> list[tuple[str, dict[str, Any]]]:
    fit = lambda **kw: (lambda learn: learn.fit(3, lr=1e-3, **kw))  # noqa: E731
    return [
        ("fit, metrics=accuracy (default callbacks)", dict(run=fit())),
        ("fit, progress bar drawn every batch", dict(run=fit(), bars=True)),
        ("fit_one_cycle", dict(run=lambda learn: learn.fit_one_cycle(3, 1e-3))),
        ("fine_tune, frozen phase", dict(run=fine_tune, phases={"frozen"})),
        ("fine_tune, unfrozen phase", dict(run=fine_tune, phases={"unfrozen"})),
        ("fit + EMA", dict(run=fit(), cbs=[EMA()])),
        ("fit + MixUp", dict(run=fit(), cbs=[MixUp()])),
        ("fit, accum_steps=2", dict(run=fit(accum_steps=2))),
        ("fit, clip_grad=1.0", dict(run=fit(clip_grad=1.0))),
        ("fit, whole-set metric (F1Score)", dict(run=fit(), metrics=[accuracy, F1Score()])),
    ]


def hand_written(n_batches: int) -> tuple[float, float, Reads]:
    """The loop people write by hand: `loss.item()` summed for the log every batch, accuracy counted with `.item()`
    in validation. Counted the same way (its reads are in this file)."""
    torch.manual_seed(0)
    import timm
    dls = image_dls(n_batches)
    model = timm.create_model(ARCH, pretrained=False, num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    counter = ReadCounter()
    batches = 0
    with counter:
        for epoch in range(3):
            counter.active = epoch > 0
            model.train()
            running = 0.0
            for x, y in dls.train:
                counter.in_batch = True
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                running += loss.item()
                counter.in_batch = False
                batches += epoch > 0
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in dls.valid:
                    correct += (model(x).argmax(1) == y).sum().item()
    return sum(counter.reads.in_batch.values()) / batches, sum(counter.reads.between.values()) / 2, counter.reads


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="training batches per epoch")
    parser.add_argument("--where", action="store_true", help="list the places of the reads")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, fastfreeze {fastfreeze.__version__}, {ARCH}, {args.batches} training batches "
          "of 8 per epoch, 3 epochs per fit (the first of each fit left out); CPU\n")
    print("| configuration | reads per training batch | reads per epoch, outside training batches |")
    print("|---|---|---|")
    rows = [(name, count(n_batches=args.batches, **kw)) for name, kw in configurations()]
    rows.append(("hand-written loop (`loss.item()` per batch)", hand_written(args.batches)))
    for name, (per_batch, per_epoch, reads) in rows:
        print(f"| {name} | {per_batch:.2f} | {per_epoch:.1f} |")
    fastai = "installed: not measured by this script" if importlib.util.find_spec("fastai") else "not installed"
    print(f"| fastai | {fastai}: no row | |")
    if args.where:
        for name, (_, _, reads) in rows:
            print(f"\n{name}\n  in batches: {dict(reads.in_batch)}\n  between: {dict(reads.between)}")


if __name__ == "__main__":
    main(sys.argv[1:])
