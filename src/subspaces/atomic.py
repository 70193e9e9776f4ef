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

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "write_text_atomic"]


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
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
