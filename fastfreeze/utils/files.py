"""Files written atomically from one process only, and read back safely.

Every file fastfreeze writes (`learn.save`, checkpoints, exports, plots, the command line's results) goes
through `write_file` or `write_files`: on rank 0 only (other processes of a distributed run write nothing),
first to a temporary name next to the target, then renamed over it (`os.replace`), so an interrupted write
never leaves a half-written file under the final name, and the next write of the same file removes what an
interrupted one left behind. Files are read back with `load_torch` (no code unpickled, a damaged file named).

A write that the disk or the folder refuses (full, over quota, no permission, read-only), also when torch or
safetensors wrap the operating system's error in their own ("unexpected pos", "No space left on device"), is a
`WriteError` (an `OSError` with that errno) whose message says what could not be written, that the previous
file is kept, and what to do: free space, or write to another folder.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .ranks import is_rank_zero

PathLike = Union[str, Path]


class WriteError(OSError):
    """A file could not be written because of the disk or the folder (see the module docstring); `errno` is
    ENOSPC, EDQUOT, EACCES, EPERM or EROFS, `filename` the file or folder that was being written."""

    def __init__(self, code: int, message: str, filename: PathLike):
        super().__init__(code, message)
        self.filename = str(filename)

    def __str__(self) -> str:
        return str(self.strerror)


# what the wrappers say when the operating system refused a write: torch's zip writer reports a short write
# ("unexpected pos N vs M", "file write failed"), Rust's io errors (safetensors) "... (os error 28)"
_WRAPPED = (("No space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC),
            ("unexpected pos", errno.ENOSPC), ("file write failed", errno.ENOSPC), ("StorageFull", errno.ENOSPC),
            ("Disk quota exceeded", errno.EDQUOT), ("os error 122", errno.EDQUOT),
            ("Read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
            ("Permission denied", errno.EACCES), ("os error 13", errno.EACCES),
            ("Operation not permitted", errno.EPERM), ("os error 1)", errno.EPERM))
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def storage_failure(error: BaseException) -> Optional[int]:
    """The errno of a write the disk or the folder refused (full, over quota, no permission, read-only), read from
    `error` or the errors it was raised from; also from the words of torch's and safetensors' wrappers of it.
    None for any other error."""
    seen: set[int] = set()
    e: Optional[BaseException] = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e.errno
        if isinstance(e, RuntimeError) or type(e).__name__ == "SafetensorError":
            text = str(e)
            for words, code in _WRAPPED:
                if words in text:
                    return code
        e = e.__cause__ or e.__context__
    return None


def _existing_folder(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where a disk's free space can be read)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return folder
    return Path(".")


def write_error(code: int, target: Path, what: str, kept: str, error: BaseException) -> WriteError:
    """The `WriteError` for a write of `what` to `target` refused with `code`; `kept` says what is left on disk."""
    folder = target if target.is_dir() else target.parent
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f" ({shutil.disk_usage(_existing_folder(folder)).free / 1e6:.0f} MB free there now)"
        except OSError:
            free = ""
        reason = ("the disk is full (no space left on device)" if code == errno.ENOSPC else
                  "the disk quota is exceeded") + free
        fix = f"Free space on the disk holding {folder}, or save to a folder on another disk"
    elif code == errno.EROFS:
        reason = f"the file system holding {folder} is read-only"
        fix = "Save to a folder on a writable disk"
    else:
        reason = f"permission denied: this process may not write in {folder}"
        fix = f"Save to a folder you can write to, or give this user write access to {folder}"
    cause = f"{type(error).__name__}: {error}"
    return WriteError(code, f"could not write {what} {target}: {reason}. {kept}. {fix} (the path you pass, or "
                            f"learn.path for a learner's files). [{cause}]", target)


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


def write_file(file: PathLike, write: Callable[[Path], None], what: str = "the file") -> Path:
    """`write(tmp)` writes the content to a temporary file next to `file`, which is then renamed over `file`.
    A temporary file left by an interrupted write of the same `file` is removed first; the file gets the
    permissions of any new file under the umask (whatever `write` created it with). On processes other than
    rank 0 nothing is written. A write the disk or the folder refuses is a `WriteError` naming `what` and
    `file` (the previous `file` is kept). Returns `file`."""
    file = Path(file)
    if not is_rank_zero():
        return file
    existed = file.exists()
    try:
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
    except Exception as e:
        code = storage_failure(e)
        if code is None:
            raise
        kept = f"The previous {file.name} is kept, unchanged" if existed else f"Nothing was written at {file}"
        raise write_error(code, file, what, kept, e) from e
    return file


def save_torch(obj: Any, file: PathLike, what: str = "the file") -> Path:
    """`torch.save(obj)` to `file` through `write_file` (`what` names the file in a `WriteError`)."""
    return write_file(file, lambda tmp: torch.save(obj, tmp), what)


def save_figure(figure: Any, file: PathLike, **kwargs: Any) -> Path:
    """A matplotlib figure saved to `file` through `write_file`, in the format its suffix names (png without
    one); `kwargs` go to `savefig`."""
    file = Path(file)
    return write_file(file, lambda tmp: figure.savefig(tmp, format=file.suffix[1:] or "png", **kwargs))


def write_files(folder: PathLike, fill: Callable[[Path], Sequence[str]], what: str = "the files") -> Path:
    """`fill(tmp)` writes files into a temporary folder beside `folder` and returns their names in the order
    they are to be put in place, the one that marks the set complete last. That marker is first removed from
    `folder`, then each file is renamed into it (`folder` is created if needed; other files in it are left
    alone): at every moment `folder` holds the old complete set, a set without its marker, or the new complete
    set, never a mix. A temporary folder left by an interrupted write of the same `folder` is removed first.
    A write the disk or the folder refuses is a `WriteError` naming `what` and `folder`. Rank 0 only. Returns
    `folder`."""
    folder = Path(folder)
    if not is_rank_zero():
        return folder
    moving = False  # True once `folder` itself is being changed
    try:
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
            moving = True
            if names:
                (folder / names[-1]).unlink(missing_ok=True)
            for name in names:
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        code = storage_failure(e)
        if code is None:
            raise
        kept = (f"{folder} holds no complete set now (its {names[-1]} was removed first): write it again" if moving
                else f"{folder} is left as it was (a previous one there is kept, unchanged)")
        raise write_error(code, folder, what, kept, e) from e
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

