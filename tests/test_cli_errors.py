"""What a user of the command line sees when something is wrong: one line on stderr, `fastfreeze: error: ...`,
saying what to do, exit code 2 for a mistake in the arguments and 1 for a run that failed, the traceback only
with --debug. Each case runs `main(argv)` in this process; the mistakes are caught before any data or model is
built (`folder_data` and `vision_learner` are replaced by functions that fail the test)."""
import errno
import os
import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import fastfreeze.cli as cli
import fastfreeze.cli_arguments as cli_arguments
import fastfreeze.vision
from fastfreeze.cli import build_parser, error_line, main
from helpers import grey_class_folders
from fastfreeze.cli_arguments import RunError, check_hub_weights_reachable
from fastfreeze.cli_resume import STATE_KEY, check_resume_arguments, run_arguments
from fastfreeze.core.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_checkpoint
from fastfreeze.utils.files import WriteError, write_file
from fastfreeze.utils.folder_lock import LOCK_NAME, FolderLock

TINY = ["--arch", "test_resnet", "--pretrained", "false", "--size", "32", "--bs", "4", "--workers", "0", "--no-bar"]


def tiny_folder(root: Path, classes=("dark", "light"), n_train=8, n_valid=4) -> Path:
    """Noisy grey 12x12 images of `classes` (`grey_class_folders`)."""
    return grey_class_folders(root, classes=classes, n_train=n_train, n_valid=n_valid)


