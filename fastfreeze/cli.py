"""The `fastfreeze` command line: `fastfreeze demo` (real weights, real images, offline),
`fastfreeze fine-tune DATA_DIR` for any image folder and `fastfreeze check DATA_DIR` to see what fine-tune would
read from it. Also `python -m fastfreeze`.

Every error is one line on stderr, `fastfreeze: error: <what, and what to do>`, with exit code 2 for a mistake in
the arguments and 1 for a run that failed; `--debug` adds the Python traceback."""
from __future__ import annotations

import argparse
import errno
import json
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from .cli_arguments import (FAILURE_EXIT, USAGE_EXIT, RunError, UsageError, check_arch, check_arguments,
                            check_data_dir, check_hub_weights_reachable, fraction, learning_rate, pretrained, seed,
                            whole_number)
from .cli_resume import RunArguments, check_resume_arguments, run_arguments
from .core.checkpoint import read_checkpoint
from .utils.files import WriteError, write_file
from .utils.folder_lock import FolderInUseError, FolderLock

DEMO_ARCH = "tf_efficientnet_lite0"
DEMO_WEIGHTS = "efficientnet-lite0"
CHECKPOINT_FILE = "checkpoint.pth"  # in --out: what --resume goes on from


def _close(figure: Any) -> None:
    """The command line only saves its plots: each figure is closed once saved, so that a process running
    several commands (a notebook, a test session) does not keep them all open."""
    import matplotlib.pyplot as plt
    plt.close(figure)


class CommandLineParser(argparse.ArgumentParser):
    """argparse, with its errors raised as `UsageError` (one line, exit code 2, printed by `main`)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message} (`{self.prog} --help` lists the arguments)")


def shown(text: str) -> str:
    """An option's help with its default (argparse fills in `%(default)s`)."""
    return f"{text} (default: %(default)s)"


def data_args(p: argparse.ArgumentParser, arch: str) -> None:
    """The options that decide the data (`fine-tune` and `check`)."""
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                   help="the image folder: DATA_DIR/train/<class>/<image> and DATA_DIR/valid/<class>/<image>, or "
                        "DATA_DIR/<class>/<image> with --valid-pct")
    p.add_argument("--arch", default=arch, help=shown("timm architecture (its preprocessing is the data's)"))
    p.add_argument("--size", type=whole_number(1, "pixels"), default=None,
                   help="input size in pixels (default: the architecture's)")
    p.add_argument("--bs", type=whole_number(1, "images per batch"), default=None,
                   help="batch size (default: 64, smaller when the training set is small)")
    p.add_argument("--seed", type=seed, default=0,
                   help=shown("seeds the split, the data order and augmentation, the initial head and dropout"))
    p.add_argument("--valid-pct", type=fraction, default=None,
                   help="hold out this fraction of each class of DATA_DIR/<class>/ for validation (default: use "
                        "DATA_DIR/train and DATA_DIR/valid)")
    p.add_argument("--workers", type=whole_number(0, "data loading processes"), default=None,
                   help="data loading processes (default: up to 4, one per CPU core)")
    p.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")


