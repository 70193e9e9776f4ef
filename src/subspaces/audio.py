"""Reading speech audio: decode, mix to mono, resample, trim silence, normalise loudness.

Every later stage (synthesis, feature extraction, embedding) reads audio through
`load_audio`, so a bad file fails here, once, with a message that names it.

>>> import numpy as np
>>> wave = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32)
>>> resample(wave, 16000, 8000).shape
(8000,)
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import SubspacesError

__all__ = [
    "AudioError",
    "DEFAULT_MAX_DURATION_S",
    "SILENT_PEAK",
    "load_audio",
    "normalize_loudness",
    "resample",
    "trim_silence",
]

# An utterance-level speech tool has no use for an hour-long file; one that long is
# almost always a mistake (a whole recording session, a wrong path). Callers can raise it.
DEFAULT_MAX_DURATION_S = 60.0

# A clip whose loudest sample is below this (-120 dBFS) is digital silence: 16-bit PCM's
# smallest step is 2**-15 (about 3e-5), so such a 16-bit file is all zeros, and a
# backbone's features of it say nothing about a speaker or a word.
SILENT_PEAK = 1e-6
# What `load_audio` may do with a damaged (truncated) or silent clip.
_ACTIONS = ("error", "warn", "ignore")


class AudioError(SubspacesError, ValueError):
    """A clip that cannot be used, with the file and the reason in the message."""


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono float waveform with soxr's high-quality filter.

    >>> resample(np.zeros(800, dtype=np.float32), 8000, 16000).shape
    (1600,)
    """
    if from_rate == to_rate:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def trim_silence(
    wave: np.ndarray, sample_rate: int, *, threshold_db: float = 40.0, frame_s: float = 0.02,
    keep_s: float = 0.05,
) -> np.ndarray:
    """Cut leading and trailing frames quieter than `threshold_db` below the loudest frame.

    Frames are `frame_s` long; `keep_s` of audio is kept either side of the speech so
    that soft onsets are not clipped. A clip that is silent throughout is returned whole.

    >>> sr = 16000
    >>> tone = np.sin(np.arange(sr) / sr * 2 * np.pi * 220).astype(np.float32)
    >>> padded = np.concatenate([np.zeros(sr), tone, np.zeros(sr)]).astype(np.float32)
    >>> 1.0 <= len(trim_silence(padded, sr)) / sr < 1.2
    True
    """
    frame = max(1, int(round(frame_s * sample_rate)))
    n_frames = len(wave) // frame
    if n_frames == 0:
        return wave
    frames = wave[: n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    energy_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - threshold_db)
    if energy_db.max() < -100.0 or loud.size == 0:
        return wave
    keep = int(round(keep_s * sample_rate))
    start = max(0, loud[0] * frame - keep)
    end = min(len(wave), (loud[-1] + 1) * frame + keep)
    return wave[start:end]


def normalize_loudness(wave: np.ndarray, target_dbfs: float = -23.0, peak: float = 0.99) -> np.ndarray:
    """Scale to an RMS level of `target_dbfs` dB full scale, limited so no sample exceeds `peak`.

    This is RMS loudness, not ITU-R BS.1770 LUFS: for short single-talker clips the two
    rank clips the same way, and RMS needs no extra dependency.

    >>> w = normalize_loudness(np.full(100, 0.001, dtype=np.float32), target_dbfs=-20.0)
    >>> round(float(20 * np.log10(np.sqrt(np.mean(w ** 2)))), 3)
    -20.0
    """
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms == 0.0:
        return wave.astype(np.float32, copy=False)
    gain = 10.0 ** (target_dbfs / 20.0) / rms
    max_abs = float(np.max(np.abs(wave)))
    gain = min(gain, peak / max_abs)
    return (wave * gain).astype(np.float32)