def run(argv, capsys):
    """`(exit code, stdout, stderr)` of `fastfreeze argv`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The message of the single line on stderr (the test fails if there is any other line)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastfreeze: error: "), err
    return lines[0].removeprefix("fastfreeze: error: ")


@pytest.fixture
def nothing_built(monkeypatch):
    """The command must stop before building the data or the model."""
    def fail(*args, **kwargs):
        raise AssertionError("built something heavy before the arguments were checked")
    monkeypatch.setattr(cli, "folder_data", fail)
    monkeypatch.setattr(fastfreeze.vision, "vision_learner", fail)


@pytest.fixture
def offline(monkeypatch):
    """No weights cached and huggingface.co unreachable; records the timeouts the check used."""
    timeouts = []

    def refuse(address, timeout=None):
        timeouts.append((address, timeout))
        raise OSError(errno.ENETUNREACH, "Network is unreachable")
    monkeypatch.setattr(cli_arguments, "hub_weights_cached", lambda arch: False)
    monkeypatch.setattr(cli_arguments.socket, "create_connection", refuse)
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return timeouts


USAGE_MISTAKES = [  # (arguments after DATA_DIR, or None for no DATA_DIR at all), words the one line must hold
    (None, ["the following arguments are required: DATA_DIR", "`fastfreeze fine-tune --help`"]),
    (["--lr", "nan"], ["argument --lr: expected a finite number > 0 or 'auto', got 'nan'", "e.g. --lr 1e-3"]),
    (["--lr", "-0.1"], ["argument --lr: expected a finite number > 0", "got '-0.1'"]),
    (["--epochs", "-1"], ["argument --epochs: expected a whole number >= 0 (unfrozen epochs), got '-1'"]),
    (["--epochs", "2.5"], ["argument --epochs: expected a whole number >= 0", "got '2.5'"]),
    (["--size", "0"], ["argument --size: expected a whole number >= 1 (pixels), got '0'"]),
    (["--bs", "0"], ["argument --bs: expected a whole number >= 1 (images per batch), got '0'"]),
    (["--workers", "-1"], ["argument --workers: expected a whole number >= 0 (data loading processes), got '-1'"]),
    (["--valid-pct", "20"], ["argument --valid-pct: expected a fraction between 0 and 1", "e.g. --valid-pct 0.2"]),
    (["--tta", "0"], ["argument --tta: expected a whole number >= 1 (views; 1: off), got '0'"]),
    (["--seed", "-3"], ["argument --seed: expected a whole number in [0, 4294967295], got '-3'"]),
    (["--arch", "resnet5O", "--pretrained", "false"],
     ["unknown --arch 'resnet5O': timm has no such architecture (close names: resnet50,", "timm.list_models("]),
    (["--pretrained", "weights/missing.pth", "--arch", "test_resnet"],
     ["--pretrained weights/missing.pth: no such file; pass true (timm's hub), false (random weights), a "
      ".safetensors/.pth", "efficientnet-lite0"]),
]


@pytest.mark.parametrize("extra, words", USAGE_MISTAKES, ids=[" ".join(e or ["no DATA_DIR"]) for e, _ in USAGE_MISTAKES])
def test_a_mistake_in_the_arguments_is_one_line_and_exit_code_2(tmp_path, capsys, nothing_built, extra, words):
    data = tiny_folder(tmp_path / "data")
    argv = ["fine-tune"] if extra is None else ["fine-tune", data, "--out", tmp_path / "out", *extra]
    code, out, err = run(argv, capsys)
    message = one_error_line(err)
    assert code == 2 and out == ""
    for w in words:
        assert w in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_data_dir_and_out_that_are_not_folders(tmp_path, capsys, nothing_built):
    data = tiny_folder(tmp_path / "data")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    cases = [([tmp_path / "nowhere"], f"DATA_DIR {tmp_path / 'nowhere'} does not exist: pass the folder that holds "
                                      "train/<class>/ and valid/<class>/ (or one folder per class, with --valid-pct 0.2)"),
             ([a_file], f"DATA_DIR {a_file} is a file, not a folder: pass the folder"),
             ([data, "--out", a_file], f"--out {a_file} is a file: --out names a folder (created if missing) for the "
                                       "plots, the model and the checkpoint; pass another path"),
             ([data, "--out", a_file / "run1"], f"--out {a_file / 'run1'} cannot be created: {a_file} is a file")]
    for argv, expected in cases:
        code, _, err = run(["fine-tune", *argv, *TINY], capsys)
        assert code == 2 and one_error_line(err).startswith(expected), err


def test_a_failed_run_is_one_line_and_exit_code_1_and_debug_adds_the_traceback(tmp_path, capsys):
    data = tiny_folder(tmp_path / "data", classes=("cats",))  # a single class: the data cannot train a classifier
    argv = ["fine-tune", data, "--out", tmp_path / "out", *TINY]
    code, _, err = run(argv, capsys)
    assert code == 1 and "the training labels hold a single class ('cats'" in one_error_line(err)
    assert not (tmp_path / "out").exists()  # the run created --out for its lock, and removed it, empty
    code, _, err = run([*argv, "--debug"], capsys)
    assert code == 1 and err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("fastfreeze: error: the training labels hold a single class")


def test_error_lines_for_a_full_disk_and_an_unexpected_error():
    code, line = error_line(OSError(errno.ENOSPC, "No space left on device"))
    assert code == 1 and line == ("[Errno 28] No space left on device: the disk is full; free some space (or pass "
                                  "--out on another disk) and rerun with --resume to go on from the last checkpoint")
    code, line = error_line(KeyError("x"))
    assert code == 1 and line == "KeyError: 'x' (unexpected: rerun with --debug for the traceback, and report it)"
    assert error_line(ValueError("first line\n  second line\n")) == (1, "first line second line")


def test_a_write_the_disk_refuses_is_one_line_in_words_and_exit_code_1(tmp_path, capsys, monkeypatch):
    """Every write into --out is refused (disk full): the checkpoints warn and training goes on (as in the library),
    the first plot ends the run with utils.files' WriteError in words, on one line, and the --resume advice."""
    data, out = tiny_folder(tmp_path / "data"), tmp_path / "out"
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).startswith(str(out)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.warns(UserWarning, match="the checkpoint after epoch 1 of 'frozen' was not written; training goes on"):
        code, _, err = run(["fine-tune", data, "--out", out, *TINY, "--epochs", "1", "--lr", "1e-3", "--tta", "1"],
                           capsys)
    line = one_error_line(err)
    assert code == 1 and line.startswith(f"could not write the file {out / 'confusion_matrix.png'}: the disk is full "
                                         f"(no space left on device)")
    assert line.count("the disk is full") == 1  # said once, not once by the library and again by the command line
    assert line.endswith("On the command line the folder is --out; once it can be written, rerun the same command "
                         "with --resume to go on from the last checkpoint")
    assert not out.exists()  # nothing half-written, no temporary file; the lock's empty folder removed
    refused = PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(WriteError) as permission:
        write_file(out / "results.json", lambda tmp: (_ for _ in ()).throw(refused))
    code, line = error_line(permission.value)
    assert code == 1 and line.startswith(f"could not write the file {out / 'results.json'}: permission denied: this "
                                         f"process may not write in {out}")


def test_ctrl_c_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "check", interrupted)
    code, _, err = run(["check", tmp_path], capsys)
    assert code == 130 and err == ("fastfreeze: interrupted: rerun the same command with --resume to go on from the "
                                   "last checkpoint\n")


