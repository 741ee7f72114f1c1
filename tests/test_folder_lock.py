"""FolderLock: a folder held by one live process at a time. The "other run" is a child process that takes the
lock by hand (fcntl.flock on the lock file, its pid written in it), so the protocol is checked against what it
is documented to be, not against the class itself."""
import os
import signal
import subprocess
import sys

import pytest

from fastfreeze.utils.folder_lock import LOCK_NAME, FolderInUseError, FolderLock

pytestmark = pytest.mark.skipif(not FolderLock.supported, reason="needs fcntl (POSIX)")

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(60)
"""


def other_run(folder):
    """A child process holding `folder`'s lock; returns once it holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_folder_held_by_a_live_process_is_refused_naming_its_pid(tmp_path):
    child = other_run(tmp_path / "out")
    try:
        with pytest.raises(FolderInUseError, match=rf"out is in use by another run \(pid {child.pid}\): wait for it "
                                                    r"to end, or choose another folder") as caught:
            FolderLock(tmp_path / "out", what="another run").acquire()
        assert caught.value.pid == child.pid
        assert (tmp_path / "out" / LOCK_NAME).read_text() == f"{child.pid}\n"  # the owner's file is left alone
    finally:
        child.kill()
        child.wait()


def test_the_lock_of_a_killed_process_is_taken_over_and_names_its_pid(tmp_path):
    child = other_run(tmp_path / "out")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with FolderLock(tmp_path / "out") as lock:
        assert lock.taken_over == child.pid
        assert (tmp_path / "out" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released: the file is gone


def test_a_second_lock_in_the_same_process_is_refused_and_a_released_one_is_free(tmp_path):
    first = FolderLock(tmp_path / "out").acquire()
    assert first.taken_over is None and (tmp_path / "out" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(FolderInUseError, match=rf"\(pid {os.getpid()}\)"):
        FolderLock(tmp_path / "out").acquire()
    (tmp_path / "out" / "result.txt").write_text("kept")
    first.release()
    with FolderLock(tmp_path / "out") as again:
        assert again.taken_over is None  # the first released cleanly: nothing to take over
    assert (tmp_path / "out" / "result.txt").read_text() == "kept"  # a folder with files stays


def test_a_folder_the_lock_created_is_removed_when_left_empty(tmp_path):
    with FolderLock(tmp_path / "new" / "out"):
        assert (tmp_path / "new" / "out").is_dir()
    assert not (tmp_path / "new" / "out").exists() and (tmp_path / "new").is_dir()
    (tmp_path / "kept").mkdir()
    with FolderLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # it existed before: left as it was