def training_args(p: argparse.ArgumentParser, epochs: int, tta: int) -> None:
    """The options of a training run (`demo` and `fine-tune`)."""
    p.add_argument("--epochs", type=whole_number(0, "unfrozen epochs"), default=epochs, help=shown("unfrozen epochs"))
    p.add_argument("--freeze-epochs", type=whole_number(0, "head-only epochs"), default=1,
                   help=shown("head-only epochs first"))
    p.add_argument("--lr", type=learning_rate, default="auto", help=shown("base learning rate, or 'auto'"))
    p.add_argument("--out", type=Path, default=Path("fastfreeze_out"),
                   help=shown("folder for plots, the model and the checkpoint (locked while a run uses it)"))
    p.add_argument("--no-bar", action="store_true", help="no progress bars (the epoch table still prints)")
    p.add_argument("--checkpoint-every", type=whole_number(0, "epochs; 0: never"), default=1, metavar="N",
                   help=shown("write OUT/checkpoint.pth every N epochs and at the end of each phase (0: never)"))
    p.add_argument("--resume", action="store_true",
                   help="go on from OUT/checkpoint.pth when there is one (same arguments as the interrupted run, "
                        "checked): the result is bit-identical to an uninterrupted run on the CPU")
    p.add_argument("--tta", type=whole_number(1, "views; 1: off"), default=tta, metavar="N",
                   help=shown("also measure the accuracy with test-time augmentation, N views averaged (1: off)"))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="fastfreeze", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,fine-tune,check}")

    demo = sub.add_parser("demo", help="fine-tune EfficientNet-Lite0 (real ImageNet weights) on Fashion-MNIST")
    demo.add_argument("--arch", default=DEMO_ARCH, help=shown("timm architecture"))
    demo.add_argument("--size", type=whole_number(1, "pixels"), default=96, help=shown("input size in pixels"))
    demo.add_argument("--bs", type=whole_number(1, "images per batch"), default=None,
                      help="batch size (default: 64, smaller when the training set is small)")
    demo.add_argument("--seed", type=seed, default=0,
                      help=shown("seeds the subset, the data order and augmentation, the initial head and dropout"))
    training_args(demo, epochs=3, tta=1)  # the demo shows fine-tuning: TTA on request
    demo.add_argument("--per-class", type=whole_number(1, "images"), default=300, help=shown("training images per class"))
    demo.add_argument("--valid-per-class", type=whole_number(1, "images"), default=200,
                      help=shown("test-split images per class for the per-epoch validation; the final accuracy "
                                 "is measured on the whole official test split"))
    demo.add_argument("--final-per-class", type=whole_number(1, "images"), default=None,
                      help="measure the final accuracy on this many test images per class (default: all 10,000)")
    demo.add_argument("--full", action="store_true", help="all 60,000 training images at 224 px (use a GPU)")
    demo.add_argument("--data", type=Path, default=None,
                      help="folder with the Fashion-MNIST IDX files (default: searched, see load_fashion_mnist)")
    demo.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    demo.set_defaults(out=Path("demo_out"))

    ft = sub.add_parser("fine-tune", help="fine-tune a timm model on an image folder (train/ and valid/ inside)")
    data_args(ft, "resnet18")
    training_args(ft, epochs=5, tta=4)
    ft.add_argument("--pretrained", type=pretrained, default=True,
                    help=shown("true (timm's hub), false, a local .pth/.safetensors file, or 'efficientnet-lite0'"))

    check = sub.add_parser("check", help="build the data as fine-tune would and summarise it, without training")
    data_args(check, "resnet18")
    return parser


@dataclass
class RunFolder:
    """--out while a run holds its lock: the checkpoint to resume from (None: start afresh), the base lr its run
    chose, and whether the run's checkpoints keep its arguments (not when resuming from a checkpoint written
    without them)."""
    resume_from: Optional[Path]
    record_arguments: bool
    resumed_base_lr: Optional[float] = None


@contextmanager
def run_folder(args: argparse.Namespace) -> Iterator[RunFolder]:
    """Lock `--out` for this run (a second run is refused, naming the pid; a lock left by a killed run is taken
    over with a note) and, with `--resume`, check that the checkpoint there was written with these arguments."""
    lock = FolderLock(args.out, what="another fastfreeze run")
    try:
        lock.acquire()
    except FolderInUseError as e:
        owner = f"pid {e.pid}" if e.pid is not None else "a process starting up"
        raise RunError(f"--out {args.out} is in use by another fastfreeze run ({owner}): wait for it to end, or "
                       "pass another --out") from e
    try:
        if lock.taken_over is not None:
            print(f"fastfreeze: note: {args.out} was locked by pid {lock.taken_over}, which no longer runs (killed?): "
                  "this run takes it over", file=sys.stderr)
        checkpoint = args.out / CHECKPOINT_FILE
        if args.resume and checkpoint.exists():
            state = read_checkpoint(checkpoint)  # read once: the arguments now, the base lr for the run
            recorded = check_resume_arguments(checkpoint, state, args)
            yield RunFolder(checkpoint, record_arguments=recorded is not None,
                            resumed_base_lr=state["loop"]["fine_tune_state"]["base_lr"])
        else:
            yield RunFolder(None, record_arguments=True)
    finally:
        lock.release()


