"""What the neural engines (Kokoro, Piper) share: onnxruntime sessions, package checks,
and the checks on what a network made.

Both read English as phonemes that espeak-ng writes (`espeak.espeak_ipa`); nothing is
downloaded at run time. onnxruntime is imported on the first session, not with this module.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import EngineNotInstalled, SynthError, Voice, warp_rate

__all__ = ["SESSION_LOCK", "onnx_session", "require_package", "speak"]

# Grid workers are threads: the first ones would otherwise build a session (and assemble
# Kokoro's model file under one temporary name) at the same time.
SESSION_LOCK = threading.Lock()


def require_package(package: str, pip_name: str) -> None:
    """Raise `EngineNotInstalled` naming `pip install PIP_NAME` when `package` is missing."""
    if importlib.util.find_spec(package) is None:
        raise EngineNotInstalled(
            f"the {pip_name} engine's package is not installed; install it with `pip install {pip_name}` "
            "(scripts/install.sh does)"
        )


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session for the model at `path`, on `SUBSPACES_TTS_THREADS` cores (1)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineNotInstalled("onnxruntime is not installed; install it with `pip install onnxruntime`") from None
    options = ort.SessionOptions()
    # The grid runs one clip per worker thread, so each call keeps to one core.
    options.intra_op_num_threads = int(os.environ.get("SUBSPACES_TTS_THREADS", "1"))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def speak(voice: Voice, text: str, network: Callable[[Mapping[str, Any], str], tuple[np.ndarray, int]]
          ) -> tuple[np.ndarray, int]:
    """Run `network(params, text)` for `voice`: its errors name the voice, audio that is
    empty or not finite is an error, and the rate is scaled by the voice's warp."""
    try:
        wave, rate = network(voice.params, text)
    except SynthError as error:
        raise type(error)(f"{voice.engine} voice {voice.speaker}: {error}") from error
    if wave.size == 0 or not np.all(np.isfinite(wave)):
        raise SynthError(f"{voice.engine} voice {voice.speaker} made no usable audio for {text!r}")
    return wave, warp_rate(rate, voice.params)