def test_help_shows_each_default_and_describes_data_dir(capsys):
    code, out, _ = run(["fine-tune", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0
    assert "DATA_DIR the image folder: DATA_DIR/train/<class>/<image> and DATA_DIR/valid/<class>/<image>" in text
    for option, default in (("--epochs EPOCHS unfrozen epochs", "5"), ("--freeze-epochs FREEZE_EPOCHS head-only "
                            "epochs first", "1"), ("--lr LR base learning rate, or 'auto'", "auto"),
                            ("--arch ARCH timm architecture (its preprocessing is the data's)", "resnet18"),
                            ("--seed SEED seeds the split, the data order and augmentation, the initial head and "
                             "dropout", "0"), ("(0: never)", "1"), ("N views averaged (1: off)", "4"),
                            ("'efficientnet-lite0'", "True")):
        assert f"{option} (default: {default})" in text, option
    assert "default: None" not in text and "(default: 64, smaller when the training set is small)" in text
    code, out, _ = run(["check", "--help"], capsys)
    assert code == 0 and "DATA_DIR the image folder" in " ".join(out.split())


# ------------------------------------------------------------------------------------- --pretrained true offline

def test_offline_pretrained_true_fails_fast_in_one_line(tmp_path, capsys, nothing_built, offline):
    data = tiny_folder(tmp_path / "data")
    started = time.perf_counter()
    code, _, err = run(["fine-tune", data, "--out", tmp_path / "out"], capsys)  # the defaults: resnet18, true
    assert time.perf_counter() - started < 5
    assert code == 1 and offline == [(("huggingface.co", 443), 3.0)]  # one connection tried, 3 s at most
    assert one_error_line(err) == (
        "--pretrained true downloads timm's weights for 'resnet18' from huggingface.co, which cannot be reached "
        "(OSError: [Errno 101] Network is unreachable): pass --pretrained false (random weights), or --pretrained "
        "path/to/weights.safetensors|.pth (a file downloaded elsewhere), or run once with internet to fill the "
        "Hugging Face cache (HF_HOME)")


def test_offline_by_hf_hub_offline_and_the_cases_left_to_timm(offline, monkeypatch):
    with pytest.raises(RunError, match=r"not in the Hugging Face cache, and HF_HUB_OFFLINE is set: unset it to "
                                       r"download them, or pass --pretrained false"):
        check_hub_weights_reachable("resnet18", env={"HF_HUB_OFFLINE": "1"})
    assert offline == []  # no connection tried: the user said there is none
    check_hub_weights_reachable("resnet18", env={"HTTPS_PROXY": "http://proxy:3128"})  # a proxy: timm decides
    check_hub_weights_reachable("hf-hub:someone/model", env={})  # a Hub name: its own error (utils/hub.py)
    assert offline == []
    with pytest.raises(RunError, match=r"from mirror\.example\.org, which cannot be reached"):
        check_hub_weights_reachable("resnet18", env={"HF_ENDPOINT": "https://mirror.example.org"})
    monkeypatch.setattr(cli_arguments, "hub_weights_cached", lambda arch: arch == "resnet18")
    check_hub_weights_reachable("resnet18", env={"HF_HUB_OFFLINE": "1"})  # cached: fine offline
    assert offline == [(("mirror.example.org", 443), 3.0)]


def test_a_download_that_fails_in_timm_is_said_in_command_line_terms():
    def vision_learner(dls, arch, pretrained, **kwargs):
        raise RuntimeError("could not fetch timm's pretrained weights for 'resnet18' (...)") from TimeoutError("slow")
    with pytest.raises(RunError, match=r"could not download timm's weights for 'resnet18' \(TimeoutError\): pass "
                                       r"--pretrained false \(random weights\) or --pretrained path/to/weights"):
        cli._learner(vision_learner, None, "resnet18", True)


# ------------------------------------------------------------------------------------- --out locked

def test_a_second_run_into_the_same_out_is_refused_naming_the_pid(tmp_path, capsys, nothing_built):
    data = tiny_folder(tmp_path / "data")
    with FolderLock(tmp_path / "out"):  # a run in progress (this process: its pid)
        code, _, err = run(["fine-tune", data, "--out", tmp_path / "out", *TINY], capsys)
    assert code == 1 and one_error_line(err) == (f"--out {tmp_path / 'out'} is in use by another fastfreeze run (pid "
                                                 f"{os.getpid()}): wait for it to end, or pass another --out")


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path, capsys):
    data = tiny_folder(tmp_path / "data", classes=("cats",))  # the run stops at the data, after taking the lock
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text("999999999\n")  # a pid no process has, and no flock held
    code, _, err = run(["fine-tune", data, "--out", tmp_path / "out", *TINY], capsys)
    note, error = err.splitlines()
    assert note == (f"fastfreeze: note: {tmp_path / 'out'} was locked by pid 999999999, which no longer runs "
                    "(killed?): this run takes it over")
    assert code == 1 and error.startswith("fastfreeze: error: the training labels hold a single class")
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released at the end


# ------------------------------------------------------------------------------------- --resume with other arguments

def checkpoint_with_arguments(path: Path, argv) -> Path:
    """A checkpoint file as the command writes it, holding only what the argument check reads."""
    args = build_parser().parse_args([str(a) for a in argv])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "callbacks": {STATE_KEY: run_arguments(args)}}, path)
    return path


