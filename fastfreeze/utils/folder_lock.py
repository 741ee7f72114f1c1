"""A folder locked while one process uses it: `FolderLock(folder)`, a context manager.

The lock is the file `folder/.fastfreeze.lock` holding the owner's pid, locked with `fcntl.flock` while the owner
runs. The kernel releases a `flock` when its process ends however it ends (`kill -9` included), so a lock file
left by a killed run is free: the next run takes it over and says so (`FolderLock.taken_over` names the old pid).
A folder locked by a live process is refused with `FolderInUseError`, naming that process's pid. Where `fcntl`
does not exist (Windows) the folder is not locked (`FolderLock.supported` is False).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".fastfreeze.lock"


class FolderInUseError(RuntimeError):
    """The folder is locked by another live process (`pid`)."""

    def __init__(self, message: str, pid: Optional[int]):
        super().__init__(message)
        self.pid = pid


def _read_pid(fd: int) -> Optional[int]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class FolderLock:
    """Lock `folder` (created if missing) for this process; `what` names the user of the folder in the refusal
    (e.g. 'another fastfreeze run'). Use as `with FolderLock(out): ...`, or `acquire()` / `release()`."""

    supported = fcntl is not None

    def __init__(self, folder: Union[str, Path], what: str = "another process"):
        self.folder, self.what = Path(folder), what
        self.file = self.folder / LOCK_NAME
        self.taken_over: Optional[int] = None  # the pid a lock file named when this process took it over
        self._fd: Optional[int] = None
        self._created_folder = False

    def acquire(self) -> "FolderLock":
        """Take the lock or raise `FolderInUseError`; `taken_over` is set when a dead run's lock file was there."""
        if fcntl is None:  # pragma: no cover - not POSIX
            return self
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                self._created_folder = False
                owner = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
                raise FolderInUseError(f"{self.folder} is in use by {self.what} ({owner}): wait for it to end, or "
                                       f"choose another folder", pid) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:  # the owner released it (and removed the file) between our open and flock
                same_file = False
            if same_file:
                break
            os.close(fd)  # we locked a file that is no longer the lock file: try again with the new one
        previous = _read_pid(fd)
        self.taken_over = previous if previous is not None and previous != os.getpid() else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing when not held); a folder that `acquire` created
        and that is still empty is removed too."""
        if self._fd is None:
            return
        try:
            self.file.unlink()
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        if self._created_folder and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()