def _train_and_report(learn: Any, args: argparse.Namespace, started: float, folder: RunFolder,
                      final_dl: Any = None, final_name: str = "validation set") -> dict[str, Any]:
    """fine_tune, then print the results and save plots and the model in `args.out`; the final accuracy is
    measured on `final_dl` when given (e.g. a whole test split), else on the validation set, plainly and, with
    `--tta N` (N > 1), with test-time augmentation too; the confusion matrix and the top losses are saved as plots."""
    import torch

    from .core.checkpoint import CheckpointCallback
    from .inference.interpret import ClassificationInterpretation
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    before = learn.validate()
    print(f"before fine-tuning: valid_loss {before[0]:.4f}, accuracy {before[1]:.4f} (random head)")
    learn.show_groups()
    checkpoint = out / CHECKPOINT_FILE
    resume_from, base_lr = folder.resume_from, args.lr
    if resume_from is not None:
        base_lr = folder.resumed_base_lr
        print(f"resuming from {resume_from}")
    elif args.resume:
        print(f"--resume: no checkpoint at {checkpoint} yet, starting from the beginning")
    cbs = [CheckpointCallback(checkpoint, every=args.checkpoint_every)] if args.checkpoint_every else []
    if folder.record_arguments:
        cbs.append(RunArguments(run_arguments(args)))
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
    results = {"arch": learn.arch, "torch_threads": torch.get_num_threads(), "accuracy_before": before[1], "accuracy": after[1], "valid_loss": after[0],
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
    import torch

    from .data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, stratified_subset
    from .data.image_data import ImageDataLoaders
    from .core.metrics import accuracy
    from .utils.seeds import set_seed
    from .vision import vision_learner
    started = time.perf_counter()
    check_arguments(args)
    weights = DEMO_WEIGHTS if args.arch == DEMO_ARCH else True
    if weights is True:
        check_hub_weights_reachable(args.arch)
    try:
        x_train, y_train, x_test, y_test = load_fashion_mnist(args.data)
    except FileNotFoundError as e:
        raise RunError(str(e)) from e
    with run_folder(args) as folder:
        if args.full:
            size = 224 if args.size == 96 else args.size
            idx = np.arange(len(y_train))
        else:
            size = args.size
            idx = stratified_subset(y_train, args.per_class, seed=args.seed)
        valid_idx = stratified_subset(y_test, args.valid_per_class, seed=0)
        print(f"Fashion-MNIST: {len(idx)} training images ({len(idx) // 10} per class); per-epoch validation on "
              f"{len(valid_idx)} images of the official test split, final accuracy on all {len(y_test)}; {size} px; "
              f"{DEMO_ARCH} with its ImageNet weights; {torch.get_num_threads()} torch threads (results differ "
              f"with another count: docs/reproducibility.md)")
        set_seed(args.seed)
        dls = ImageDataLoaders.from_arrays(x_train[idx], y_train[idx], x_test[valid_idx], y_test[valid_idx],
                                           vocab=FASHION_MNIST_CLASSES, arch=DEMO_ARCH, size=size, bs=args.bs,
                                           augment=True, seed=args.seed)
        _close(dls.show_batch(path=args.out / "batch.png"))
        learn = _learner(vision_learner, dls, args.arch, weights, metrics=accuracy)
        _quiet_bars(learn, args.no_bar)
        if args.final_per_class is None:
            test_dl = dls.test_dl(x_test, y_test, bs=256)
            name = f"official Fashion-MNIST test split ({len(y_test)} images)"
        else:
            final_idx = stratified_subset(y_test, args.final_per_class, seed=1)
            test_dl = dls.test_dl(x_test[final_idx], y_test[final_idx], bs=256)
            name = f"official Fashion-MNIST test split ({len(final_idx)} of its {len(y_test)} images, stratified)"
        return _train_and_report(learn, args, started, folder, final_dl=test_dl, final_name=name)


def folder_data(args: argparse.Namespace, check: bool = False) -> Any:
    """The DataLoaders of DATA_DIR as `fine-tune` and `check` build them (`check=True` decodes every image first)."""
    from .data.image_data import ImageDataLoaders
    return ImageDataLoaders.from_folder(args.data_dir, valid_pct=args.valid_pct, seed=args.seed, bs=args.bs,
                                       size=args.size, arch=args.arch, num_workers=args.workers, check=check)


def _learner(vision_learner: Any, dls: Any, arch: str, weights: Any, **kwargs: Any) -> Any:
    """`vision_learner`, with a failed download of timm's weights said in the command line's terms."""
    try:
        return vision_learner(dls, arch, pretrained=weights, **kwargs)
    except RuntimeError as e:
        if weights is True and str(e).startswith("could not fetch timm's pretrained weights"):
            cause = e.__cause__
            raise RunError(f"could not download timm's weights for {arch!r} ({type(cause).__name__}): pass "
                           "--pretrained false (random weights) or --pretrained path/to/weights.safetensors|.pth, or "
                           "fill the Hugging Face cache (HF_HOME) on a machine with internet") from e
        raise


def run_fine_tune(args: argparse.Namespace) -> dict[str, Any]:
    from .core.metrics import accuracy
    from .utils.seeds import set_seed
    from .vision import vision_learner  # looked up when it runs (the fault-injection harness wraps it)
    started = time.perf_counter()
    check_arguments(args)
    with run_folder(args) as folder:
        set_seed(args.seed)
        dls = folder_data(args)
        print(f"{args.data_dir}: {len(dls.vocab)} classes ({', '.join(dls.vocab[:10])}"
              f"{', ...' if len(dls.vocab) > 10 else ''})")
        learn = _learner(vision_learner, dls, args.arch, args.pretrained, metrics=accuracy)
        _quiet_bars(learn, args.no_bar)
        return _train_and_report(learn, args, started, folder)


def run_check(args: argparse.Namespace) -> None:
    """`fastfreeze check DATA_DIR`: the data as `fine-tune` would read it, summarised by the data layer's own
    report (`dls.summary()`: items per class and split, what was skipped and why, the warnings), with the batch
    and input size; nothing is trained. The data's warnings are printed once, in the summary."""
    check_data_dir(args.data_dir)
    check_arch(args.arch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dls = folder_data(args, check=True)
    report = dls.summary(show=False)
    for w in caught:  # anything else than the data's own warnings is shown as usual
        if str(w.message) not in report.notes:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    layout = ("train/ and valid/" if args.valid_pct is None else
              f"one folder per class, {args.valid_pct:.0%} of each held out for validation")
    size = "x".join(str(s) for s in dls.data_config["input_size"][-2:])
    print(f"{args.data_dir} ({layout})")
    print(report.text())
    print(f"batch size {dls.train.batch_size} ({len(dls.train)} training batches per epoch), input {size} px")
    print(f"fastfreeze fine-tune can train on {args.data_dir}" + (" (see the warnings above)" if report.notes else ""))


COMMANDS = {"demo": run_demo, "fine-tune": run_fine_tune, "check": run_check}


def one_line(text: str) -> str:
    """`text` with its lines joined: an error is printed on one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_line(error: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ended a command."""
    if isinstance(error, UsageError):
        return USAGE_EXIT, one_line(str(error))
    if isinstance(error, WriteError):  # a disk or folder that refused a write, said in words by utils.files
        return FAILURE_EXIT, one_line(f"{error} On the command line the folder is --out; once it can be written, rerun "
                                      "the same command with --resume to go on from the last checkpoint")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return FAILURE_EXIT, one_line(f"{error}: the disk is full; free some space (or pass --out on another disk) "
                                      "and rerun with --resume to go on from the last checkpoint")
    if isinstance(error, (RunError, ValueError, TypeError, OSError, RuntimeError, FloatingPointError)):
        message = str(error) or type(error).__name__
        return FAILURE_EXIT, one_line(message)
    return FAILURE_EXIT, one_line(f"{type(error).__name__}: {error} (unexpected: rerun with --debug for the "
                                  "traceback, and report it)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command `argv` (default: sys.argv[1:]); return its exit code: 0, 1 (the run failed) or 2 (a
    mistake in the arguments), each error printed as one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("fastfreeze: interrupted: rerun the same command with --resume to go on from the last checkpoint",
              file=sys.stderr)
        return 130
    except Exception as e:
        code, line = error_line(e)
        if "--debug" in argv:
            traceback.print_exc()
        print(f"fastfreeze: error: {line}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
