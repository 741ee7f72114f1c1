"""Training state on disk and in memory: checking that weights fit a model, writing files atomically from
one process only, random states, and the checkpoint file format.

Every file fastfreeze writes (`learn.save`, checkpoints, exports, plots, the command line's results) goes
through `write_file` or `write_files`: on rank 0 only (other processes of a distributed run write nothing),
first to a temporary name next to the target, then renamed over it (`os.replace`), so an interrupted write
never leaves a half-written file under the final name, and the next write of the same file removes what an
interrupted one left behind. Files are read back with `load_torch` (no code unpickled, a damaged file named).
"""
from __future__ import annotations

import copy
import os
import pickle
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..core.dataloaders import loader_generators
from .ranks import is_rank_zero

CHECKPOINT_FORMAT = "fastfreeze-checkpoint"
CHECKPOINT_VERSION = 3  # 2: the loop state in one dict, the Recorder's smoothing state; 3: optimizer steps, accumulation, callback states
SHOWN_KEYS = 10
PathLike = Union[str, Path]


# -------------------------------------------------------------------------------------------------
# weights that fit a model
# -------------------------------------------------------------------------------------------------
def _listing(count_and_title: str, items: Sequence[str]) -> str:
    more = f", ... and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
    return f"  {count_and_title}: {', '.join(items[:SHOWN_KEYS])}{more}"


FIT_HINT = ("Were they saved from another architecture, head or number of classes? Build the learner exactly as the "
            "one that saved them.")


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any], source: str,
                     hint: str = FIT_HINT, strict: bool = True) -> None:
    """Raise a ValueError naming everything that does not fit when `given` (read from `source`) cannot be
    loaded into a model whose state dict is `expected`: keys missing from the file and keys the model does not
    have (`strict` only: otherwise they are skipped), tensors of another shape, values that are not tensors.
    `hint` ends the message."""
    missing = [k for k in expected if k not in given] if strict else []
    extra = [k for k in given if k not in expected] if strict else []
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}" for k in expected
              if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != expected[k].shape]
    not_tensors = [k for k in given if k in expected and not isinstance(given[k], torch.Tensor)]
    if not (missing or extra or shapes or not_tensors):
        return
    parts = [f"the weights in {source} do not fit this model:"]
    for title, items in (("keys of the model missing from the file", missing),
                         ("keys in the file that the model does not have", extra),
                         ("keys with a different shape", shapes), ("values in the file that are not tensors",
                                                                   not_tensors)):
        if items:
            parts.append(_listing(f"{len(items)} {title}", items))
    parts.append(hint)
    raise ValueError("\n".join(parts))


# -------------------------------------------------------------------------------------------------
# atomic writes, rank 0 only
# -------------------------------------------------------------------------------------------------
def temporary_name(file: Path) -> Path:
    """Where `write_file` writes before renaming: `file.tmp`, next to `file`."""
    return file.with_name(file.name + ".tmp")


def temporary_folder(folder: Path) -> Path:
    """Where `write_files` fills a set of files before moving them into `folder`: `.folder.tmp`, beside it."""
    return folder.with_name(f".{folder.name}.tmp")


def new_file_mode() -> int:
    """The permissions `open()` gives a new file under the current umask (`0o666 & ~umask`)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_file(file: PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the content to a temporary file next to `file`, which is then renamed over `file`.
    A temporary file left by an interrupted write of the same `file` is removed first; the file gets the
    permissions of any new file under the umask (whatever `write` created it with). On processes other than
    rank 0 nothing is written. Returns `file`."""
    file = Path(file)
    if not is_rank_zero():
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(file)
    tmp.unlink(missing_ok=True)  # stale, from a write that was killed
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, file)
    finally:
        if tmp.exists():
            tmp.unlink()
    return file


def save_torch(obj: Any, file: PathLike) -> Path:
    """`torch.save(obj)` to `file` through `write_file`."""
    return write_file(file, lambda tmp: torch.save(obj, tmp))


def save_figure(figure: Any, file: PathLike, **kwargs: Any) -> Path:
    """A matplotlib figure saved to `file` through `write_file`, in the format its suffix names (png without
    one); `kwargs` go to `savefig`."""
    file = Path(file)
    return write_file(file, lambda tmp: figure.savefig(tmp, format=file.suffix[1:] or "png", **kwargs))


def write_files(folder: PathLike, fill: Callable[[Path], Sequence[str]]) -> Path:
    """`fill(tmp)` writes files into a temporary folder beside `folder` and returns their names in the order
    they are to be put in place, the one that marks the set complete last. That marker is first removed from
    `folder`, then each file is renamed into it (`folder` is created if needed; other files in it are left
    alone): at every moment `folder` holds the old complete set, a set without its marker, or the new complete
    set, never a mix. A temporary folder left by an interrupted write of the same `folder` is removed first.
    Rank 0 only. Returns `folder`."""
    folder = Path(folder)
    if not is_rank_zero():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder(folder)
    shutil.rmtree(tmp, ignore_errors=True)  # stale, from a write that was killed
    tmp.mkdir()
    try:
        names = list(fill(tmp))
        mode = new_file_mode()
        for name in names:
            os.chmod(tmp / name, mode)
        folder.mkdir(exist_ok=True)
        if names:
            (folder / names[-1]).unlink(missing_ok=True)
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# -------------------------------------------------------------------------------------------------
# random states
# -------------------------------------------------------------------------------------------------
def rng_states(train_dl: Any) -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python random states and the generators `train_dl` shuffles with, as
    tensors and plain types (loadable with `weights_only=True`)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
            "loaders": [g.get_state() for g in loader_generators(train_dl)]}


def set_rng_states(train_dl: Any, states: dict[str, Any]) -> None:
    """Put back what `rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    generators = loader_generators(train_dl)
    if len(generators) != len(states["loaders"]):
        raise ValueError(f"the training DataLoader draws its order from {len(generators)} generator(s), but the "
                         f"saved state recorded {len(states['loaders'])}: resume with the same kind of DataLoaders")
    for g, state in zip(generators, states["loaders"]):
        g.set_state(state)


def to_cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor copied to the CPU (so a GPU model is not held twice on the GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


# -------------------------------------------------------------------------------------------------
# checkpoint files
# -------------------------------------------------------------------------------------------------
def load_torch(file: PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(file, weights_only=True)` (tensors and plain types: no code is unpickled), with a ValueError
    naming the file when it is damaged or cut short (e.g. copied or written by a process that was killed)."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"cannot read {file}: it is damaged or incomplete ({type(e).__name__}: {e}). Was it cut "
                         "short by an interrupted copy or save? Write it again, or load another file") from e


def read_checkpoint(file: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by `learn.save_checkpoint` (on the CPU, `load_torch`) and check its format."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}: check the name, or `learn.path`/`model_dir` "
                                "(CheckpointCallback writes models/checkpoint.pth by default)")
    state = load_torch(file)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a fastfreeze checkpoint (written by learn.save_checkpoint or "
                         "CheckpointCallback); a file written by learn.save loads with learn.load")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{file} is a checkpoint of format version {state.get('version')!r}; this fastfreeze "
                         f"reads version {CHECKPOINT_VERSION}")
    return state
