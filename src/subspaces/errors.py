"""The one error type users see.

Every error this package raises for something a user can fix (a bad file, a missing
program, a store that does not match its model, an option out of range) is a
`SubspacesError`. The command line prints such errors as one line, `error: ...`, and
exits 1; any other exception is a bug and keeps its traceback. Each module's own
error class derives from it (and, where callers have long caught it so, from the
built-in type it used to be: `ValueError`, `RuntimeError` or `ImportError`).
"""

from __future__ import annotations

__all__ = ["SubspacesError"]


class SubspacesError(Exception):
    """Something the user can fix; the message names the file or option and the problem."""