def test_resume_with_other_arguments_names_each_and_says_what_to_pass(tmp_path, capsys, nothing_built):
    data = tiny_folder(tmp_path / "data")
    out = tmp_path / "out"
    checkpoint_with_arguments(out / "checkpoint.pth", ["fine-tune", data, *TINY, "--epochs", "3", "--valid-pct", "0.2"])
    code, _, err = run(["fine-tune", data, "--out", out, *TINY, "--epochs", "2", "--seed", "5", "--resume"], capsys)
    assert code == 2 and one_error_line(err) == (
        f"--resume: {out / 'checkpoint.pth'} was written by a run with other arguments (--epochs 3 in the "
        "checkpoint, --epochs 2 given; --seed 0 in the checkpoint, --seed 5 given; --valid-pct 0.2 in the checkpoint, "
        "no --valid-pct (its default) given). To go on from it, repeat the interrupted run's arguments (--epochs 3 "
        "--seed 0 --valid-pct 0.2); to start afresh with these, drop --resume or choose another --out")
    assert "learn.load" not in err


def test_resume_accepts_other_values_of_what_does_not_change_the_run(tmp_path):
    data = tiny_folder(tmp_path / "data")
    file = checkpoint_with_arguments(tmp_path / "a" / "checkpoint.pth", ["fine-tune", data, *TINY, "--out", "a"])
    moved = tmp_path / "moved"
    data.rename(moved)
    same_run = build_parser().parse_args([str(a) for a in ["fine-tune", moved, *TINY, "--out", "b", "--workers", "2",
                                                           "--tta", "1", "--checkpoint-every", "3", "--resume"]])
    assert check_resume_arguments(file, read_checkpoint(file), same_run)["arch"] == "test_resnet"
    old = tmp_path / "old.pth"  # written before the arguments were kept: nothing to compare
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "callbacks": {}}, old)
    assert check_resume_arguments(old, read_checkpoint(old), same_run) is None


