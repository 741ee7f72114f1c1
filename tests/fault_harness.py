"""Fault injection for `fastfreeze fine-tune`: run the command line in a child process, SIGKILL it at a chosen
moment (mid-batch, mid-validation, mid-checkpoint write, between a write and its rename, mid-export), resume,
and check what a kill may leave on disk. Used by tests/test_fault_injection.py (about a dozen seeded kill
points) and benchmarks/fault_injection.py (many more, and kills at random times).

Importing fastfreeze takes seconds, so runs are forked from a server process that imported it once
(`ForkServer`): each job is a fresh child process that installs its kill point, runs `cli.main`, and dies by
SIGKILL at that point (no `finally`, no atexit, nothing flushed), exactly as a `kill -9` would leave it.

Kill points (dicts, `kill_hooks` installs them in the child):
- {"at": "batch", "phase", "epoch", "iter", "event", "training"}: at that event of that batch;
- {"at": "checkpoint", "phase", "done", "fraction"}: while writing the checkpoint of `done` epochs of `phase`,
  after `fraction` of its bytes reached the temporary file (1.0: the temporary is complete, not yet renamed);
- {"at": "export-weights", "fraction"}: while writing model.safetensors into the export's temporary folder;
- {"at": "rename", "name"}: just before a file named `name` is renamed into place (config.json: the export's
  weights are in place, its config not yet);
- {"at": "time", "seconds"}: a SIGKILL from a timer, whatever the process is doing then.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve()
JOB_TIMEOUT_S = 300  # a child running longer is stopped by SIGALRM and reported as an error


# ------------------------------------------------------------------------------------------ in the child

def die() -> None:
    """SIGKILL this process: nothing after it runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def write_part_and_die(data: bytes, fraction: float, target: Any) -> None:
    with open(target, "wb") as f:
        f.write(data[:int(len(data) * fraction)])
        f.flush()
    die()


def kill_hooks(spec: Optional[dict[str, Any]]) -> None:
    """Install the kill point `spec` (see the module docstring) in this process."""
    if spec is None:
        return
    kind = spec["at"]
    if kind == "batch":
        import fastfreeze.vision
        from fastfreeze.core.callback import Callback

        class KillAt(Callback):
            def at(self, event: str) -> None:
                learn = self.learn
                if (event == spec["event"] and learn.training == spec["training"] and learn.phase == spec["phase"]
                        and learn.epoch == spec["epoch"] and learn.iter == spec["iter"]):
                    die()

            def before_batch(self) -> None:
                self.at("before_batch")

            def after_pred(self) -> None:
                self.at("after_pred")

            def after_backward(self) -> None:
                self.at("after_backward")

            def after_step(self) -> None:
                self.at("after_step")

            def after_batch(self) -> None:
                self.at("after_batch")
        real_vision_learner = fastfreeze.vision.vision_learner

        def vision_learner(*args: Any, **kwargs: Any) -> Any:
            learn = real_vision_learner(*args, **kwargs)
            learn.add_cb(KillAt())
            return learn
        fastfreeze.vision.vision_learner = vision_learner  # cli.py imports it when it runs
    elif kind == "checkpoint":
        import torch
        from fastfreeze.core.checkpoint import CHECKPOINT_FORMAT
        real_save = torch.save

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            if (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
                    and (obj["loop"]["phase"], obj["loop"]["start_epoch"]) == (spec["phase"], spec["done"])):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                write_part_and_die(buffer.getvalue(), spec["fraction"], f)
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    elif kind == "export-weights":
        import safetensors.torch

        def save_file(tensors: Any, filename: Any, metadata: Any = None) -> None:
            write_part_and_die(safetensors.torch.save(tensors, metadata=metadata), spec["fraction"], filename)
        safetensors.torch.save_file = save_file  # export.py imports it when it runs
    elif kind == "rename":
        real_replace = os.replace

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if Path(dst).name == spec["name"]:
                die()
            real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    elif kind == "time":
        timer = threading.Timer(spec["seconds"], die)
        timer.daemon = True
        timer.start()
    else:
        raise ValueError(f"unknown kill point {spec!r}")


def run_job(job: dict[str, Any]) -> None:
    """In a forked child: output to the job's log, the kill point installed, then the command line."""
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.alarm(JOB_TIMEOUT_S)
    code = 0
    try:
        from fastfreeze.cli import main
        print(f"--- kill point: {job.get('kill')}", flush=True)
        kill_hooks(job.get("kill"))
        code = main(job["argv"])  # 0, or 1/2 with the error on one line
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The server: import fastfreeze once, then fork one child per job line on stdin; answer one line each."""
    import importlib

    import matplotlib
    matplotlib.use("Agg")
    for module in ("matplotlib.pyplot", "safetensors.torch", "fastfreeze", "fastfreeze.cli"):
        importlib.import_module(module)  # the expensive imports, done once: every child inherits them
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the answer pipe
    for line in sys.stdin:
        job = json.loads(line)
        out.flush()
        pid = os.fork()
        if pid == 0:
            run_job(job)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            answer = {"signal": os.WTERMSIG(status)}
        else:
            answer = {"exit": os.WEXITSTATUS(status)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# ------------------------------------------------------------------------------------------ in the test

class ForkServer:
    """A child Python process that imported fastfreeze and forks a fresh process per job."""

    def __init__(self, env: Optional[dict[str, str]] = None):
        self.process = subprocess.Popen([sys.executable, str(HERE), "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)

    def run(self, argv: list[str], kill: Optional[dict[str, Any]], log: Path, timeout: float = JOB_TIMEOUT_S + 60
            ) -> dict[str, int]:
        """Run `fastfreeze argv` with the kill point `kill`; `{"signal": 9}` when it was killed, `{"exit": code}`
        when it ended by itself."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"argv": argv, "kill": kill, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer from the fork server in {timeout} s (log: {log})")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self.process.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def cli_argv(data: Path, out: Path, workers: int = 0, lr: str = "1e-3", epochs: int = 2) -> list[str]:
    """The run every kill interrupts: test_resnet from scratch, one frozen and `epochs` unfrozen epochs."""
    return ["fine-tune", str(data), "--arch", "test_resnet", "--pretrained", "false", "--epochs", str(epochs),
            "--freeze-epochs", "1", "--size", "32", "--bs", "4", "--workers", str(workers), "--lr", lr,
            "--out", str(out), "--no-bar", "--resume", "--seed", "0"]


