"""Where this package keeps what it makes once and reuses: converted backbones, Kokoro's model.

>>> isinstance(cache_dir(), Path)
True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Where converted models are kept: $SUBSPACES_CACHE, else ~/.cache/speech-subspaces."""
    root = os.environ.get("SUBSPACES_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "speech-subspaces"
