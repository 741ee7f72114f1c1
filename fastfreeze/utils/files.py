"""Files written atomically from one process only, and read back safely.

Every file fastfreeze writes (`learn.save`, checkpoints, exports, plots, the command line's results) goes
through `write_file` or `write_files`: on rank 0 only (other processes of a distributed run write nothing),
first to a temporary name next to the target, then renamed over it (`os.replace`), so an interrupted write
never leaves a half-written file under the final name, and the next write of the same file removes what an
interrupted one left behind. Files are read back with `load_torch` (no code unpickled, a damaged file named).
"""
from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from .ranks import is_rank_zero

PathLike = Union[str, Path]


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

