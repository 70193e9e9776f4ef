"""Atomic file writes: a file that exists is complete.

Every stage writes through a temporary file in the destination folder (named
`.NAME.XXXX.tmp`, so a stage can sweep up what a killed process left) and renames it over
the destination, which POSIX makes atomic on one file system. The file gets the usual
permissions (0666 less the umask), not the private 0600 of a temporary file, so a shared
results folder stays readable to colleagues.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "a.txt"
>>> write_text_atomic(path, "done\\n")
>>> path.read_text()
'done\\n'
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import SubspacesError

__all__ = ["DiskFull", "check_disk_full", "write_atomic", "write_text_atomic"]

# Below this much free space a failed write is taken for a full disk, whatever the
# writer's own message (torch.save, for one, reports only "unexpected pos").
_NEARLY_FULL = 1 << 20


class DiskFull(SubspacesError, OSError):
    """A write failed for want of space; the message names the file and the free space."""

    def __str__(self) -> str:
        return str(self.strerror)


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check_disk_full(error: BaseException, path: str | Path) -> None:
    """Raise `DiskFull` (from `error`) naming `path` if `error` came from a full disk:
    ENOSPC / EDQUOT, a library's "os error 28", or any failure with under 1 MiB left."""
    if isinstance(error, DiskFull):
        raise error
    path = Path(path)
    free = _free_bytes(path.parent)
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        text in str(error) for text in ("No space left on device", "os error 28", "Disk quota exceeded"))
    if full or (free is not None and free < _NEARLY_FULL):
        left = "unknown" if free is None else f"{free / 2**20:.1f} MiB"
        raise DiskFull(errno.ENOSPC, f"{path}: no space left on the device ({left} free in {path.parent}); "
                       "free some space and rerun: what was finished before is intact") from error


def _umask() -> int:
    """The process's umask: from /proc on Linux (no race with other threads), else by
    setting and restoring it (Python has no getter)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[str], object]) -> None:
    """Call `write(temporary_path)`, then rename the temporary file over `path`.

    If `write` raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        check_disk_full(error, path)
        raise
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as error:
        check_disk_full(error, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
