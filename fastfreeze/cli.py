"""The `fastfreeze` command line: `fastfreeze demo` (real weights, real images, offline) and
`fastfreeze fine-tune DATA_DIR` for any image folder. Also `python -m fastfreeze`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

DEMO_ARCH = "tf_efficientnet_lite0"
DEMO_WEIGHTS = "efficientnet-lite0"
CHECKPOINT_FILE = "checkpoint.pth"  # in --out: what --resume goes on from


def _close(figure: Any) -> None:
    """The command line only saves its plots: each figure is closed once saved, so that a process running
    several commands (a notebook, a test session) does not keep them all open."""
    import matplotlib.pyplot as plt
    plt.close(figure)


def _lr(text: str) -> Union[str, float]:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr takes a number or 'auto', got {text!r}") from None


def _pretrained(text: str) -> Union[bool, str]:
    return {"true": True, "false": False}.get(text.lower(), text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastfreeze", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)

    def training_args(p: argparse.ArgumentParser, arch: str, epochs: int, size: Optional[int], tta: int) -> None:
        p.add_argument("--arch", default=arch, help=f"timm architecture (default {arch})")
        p.add_argument("--epochs", type=int, default=epochs, help="unfrozen epochs")
        p.add_argument("--freeze-epochs", type=int, default=1, help="head-only epochs first")
        p.add_argument("--lr", type=_lr, default="auto", help="base learning rate, or 'auto' (default)")
        p.add_argument("--bs", type=int, default=None,
                       help="batch size (default: 64, smaller when the training set is small)")
        p.add_argument("--size", type=int, default=size, help="input size in pixels")
        p.add_argument("--seed", type=int, default=0,
                       help="seeds the data order and augmentation, the initial head and dropout (default 0)")
        p.add_argument("--out", type=Path, default=Path("fastfreeze_out"), help="folder for plots and the model")
        p.add_argument("--no-bar", action="store_true", help="no progress bars (the epoch table still prints)")
        p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                       help="write OUT/checkpoint.pth every N epochs and at the end of each phase (default 1; 0: never)")
        p.add_argument("--resume", action="store_true",
                       help="go on from OUT/checkpoint.pth when there is one (same arguments as the interrupted run): "
                            "the result is bit-identical to an uninterrupted run on the CPU")
        p.add_argument("--tta", type=int, default=tta, metavar="N",
                       help=f"also measure the accuracy with test-time augmentation, N views averaged (default "
                            f"{tta if tta > 1 else 'off'}; 1 skips it)")

    demo = sub.add_parser("demo", help="fine-tune EfficientNet-Lite0 (real ImageNet weights) on Fashion-MNIST")
    training_args(demo, DEMO_ARCH, epochs=3, size=96, tta=1)  # the demo shows fine-tuning: TTA on request
    demo.add_argument("--per-class", type=int, default=300, help="training images per class (default 300)")
    demo.add_argument("--valid-per-class", type=int, default=200,
                      help="test-split images per class for the per-epoch validation (default 200); the final "
                           "accuracy is measured on the whole official test split")
    demo.add_argument("--final-per-class", type=int, default=None,
                      help="measure the final accuracy on this many test images per class (default: all 10,000)")
    demo.add_argument("--full", action="store_true", help="all 60,000 training images at 224 px (use a GPU)")
    demo.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX files")
    demo.set_defaults(out=Path("demo_out"))

    ft = sub.add_parser("fine-tune", help="fine-tune a timm model on an image folder (train/ and valid/ inside)")
    ft.add_argument("data_dir", type=Path)
    training_args(ft, "resnet18", epochs=5, size=None, tta=4)
    ft.add_argument("--pretrained", type=_pretrained, default=True,
                    help="true (timm hub), false, a local .pth/.safetensors file, or 'efficientnet-lite0'")
    ft.add_argument("--valid-pct", type=float, default=None, help="split DATA_DIR/<class>/ instead of train/valid")
    ft.add_argument("--workers", type=int, default=None, help="data loading processes")
    return parser


def _train_and_report(learn: Any, args: argparse.Namespace, started: float,
                      final_dl: Any = None, final_name: str = "validation set") -> dict[str, Any]:
    """fine_tune, then print the results and save plots and the model in `args.out`; the final accuracy is
    measured on `final_dl` when given (e.g. a whole test split), else on the validation set, plainly and, with
    `--tta N` (N > 1), with test-time augmentation too; the confusion matrix and the top losses are saved as plots."""
    from .core.checkpoint import CheckpointCallback, read_checkpoint
    from .inference.interpret import ClassificationInterpretation
    from .utils.files import write_file
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    before = learn.validate()
    print(f"before fine-tuning: valid_loss {before[0]:.4f}, accuracy {before[1]:.4f} (random head)")
    learn.show_groups()
    checkpoint = out / CHECKPOINT_FILE
    resume_from, base_lr = None, args.lr
    if args.resume and checkpoint.exists():
        resume_from = checkpoint
        base_lr = read_checkpoint(checkpoint)["loop"]["fine_tune_state"]["base_lr"]
        print(f"resuming from {checkpoint}")
    elif args.resume:
        print(f"--resume: no checkpoint at {checkpoint} yet, starting from the beginning")
    cbs = [CheckpointCallback(checkpoint, every=args.checkpoint_every)] if args.checkpoint_every else []
    fit_start = time.perf_counter()
    learn.fine_tune(args.epochs, base_lr=args.lr, freeze_epochs=args.freeze_epochs, cbs=cbs, resume_from=resume_from)
    fit_seconds = time.perf_counter() - fit_start
    interp = ClassificationInterpretation.from_learner(learn, final_dl)  # one pass: predictions and losses
    after = [float(interp.losses.mean()), float((interp.preds == interp.targs).float().mean())]
    _close(interp.plot_confusion_matrix(path=out / "confusion_matrix.png"))
    _close(interp.plot_top_losses(9, path=out / "top_losses.png"))
    tta_accuracy = None
    if args.tta > 1:
        tta_start = time.perf_counter()
        tta_probs, tta_targs = learn.tta(final_dl, n=args.tta)
        tta_accuracy = float((tta_probs.argmax(1) == tta_targs).float().mean())
        print(f"test-time augmentation ({args.tta} views, {time.perf_counter() - tta_start:.0f} s): accuracy "
              f"{tta_accuracy:.4f}, plain {after[1]:.4f}")
    choice = learn.fine_tune_choice
    probe_kept = choice is not None and choice.probe_kept
    if not probe_kept:  # a kept probe ran no epoch: no loss or lr curve to draw
        _close(learn.recorder.plot_loss(path=out / "loss.png"))
        _close(learn.recorder.plot_sched(path=out / "lr_schedule.png"))
    if learn.recorder.lr_find_results is not None:
        _close(learn.recorder.plot_lr_find(path=out / "lr_find.png"))
    model_file = _save_model(learn, out)
    results = {"arch": learn.arch, "accuracy_before": before[1], "accuracy": after[1], "valid_loss": after[0],
               "evaluated_on": final_name,
               "fine_tune_seconds": round(fit_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
               "base_lr": (learn.auto_lr or {}).get("base_lr", base_lr), "epochs": args.epochs,
               "freeze_epochs": args.freeze_epochs, "model": str(model_file),
               "probe_kept": probe_kept, "decision": choice.reason if choice is not None else None,
               "tta_accuracy": tta_accuracy, "tta_views": args.tta if args.tta > 1 else None,
               "most_confused": [list(pair) for pair in interp.most_confused()[:5]]}
    write_file(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    kept = " (probe kept: the head fitted on cached body features, the body not trained)" if probe_kept else ""
    print(f"after fine-tuning : loss {after[0]:.4f}, accuracy {after[1]:.4f} on the {final_name}{kept}")
    print("most confused (actual, predicted, count): " +
          ", ".join(f"{a} as {p} {n}" for a, p, n in interp.most_confused()[:5]))
    print(f"took {results['total_seconds']:.0f} s in all, fine_tune {fit_seconds:.0f} s of it; plots (confusion "
          f"matrix, top losses), model and results.json in {out}/")
    return results


def _save_model(learn: Any, out: Path) -> Path:
    export = getattr(learn, "export", None)
    if export is not None:
        return export(out / "model")
    return learn.save(out / "model.pth", with_opt=False)


def _quiet_bars(learn: Any, no_bar: bool) -> None:
    """`--no-bar`: no per-batch bars; the per-epoch table still prints."""
    from .core.progress import ProgressCallback
    if no_bar:
        for cb in learn.cbs:
            if isinstance(cb, ProgressCallback):
                cb.batch_bars = False


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from .data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, stratified_subset
    from .data.image_data import ImageDataLoaders
    from .core.metrics import accuracy
    from .vision import vision_learner
    started = time.perf_counter()
    try:
        x_train, y_train, x_test, y_test = load_fashion_mnist(args.data)
    except FileNotFoundError as e:
        sys.exit(f"fastfreeze demo: {e}")
    if args.full:
        size = 224 if args.size == 96 else args.size
        idx = np.arange(len(y_train))
    else:
        size = args.size
        idx = stratified_subset(y_train, args.per_class, seed=args.seed)
    valid_idx = stratified_subset(y_test, args.valid_per_class, seed=0)
    print(f"Fashion-MNIST: {len(idx)} training images ({len(idx) // 10} per class); per-epoch validation on "
          f"{len(valid_idx)} images of the official test split, final accuracy on all {len(y_test)}; {size} px; "
          f"{DEMO_ARCH} with its ImageNet weights")
    from .utils.seeds import set_seed
    set_seed(args.seed)
    dls = ImageDataLoaders.from_arrays(x_train[idx], y_train[idx], x_test[valid_idx], y_test[valid_idx],
                                       vocab=FASHION_MNIST_CLASSES, arch=DEMO_ARCH, size=size, bs=args.bs,
                                       augment=True, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    _close(dls.show_batch(path=args.out / "batch.png"))
    learn = vision_learner(dls, args.arch, pretrained=DEMO_WEIGHTS if args.arch == DEMO_ARCH else True,
                           metrics=accuracy)
    _quiet_bars(learn, args.no_bar)
    if args.final_per_class is None:
        test_dl, name = dls.test_dl(x_test, y_test, bs=256), f"official Fashion-MNIST test split ({len(y_test)} images)"
    else:
        final_idx = stratified_subset(y_test, args.final_per_class, seed=1)
        test_dl = dls.test_dl(x_test[final_idx], y_test[final_idx], bs=256)
        name = f"official Fashion-MNIST test split ({len(final_idx)} of its {len(y_test)} images, stratified)"
    return _train_and_report(learn, args, started, final_dl=test_dl, final_name=name)


def run_fine_tune(args: argparse.Namespace) -> dict[str, Any]:
    from .data.image_data import ImageDataLoaders
    from .core.metrics import accuracy
    from .utils.seeds import set_seed
    from .vision import vision_learner
    started = time.perf_counter()
    set_seed(args.seed)
    dls = ImageDataLoaders.from_folder(args.data_dir, valid_pct=args.valid_pct, seed=args.seed, bs=args.bs,
                                       size=args.size, arch=args.arch, num_workers=args.workers)
    print(f"{args.data_dir}: {len(dls.vocab)} classes ({', '.join(dls.vocab[:10])}"
          f"{', ...' if len(dls.vocab) > 10 else ''})")
    learn = vision_learner(dls, args.arch, pretrained=args.pretrained, metrics=accuracy)
    _quiet_bars(learn, args.no_bar)
    return _train_and_report(learn, args, started)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.checkpoint_every < 0:
        build_parser().error(f"--checkpoint-every takes a number of epochs >= 0, got {args.checkpoint_every}")
    try:
        if args.command == "demo":
            run_demo(args)
        else:
            run_fine_tune(args)
    except FloatingPointError as e:  # divergence: the message says what happened and what to try
        sys.exit(f"fastfreeze {args.command}: {e}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
