"""Folders that one stage writes: one writer at a time, and unfinished work marked as such.

`folder_lock(folder)` holds an advisory lock (`flock` on `folder/.lock`) while a stage
writes the folder. A second writer is refused with the first one's pid; the kernel
drops the lock when its holder dies, even by kill -9, so a crashed run never blocks
the rerun that resumes it. The lock file is removed when the lock is released.

`mark_unfinished(folder, what)` / `mark_finished(folder)` bracket work whose outputs
could pass for finished midway (a model folder holds a usable checkpoint long before
training ends): while `folder/UNFINISHED` exists the folder is not done, and readers
ask `unfinished(folder)` before trusting it.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with folder_lock(folder, "a test"):
...     mark_unfinished(folder, "training to step 10")
...     print(unfinished(folder))
training to step 10
>>> mark_finished(folder); print(unfinished(folder), (folder / LOCK_FILE).exists())
None False
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import check_disk_full, write_text_atomic
from .errors import SubspacesError

__all__ = ["FolderBusy", "LOCK_FILE", "UNFINISHED_FILE", "folder_lock", "mark_finished", "mark_unfinished", "unfinished"]

LOCK_FILE = ".lock"
UNFINISHED_FILE = "UNFINISHED"


class FolderBusy(SubspacesError, RuntimeError):
    """Another live process is writing the folder; the message gives its pid."""


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def folder_lock(folder: str | Path, what: str = "its outputs") -> Iterator[Path]:
    """Hold `folder`'s write lock (creating the folder) for the duration of the block.

    Raises `FolderBusy` at once, without waiting, if another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            check_disk_full(error, path)
            raise
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise FolderBusy(
                f"{folder}: another process (pid {_holder(path)}) is writing {what} here; "
                "wait for it to finish or stop it, then rerun"
            ) from None
        # The holder we waited on may have removed the file as it let go; then this
        # lock is on a file nobody else can see: take the lock again on the new file.
        try:
            same = os.stat(path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        try:
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
        except OSError as error:
            check_disk_full(error, path)
            raise
        yield folder
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        os.close(handle)  # releases the lock


def mark_unfinished(folder: str | Path, what: str) -> None:
    """Record that `folder` is being written and is not done (`what`: by what, to what)."""
    write_text_atomic(Path(folder) / UNFINISHED_FILE, what.rstrip() + "\n")


def mark_finished(folder: str | Path) -> None:
    """Record that the work in `folder` is done (remove the mark of `mark_unfinished`)."""
    try:
        (Path(folder) / UNFINISHED_FILE).unlink()
    except FileNotFoundError:
        pass


def unfinished(folder: str | Path) -> str | None:
    """What is still being (or was, until a crash) written to `folder`, or None if nothing."""
    path = Path(folder) / UNFINISHED_FILE
    try:
        return path.read_text().strip() or "unfinished"
    except FileNotFoundError:
        return None