def _check_file(path: Path) -> None:
    """Raise `AudioError` saying why `path` is not a regular file one can read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise AudioError(f"{path}: a broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
        raise AudioError(f"{path}: no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise AudioError(f"{path}: a symlink loop (symbolic links that point at each other); "
                             "fix or remove the link") from None
        raise AudioError(f"{path}: cannot be read ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioError(f"{path}: not a regular file (a device, socket or pipe), not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: permission denied; make the file readable")


def _wav_shortfall(path: str | Path) -> tuple[int, int, int] | None:
    """(frames the header promises, frames the file holds, sample rate) of a RIFF/WAVE
    file whose data chunk is cut short, or None if it is complete or not a WAV file.

    libsndfile decodes a truncated WAV without a word (it returns the frames present), so
    this reads the chunk headers itself: a few small reads, whatever the file's size.

    >>> import tempfile, soundfile
    >>> p = Path(tempfile.mkdtemp()) / "a.wav"
    >>> soundfile.write(p, np.zeros(1600, dtype=np.float32) + 0.1, 16000, subtype="PCM_16")
    >>> _wav_shortfall(p) is None
    True
    >>> os.truncate(p, 44 + 2 * 400)
    >>> _wav_shortfall(p)
    (1600, 400, 16000)
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None  # not a plain WAV (RF64, W64 and others are left to libsndfile)
        order = "<" if head[:4] == b"RIFF" else ">"
        block_align, rate, offset = 0, 0, 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk, length = struct.unpack(order + "4sI", handle.read(8))
            if chunk == b"fmt " and length >= 14:
                _, _, rate, _, block_align = struct.unpack(order + "HHIIH", handle.read(14))
            elif chunk == b"data":
                # 0 and 0xFFFFFFFF are the "length unknown" of streamed WAVs: not a promise.
                if block_align <= 0 or length in (0, 0xFFFFFFFF):
                    return None
                promised, held = length // block_align, (size - offset - 8) // block_align
                return (promised, held, rate) if held < promised else None
            offset += 8 + length + (length & 1)  # chunks are padded to an even length
    return None


def _suspect(path: Path, problem: str, action: str) -> None:
    """Refuse (`AudioError`) or warn (a `UserWarning` starting with the file) about a clip, as `action` says."""
    if action == "error":
        raise AudioError(f"{path}: {problem}")
    if action == "warn":
        warnings.warn(f"{path}: {problem}; used anyway", stacklevel=3)


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    trim: bool = False,
    normalize: bool = False,
    min_samples: int = 1,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    truncated: str = "error",
    silent: str = "warn",
) -> np.ndarray:
    """Read any file libsndfile decodes (WAV, FLAC, OGG, ...) as mono float32 at `sample_rate`.

    Raises `AudioError` naming the file when it is missing, a folder, a symlink loop or
    unreadable, empty, holds NaN or infinite samples, is shorter than `min_samples` (at
    the target rate) after trimming, or longer than `max_duration_s` (checked from the
    header, before decoding).

    Suspect clips are handled as asked, each by "error" (`AudioError`), "warn" (a
    `UserWarning` naming the file, then the clip is used) or "ignore":
    `truncated`: a WAV whose header promises more samples than the file holds (an
    interrupted copy; libsndfile would silently return the part present), default "error".
    `silent`: digital silence, every sample below `SILENT_PEAK`, default "warn".

    >>> import tempfile, soundfile
    >>> p = Path(tempfile.mkdtemp()) / "a.wav"
    >>> soundfile.write(p, np.zeros((8000, 2)) + 0.1, 8000)
    >>> load_audio(p, 16000).shape
    (16000,)
    """
    for option, action in (("truncated", truncated), ("silent", silent)):
        if action not in _ACTIONS:
            raise AudioError(f"{option} must be one of {', '.join(_ACTIONS)}, got {action!r}")
    path = Path(path)
    _check_file(path)
    try:
        shortfall = _wav_shortfall(path)
    except OSError as error:
        raise AudioError(f"{path}: cannot be read ({error.strerror or error})") from error
    if shortfall is not None:
        promised, held, rate = shortfall
        _suspect(path, f"truncated: the WAV header promises {promised} samples ({promised / rate:.2f} s) but the "
                       f"file holds {held} ({held / rate:.2f} s); it was cut short (an interrupted copy?)",
                 truncated)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from error
    if info.frames == 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: the file holds no audio (0 samples)")
    duration_s = info.frames / info.samplerate
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioError(
            f"{path}: {duration_s:.1f} s is longer than the limit of {max_duration_s:g} s; "
            "cut it into utterances or raise max_duration_s"
        )
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{path}: could not decode ({error})") from error
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio (0 samples)")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{path}: {bad} samples are NaN or infinite")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wave = resample(np.ascontiguousarray(wave), file_rate, sample_rate)
    if trim:
        wave = trim_silence(wave, sample_rate)
    if normalize:
        wave = normalize_loudness(wave)
    if len(wave) < min_samples:
        raise AudioError(
            f"{path}: {len(wave)} samples ({len(wave) / sample_rate * 1000:.1f} ms) at "
            f"{sample_rate} Hz is shorter than the minimum of {min_samples} samples "
            f"({math.ceil(min_samples / sample_rate * 1000)} ms) this model needs"
        )
    peak = float(np.max(np.abs(data)))
    if peak < SILENT_PEAK:
        what = "every sample is 0" if peak == 0 else f"the loudest sample is {peak:.1e}"
        _suspect(path, f"digital silence ({what}); it holds no speech", silent)
    return np.ascontiguousarray(wave, dtype=np.float32)
