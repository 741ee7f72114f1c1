"""Training throughput: fastfreeze against hand-written PyTorch loops, unfrozen and frozen, with cached features.

For each architecture (random init, random images already on the device, 10 classes), in one process,
rows alternating (their order rotated from run to run), images/s of:
  hand: all trainable          a hand-written loop over the same TransferModel, torch AdamW (fused on CUDA)
  hand: body under no_grad     the frozen limit: body in eval mode under torch.no_grad(), only the head trains
  ff: unfrozen                 vision_learner + Learner.fit, every group trainable
  ff: frozen, norm='frozen'    freeze(); frozen groups in eval mode without gradients
  ff: frozen, norm='train'     freeze(); BatchNorm of the body trains (fastai's train_bn default)
  ff: frozen, cached           norm='frozen' + FeatureCache over `--cached-epochs` epochs, extraction included
                               (and, in parentheses, images/s of the head-only epochs after it)
with the peak memory of each row (torch.cuda.max_memory_allocated, reset between rows; n/a on CPU), then
the ratios: unfrozen/hand, frozen/no_grad limit (both norm policies), cached/uncached frozen, and on a GPU
at 224 px, batch 128, the frozen norm='train' row against fastai's measured images/s (fastai 2.8.12, measured on one H100: see docs/benchmarks.md).

    python benchmarks/gpu_throughput.py                 # GPU when there is one, else the CPU mode
    python benchmarks/gpu_throughput.py --device cuda   # resnet50, convnext_tiny, bf16, channels_last, bs 128, 224 px
    python benchmarks/gpu_throughput.py --device cpu    # resnet18, convnext_atto, fp32, bs 32, 64 px, few steps
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import time
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fastfreeze import DataLoaders, vision_learner
from fastfreeze.finetune.feature_cache import FeatureCache, FeatureDataset

N_CLASSES = 10
LR = 1e-4
# fastai 2.8.12 on one H100, bf16, channels_last, batch 128, 224 px, data on the GPU, images/s
FASTAI_ANCHORS = {
    "resnet50": {"hand": 3638, "no_grad": 9173, "unfrozen": 2594, "frozen": 2944},
    "convnext_tiny": {"hand": 2557, "no_grad": 7291, "unfrozen": 1894, "frozen": 3029},
}
PRESETS = {
    "cuda": {"archs": ["resnet50", "convnext_tiny"], "bs": 128, "size": 224, "precision": "bf16", "steps": 40,
             "warmup": 10, "runs": 3, "cached_epochs": 5},
    "cpu": {"archs": ["resnet18", "convnext_atto"], "bs": 32, "size": 64, "precision": "fp32", "steps": 4,
            "warmup": 1, "runs": 2, "cached_epochs": 3},
}
ROWS = ("hand: all trainable", "hand: body under no_grad", "ff: unfrozen", "ff: frozen, norm='frozen'",
        "ff: frozen, norm='train'", "ff: frozen, cached")

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class DeviceImages(FeatureDataset):
    """Images already on the device, gathered a batch at a time (FeatureDataset's indexing);
    `augment = False` tells FeatureCache the items are deterministic."""
    augment = False


def whole_batch(batch: Any) -> Any:
    return batch


# ------------------------------------------------------------------------------------------ helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_learner(arch: str, device: torch.device, precision: str, batches: Any, norm: str = "train",
                 cbs: Any = None):
    """The model every row trains: `arch`'s body (random init) + fastai's head, channels_last, on `device`."""
    torch.manual_seed(0)
    return vision_learner(DataLoaders(batches), arch, pretrained=False, n_out=N_CLASSES, precision=precision,
                          norm=norm, device=device, channels_last=True, lr=LR, cbs=cbs)


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def quietly(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` with its progress output swallowed (the bar is part of the cost, not of the output)."""
    def run() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()
    return run


# --------------------------------------------------------------------------------------------- rows

def hand_loop(model: nn.Module, warm: Batches, batches: Batches, device: torch.device,
              dtype: Optional[torch.dtype], frozen_body: bool) -> float:
    """The hand-written loop: all trainable, or the body under no_grad (eval mode) and the head trained."""
    params = list(model.head.parameters()) if frozen_body else list(model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, fused=True if device.type == "cuda" else None)
    model.train()
    if frozen_body:
        model.body.eval()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if frozen_body:
            with torch.no_grad(), autocast(device, dtype):
                features = model.body(x)
            with autocast(device, dtype):
                loss = F.cross_entropy(model.head(features), y)
        else:
            with autocast(device, dtype):
                loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for x, y in warm:
        step(x, y)
    return timed(device, lambda: [step(x, y) for x, y in batches])


def fastfreeze_fit(arch: str, device: torch.device, precision: str, warm: Batches, batches: Batches,
                   frozen: bool, norm: str) -> float:
    learn = make_learner(arch, device, precision, warm, norm=norm)
    if frozen:
        learn.freeze()
    assert learn.frozen_groups == (learn.n_groups - 1 if frozen else 0), "the row does not train what it says"
    quietly(lambda: learn.fit(1))()
    learn.dls = DataLoaders(batches)
    return timed(device, quietly(lambda: learn.fit(1)))


def fastfreeze_cached(arch: str, device: torch.device, precision: str, x: torch.Tensor, y: torch.Tensor,
                      bs: int, warmup: int, epochs: int) -> tuple[float, float]:
    """(seconds for `epochs` cached frozen epochs, extraction included; seconds of the extraction)."""
    def loader(n: int) -> DataLoader:
        return DataLoader(DeviceImages(x[:n], y[:n]), batch_size=bs, shuffle=True, drop_last=True,
                          collate_fn=whole_batch, generator=torch.Generator().manual_seed(0))
    cache = FeatureCache(verbose=False)
    learn = make_learner(arch, device, precision, loader(max(warmup, 1) * bs), norm="frozen", cbs=cache)
    learn.freeze()
    quietly(lambda: learn.fit(1))()
    learn.dls = DataLoaders(loader(len(x)))
    seconds = timed(device, quietly(lambda: learn.fit(epochs)))
    if cache.info is None:
        raise RuntimeError("FeatureCache did not cache: the benchmark's setup is wrong")
    return seconds, cache.info["seconds"]


def measure(row: str, arch: str, device: torch.device, args: argparse.Namespace, x: torch.Tensor,
            y: torch.Tensor, warm: Batches, batches: Batches) -> dict[str, float]:
    """One row: images/s (and, for the cached row, head-only images/s) and peak memory in MiB."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    gc.collect()  # learners hold reference cycles (callbacks <-> learner): free the last row's memory now
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    n_images = len(batches) * args.bs
    out: dict[str, float] = {}
    if row.startswith("hand"):
        model = make_learner(arch, device, args.precision, warm).model
        seconds = hand_loop(model, warm, batches, device, dtype, frozen_body=row == "hand: body under no_grad")
    elif row == "ff: frozen, cached":
        seconds, extraction = fastfreeze_cached(arch, device, args.precision, x, y, args.bs, args.warmup,
                                                args.cached_epochs)
        n_images *= args.cached_epochs
        out["head_only"] = n_images / max(seconds - extraction, 1e-9)
    else:
        norm = "train" if row == "ff: frozen, norm='train'" else "frozen"
        seconds = fastfreeze_fit(arch, device, args.precision, warm, batches, frozen=row != "ff: unfrozen", norm=norm)
    out["ips"] = n_images / seconds
    out["mem"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return out


# ------------------------------------------------------------------------------------------- report

def report(arch: str, results: dict[str, list[dict[str, float]]], args: argparse.Namespace,
           device: torch.device) -> None:
    med = {row: statistics.median(r["ips"] for r in runs) for row, runs in results.items()}
    print(f"\n{arch}: images/s (median of {args.runs} alternating runs; every run listed)")
    print(f"  {'row':<28} {'images/s':>10} {'peak MiB':>9}  runs")
    for row, runs in results.items():
        mem = max(r["mem"] for r in runs)
        mem_s = f"{mem:9.0f}" if mem == mem else f"{'n/a':>9}"
        extra = ""
        if row == "ff: frozen, cached":
            head_only = statistics.median(r["head_only"] for r in runs)
            extra = f"  ({args.cached_epochs} epochs incl. extraction; head-only epochs {head_only:,.0f} images/s)"
        listed = ", ".join(f"{r['ips']:,.0f}" for r in runs)
        print(f"  {row:<28} {med[row]:>10,.0f} {mem_s}  {listed}{extra}")
    hand, nograd = med["hand: all trainable"], med["hand: body under no_grad"]
    frozen, frozen_train = med["ff: frozen, norm='frozen'"], med["ff: frozen, norm='train'"]
    anchor = FASTAI_ANCHORS.get(arch)
    fastai = lambda key_a, key_b: (f"   (fastai: {anchor[key_a] / anchor[key_b]:.2f}x)" if anchor else "")  # noqa: E731
    print(f"  ratios: unfrozen / hand                  {med['ff: unfrozen'] / hand:5.2f}x{fastai('unfrozen', 'hand')}")
    print(f"          frozen norm='frozen' / no_grad   {frozen / nograd:5.2f}x")
    print(f"          frozen norm='train'  / no_grad   {frozen_train / nograd:5.2f}x{fastai('frozen', 'no_grad')}")
    print(f"          cached / uncached frozen         {med['ff: frozen, cached'] / frozen:5.2f}x  "
          f"(over {args.cached_epochs} frozen epochs, extraction included)")
    if anchor and device.type == "cuda" and args.bs == 128 and args.size == 224:
        print(f"          frozen norm='train' vs fastai's {anchor['frozen']} images/s: "
              f"{frozen_train / anchor['frozen']:.2f}x  (norm='frozen': {frozen / anchor['frozen']:.2f}x; "
              f"fastai's anchors were measured on an H100)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+")
    for name, kind in (("bs", int), ("size", int), ("steps", int), ("warmup", int), ("runs", int),
                       ("cached-epochs", int)):
        parser.add_argument(f"--{name}", type=kind)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    for key, value in PRESETS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU: use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; {args.precision}, channels_last, batch {args.bs}, {args.size} px, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps per row, {args.runs} alternating runs, "
          f"random init, random data on the device")

    g = torch.Generator().manual_seed(0)
    n = args.steps * args.bs
    x = torch.randn(n, 3, args.size, args.size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, N_CLASSES, (n,), generator=g).to(device)
    batches = [(x[i:i + args.bs], y[i:i + args.bs]) for i in range(0, n, args.bs)]
    warm = batches[:args.warmup]
    if device.type == "cuda":
        print(f"resident data: {x.numel() * x.element_size() / 2**20:,.0f} MiB (counted in every peak)")

    for arch in args.archs:  # untimed: the process's first steps pay one-off costs (threads, kernels, cudnn search)
        measure("hand: all trainable", arch, device, args, x, y, warm, warm)
    results = {arch: {row: [] for row in ROWS} for arch in args.archs}
    for run in range(args.runs):
        order = ROWS[run % len(ROWS):] + ROWS[:run % len(ROWS)]  # rotated: no row is always first after a model switch
        for arch in args.archs:
            for row in order:
                results[arch][row].append(measure(row, arch, device, args, x, y, warm, batches))
        print(f"run {run + 1}/{args.runs} done", flush=True)
    for arch in args.archs:
        report(arch, results[arch], args, device)


if __name__ == "__main__":
    main()