# ------------------------------------------------------------------------------------- fastfreeze check

def test_check_counts_each_class_and_split_and_names_what_it_skipped(tmp_path, capsys):
    data = tiny_folder(tmp_path / "data")
    (data / "train" / "dark" / "notes.txt").write_text("not an image")
    Image.new("RGB", (12, 12)).save(data / "train" / "stray.png")
    (data / "valid" / "light" / "3.png").unlink()
    code, out, err = run(["check", data, "--arch", "test_resnet", "--size", "32", "--bs", "4", "--workers", "0"], capsys)
    assert code == 0 and err == ""  # the data's warning is printed once, in the summary
    # 8 + 8 training images; valid: dark 0..3, light 0..2 (3.png removed); 16 / bs 4 = 4 batches
    assert out.splitlines() == [
        f"{data} (train/ and valid/)",
        "single-label: 16 training items, 7 validation items",
        "class    train    valid",
        "dark         8        4",
        "light        8        3",
        "skipped 2:",
        f"  {data / 'train' / 'stray.png'}: outside the class folders: not used",
        f"  {data / 'train' / 'dark' / 'notes.txt'}: not an image file (extension)",
        "warnings:",
        f"  - 1 image(s) lie directly in {data / 'train'}, outside the class folders, and are not used:",
        f"      {data / 'train' / 'stray.png'}",
        f"    Move each into the folder of its class ({data / 'train'}/<class>/) or remove it",
        "batch size 4 (4 training batches per epoch), input 32x32 px",
        f"fastfreeze fine-tune can train on {data} (see the warnings above)"]


def test_check_with_valid_pct_and_a_class_without_validation_images(tmp_path, capsys):
    data = tmp_path / "data"
    for c, n in (("ant", 8), ("bee", 5), ("cat", 1)):
        (data / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (30 * i, 0, 0)).save(data / c / f"{i}.png")
    code, out, err = run(["check", data, "--valid-pct", "0.25", "--arch", "test_resnet", "--size", "32"], capsys)
    # per class round(n * 0.25), keeping one training image: ant 2 of 8, bee 1 of 5 (1.25), cat 0 of 1
    assert code == 0 and err == "" and out.splitlines()[:6] == [
        f"{data} (one folder per class, 25% of each held out for validation)",
        "single-label: 11 training items, 3 validation items", "class    train    valid",
        "ant          6        2", "bee          4        1", "cat          1        0"]
    assert out.splitlines()[6:8] == [
        "warnings:", "  - no validation items for the class(es) ['cat']: the validation loss and metrics say nothing "
                     "about it; add items of it to the validation split (with valid_pct: more items, or a larger "
                     "valid_pct)"]
    assert out.splitlines()[-1] == f"fastfreeze fine-tune can train on {data} (see the warnings above)"


def test_check_on_unusable_data_is_one_line_and_exit_code_1(tmp_path, capsys):
    data = tiny_folder(tmp_path / "data")
    bad = data / "valid" / "dark" / "broken.png"
    bad.write_bytes(b"not a png")
    code, out, err = run(["check", data, "--arch", "test_resnet", "--size", "32"], capsys)
    assert code == 1 and out == "" and str(bad) in one_error_line(err)
    code, _, err = run(["check", tmp_path / "nowhere"], capsys)
    assert code == 2 and re.match(r"DATA_DIR .*nowhere does not exist", one_error_line(err))
