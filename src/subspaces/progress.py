"""Progress of long stages: a tqdm bar in a terminal, and plain lines in a log file.

tqdm draws nothing when its output is not a terminal (`disable=None`), so a job whose
output goes to a log file showed nothing for minutes. `progress_bar` gives a tqdm bar
when standard error is a terminal and otherwise a `LogProgress`, which prints one line
every `every_s` seconds (and at the end) with the count, the rate and the time left.

>>> import io
>>> out = io.StringIO()
>>> bar = LogProgress(total=4, desc="extract", unit="utt", every_s=0.0, file=out)
>>> bar.update(2); bar.close()
>>> out.getvalue().splitlines()[-1].split(",")[0]
'[extract] 2/4 utt'
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["LogProgress", "progress_bar"]

# A line every 10 s: often enough to see a job move, rare enough to keep logs short.
LOG_EVERY_S = 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LogProgress:
    """The subset of tqdm's interface the stages use (`update`, `set_postfix_str`,
    `set_postfix`, `close`, iteration, a context manager), as log lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, every_s: float = LOG_EVERY_S, file: IO[str] | None = None):
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.initial = initial
        self.file = file if file is not None else sys.stderr
        self.started = self.last = time.perf_counter()
        self.postfix = ""
        self.closed = False

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"[{self.desc}] {count} {self.unit}", f"{rate:.1f} {self.unit}/s", f"elapsed {_duration(elapsed)}"]
        if self.total is not None and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            print(self._line(), file=self.file, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(self._line() + " (done)" if self.total is None or self.n >= self.total else self._line(),
                  file=self.file, flush=True)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, enabled: bool = True) -> Any:
    """A tqdm bar when standard error is a terminal, log lines (`LogProgress`) when it is
    not, nothing when `enabled` is False.

    >>> bar = progress_bar(total=3, desc="demo", enabled=False)
    >>> bar.update(3); bar.close()
    """
    if not enabled:
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