def image_folder(root: Path, per_class: int = 8) -> Path:
    """Two classes of noisy 28x36 images (train: `per_class` each, valid: 4 each)."""
    from helpers import grey_class_folders
    return grey_class_folders(root, levels=(70, 180), n_train=per_class, noise=40, shape=(28, 36, 3))


def kill_points(rng: random.Random, phases: list[tuple[str, int]], n_batches: int) -> list[dict[str, Any]]:
    """A seeded list of kill points in the order a run reaches them: in every epoch one mid-batch kill (a random
    batch and event) and one kill while its checkpoint is written (a random fraction of the bytes, 1.0 meaning
    between the write and the rename); in one random epoch also a kill during validation; then, at the end,
    one while the export writes its weights, one between the export's renames, one before results.json and
    one before a plot is renamed into place."""
    points: list[dict[str, Any]] = []
    valid_epoch = rng.randrange(sum(n for _, n in phases))
    count = 0
    for phase, n_epochs in phases:
        for epoch in range(n_epochs):
            event = rng.choice(["before_batch", "after_pred", "after_backward", "after_step", "after_batch"])
            points.append({"at": "batch", "phase": phase, "epoch": epoch, "iter": rng.randrange(n_batches),
                           "event": event, "training": True})
            if count == valid_epoch:
                points.append({"at": "batch", "phase": phase, "epoch": epoch, "iter": 0, "event": "after_pred",
                               "training": False})
            points.append({"at": "checkpoint", "phase": phase, "done": epoch + 1,
                           "fraction": rng.choice([round(rng.uniform(0.02, 0.98), 3), 1.0])})
            count += 1
    points += [{"at": "export-weights", "fraction": round(rng.uniform(0.02, 0.98), 3)},
               {"at": "rename", "name": "config.json"},
               {"at": "rename", "name": "results.json"},
               {"at": "rename", "name": rng.choice(["loss.png", "lr_schedule.png"])}]
    return points


def is_temporary(path: Path, root: Path) -> bool:
    """Inside a temporary name of the writer (`x.tmp`, `.folder.tmp/`)."""
    return any(part.endswith(".tmp") for part in path.relative_to(root).parts)


def check_no_half_written_file(out: Path) -> list[str]:
    """Every file under its final name in `out` is complete: checkpoints load, an export with its config loads
    (one without it is incomplete, and says so), weights, JSON and PNG files read whole. Returns the final names
    present."""
    from PIL import Image
    from safetensors.torch import load_file

    from fastfreeze.inference.predictor import load_learner
    from fastfreeze.core.checkpoint import read_checkpoint
    from fastfreeze.utils.folder_lock import LOCK_NAME
    present = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or is_temporary(path, out):
            continue
        if path.name == LOCK_NAME:  # left by a killed run (the next run takes it over): it holds that run's pid
            assert re.fullmatch(r"\d*\n?", path.read_text()), f"{path} holds {path.read_text()!r}, not a pid"
            continue
        present.append(str(path.relative_to(out)))
        if path.name == "checkpoint.pth":
            read_checkpoint(path)
        elif path.name == "model.safetensors":
            load_file(str(path))
        elif path.name == "config.json":
            load_learner(path.parent)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        else:
            raise AssertionError(f"unexpected file {path}")
    return present


def final_state(out: Path) -> dict[str, Any]:
    """What an uninterrupted and a resumed run must agree on, bit for bit: the files written, the exported
    weights, the last checkpoint's history of losses and lrs, and the final validation results."""
    from safetensors.torch import load_file

    from fastfreeze.core.checkpoint import read_checkpoint
    recorder = read_checkpoint(out / "checkpoint.pth")["recorder"]
    results = json.loads((out / "results.json").read_text())
    return {"files": check_no_half_written_file(out), "weights": load_file(str(out / "model" / "model.safetensors")),
            "history": {k: recorder[k] for k in ("losses", "smooth_losses", "lrs", "moms", "phases")},
            "results": {k: results[k] for k in ("accuracy", "valid_loss", "base_lr")}}


def assert_same_final_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch
    assert a["files"] == b["files"]
    assert a["weights"].keys() == b["weights"].keys()
    different = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for key in a["history"]:
        first = next((i for i, (x, y) in enumerate(zip(a["history"][key], b["history"][key])) if x != y), None)
        assert a["history"][key] == b["history"][key], \
            f"history {key!r} differs: lengths {len(a['history'][key])}, {len(b['history'][key])}; first at {first}"
    assert a["results"] == b["results"]


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
