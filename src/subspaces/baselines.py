"""Dedicated speaker-encoder baselines, scored beside the learned subspaces.

Resemblyzer is a GE2E d-vector speaker encoder (3-layer LSTM over 40-band mel frames,
256-dimensional unit-norm output) whose weights ship inside its PyPI wheel, so it runs
offline. It is an optional dependency; install it with

    pip install --no-deps resemblyzer "webrtcvad-wheels>=2.0.14" librosa

(`--no-deps` because resemblyzer's own requirements pull `webrtcvad` 2.0.10, a source
build that needs a C compiler and imports `pkg_resources` (gone from setuptools 81), and
`typing` 3.7.4.3, an old backport that can shadow the standard library's. The
`webrtcvad-wheels` build ships wheels and reads its version with importlib.metadata.)

Audio is read with `subspaces.audio.load_audio` at 16 kHz, so a bad file fails with our
`AudioError` naming it, then goes through Resemblyzer's own preprocessing
(`preprocess_wav`: volume normalisation and removal of long silences by WebRTC VAD)
and `VoiceEncoder`, averaging 1.6 s partial utterances as its `embed_utterance` does.

`resemblyzer_embeddings_cached` keeps computed embeddings in one `.npz` file per cache
folder, keyed by (utt_id, path), so an evaluation that is run again reuses them.

>>> isinstance(resemblyzer_available(), bool)
True
"""

from __future__ import annotations

import importlib
import importlib.metadata
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .atomic import write_atomic
from .audio import AudioError, load_audio
from .errors import SubspacesError
from .manifest import audio_paths
from .progress import progress_bar

if TYPE_CHECKING:
    import torch

__all__ = [
    "BaselineError",
    "RESEMBLYZER_DIM",
    "RESEMBLYZER_INSTALL",
    "BaselineUnavailableError",
    "resemblyzer_available",
    "resemblyzer_embeddings",
    "resemblyzer_embeddings_cached",
]


class BaselineError(SubspacesError, ValueError):
    """A baseline input that cannot be used (a damaged embedding cache, duplicate manifest rows, ...)."""


RESEMBLYZER_INSTALL = 'pip install librosa "webrtcvad-wheels>=2.0.14" && pip install --no-deps resemblyzer==0.1.4'
# Resemblyzer's hparams.model_embedding_size.
RESEMBLYZER_DIM = 256
# Resemblyzer's hparams.sampling_rate: its mel frontend and VAD assume 16 kHz.
_SAMPLE_RATE = 16000
# Bump when the way a clip becomes an embedding here changes, so old caches are not reused.
_CACHE_FORMAT = 1
_CACHE_NAME = "resemblyzer.npz"
# VoiceEncoder.embed_utterance's defaults: partial utterances per second, and how much of
# a 1.6 s partial the last one must cover to be kept.
_PARTIAL_RATE = 1.3
_MIN_COVERAGE = 0.75
# Clips whose partial utterances share one LSTM call; a 60 s clip has about 80 partials
# of 160 x 40 floats, so 32 clips stay under 70 MB.
_CLIPS_PER_BATCH = 32
# resemblyzer_embeddings_cached writes its cache after every this many new clips (about 10 s
# of work on 2 cores for 1-2 s clips), so Ctrl-C loses at most that much.
_SAVE_EVERY = 8 * _CLIPS_PER_BATCH


class BaselineUnavailableError(SubspacesError, ImportError):
    """A baseline whose optional package is not installed; the message says how to install it."""


def _import_resemblyzer() -> ModuleType:
    try:
        return importlib.import_module("resemblyzer")
    except ImportError as error:
        raise BaselineUnavailableError(
            f"the Resemblyzer speaker baseline needs the optional package 'resemblyzer', which could not be "
            f"imported ({error}); install it with: {RESEMBLYZER_INSTALL}"
        ) from error


def resemblyzer_available() -> bool:
    """True when Resemblyzer and its audio dependencies import.

    >>> resemblyzer_available() in (True, False)
    True
    """
    try:
        _import_resemblyzer()
    except BaselineUnavailableError:
        return False
    return True


def _resemblyzer_version() -> str:
    try:
        return importlib.metadata.version("resemblyzer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _prepare(resemblyzer: ModuleType, path: Path) -> np.ndarray:
    """Load one clip and apply Resemblyzer's preprocessing: float32[samples] at 16 kHz."""
    wave = load_audio(path, _SAMPLE_RATE)
    if not np.any(wave):
        raise AudioError(f"{path}: the clip is silent (every sample is 0); it has no speaker to embed")
    trimmed = resemblyzer.preprocess_wav(wave)
    if len(trimmed) == 0:
        # WebRTC VAD (mode 3, the most aggressive) finds no speech in some short, quiet
        # clips (4 of 600 FSDD digits). Embedding an empty clip would give the same vector
        # for all of them, so keep the whole clip instead, volume-normalised as usual.
        from resemblyzer.hparams import audio_norm_target_dBFS

        trimmed = resemblyzer.normalize_volume(wave, audio_norm_target_dBFS, increase_only=True)
    return np.asarray(trimmed, dtype=np.float32)


# Resemblyzer's hparams: 25 ms windows every 10 ms at 16 kHz, 40 mel bands.
_MEL_WINDOW, _MEL_HOP, _MEL_BANDS = 400, 160, 40


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """float64[201, 40]: librosa's default mel filters (Slaney scale and area norm, 0 to 8 kHz)."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(num_frequency_bins=_MEL_WINDOW // 2 + 1, num_mel_filters=_MEL_BANDS, min_frequency=0.0,
                           max_frequency=_SAMPLE_RATE / 2, sampling_rate=_SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney").astype(np.float64)


def mel_frames(wave: np.ndarray) -> np.ndarray:
    """Resemblyzer's mel spectrogram of a 16 kHz clip, float32[frames, 40]: what its
    `wav_to_mel_spectrogram` gives (librosa's power mel spectrogram: periodic Hann windows
    of 25 ms every 10 ms, centred with zero padding), computed with numpy, because librosa
    compiles numba code on its first call, seconds on every fresh install.

    >>> mel_frames(np.zeros(16000, dtype=np.float32)).shape
    (101, 40)
    """
    half = _MEL_WINDOW // 2
    padded = np.pad(np.asarray(wave, dtype=np.float64), (half, half))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _MEL_WINDOW)[::_MEL_HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_MEL_WINDOW) / _MEL_WINDOW)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return (power @ _mel_filters()).astype(np.float32)


def _partial_mels(resemblyzer: ModuleType, encoder: torch.nn.Module, wave: np.ndarray) -> np.ndarray:
    """A preprocessed clip cut into Resemblyzer's 1.6 s partial utterances: float32[P, 160, 40].

    The same cut as `VoiceEncoder.embed_utterance` with its defaults (rate 1.3 partials
    per second, the last one kept if it covers 75 %), zero-padding the end as it does.
    """
    wav_slices, mel_slices = encoder.compute_partial_slices(len(wave), rate=_PARTIAL_RATE, min_coverage=_MIN_COVERAGE)
    if wav_slices[-1].stop >= len(wave):
        wave = np.pad(wave, (0, wav_slices[-1].stop - len(wave)))
    mel = mel_frames(wave)
    return np.stack([mel[s] for s in mel_slices])


def resemblyzer_embeddings(paths: Sequence[str | Path], progress: bool = True) -> np.ndarray:
    """Resemblyzer d-vectors of audio files: float32[N, 256], each row of unit length.

    Each clip's embedding is what `VoiceEncoder.embed_utterance` gives (the normalised
    mean of its partial-utterance embeddings), but the partials of `_CLIPS_PER_BATCH`
    clips go through the LSTM together: its 160 steps are sequential, so one partial at a
    time leaves the CPU mostly idle (batches of 32 ran 3x faster per clip on one core).
    Runs on the CPU and never touches the network (the weights are inside the package).
    Raises `BaselineUnavailableError` when Resemblyzer is not installed and `AudioError`
    naming the file when a clip cannot be read or is silent.

    >>> import tempfile, soundfile
    >>> if resemblyzer_available():
    ...     p = Path(tempfile.mkdtemp()) / "a.wav"
    ...     t = np.arange(16000) / 16000
    ...     soundfile.write(p, 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t)), 16000)
    ...     shape = resemblyzer_embeddings([p], progress=False).shape
    ... else:
    ...     shape = (1, 256)
    >>> shape
    (1, 256)
    """
    import torch

    resemblyzer = _import_resemblyzer()
    encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)
    paths = [Path(p) for p in paths]
    embeddings = np.empty((len(paths), RESEMBLYZER_DIM), dtype=np.float32)
    bar = progress_bar(total=len(paths), desc="resemblyzer", unit="utt", enabled=progress)
    for start in range(0, len(paths), _CLIPS_PER_BATCH):
        batch = paths[start : start + _CLIPS_PER_BATCH]
        partials = [_partial_mels(resemblyzer, encoder, _prepare(resemblyzer, path)) for path in batch]
        with torch.no_grad():
            partial_embeddings = encoder(torch.from_numpy(np.concatenate(partials))).numpy()
        ends = np.cumsum([len(p) for p in partials])
        for row, (path, clip) in enumerate(zip(batch, np.split(partial_embeddings, ends[:-1])), start=start):
            mean = clip.mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if not np.isfinite(norm) or norm == 0.0:
                raise AudioError(f"{path}: Resemblyzer gave no usable embedding (an all-zero or non-finite vector)")
            embeddings[row] = mean / norm
        bar.update(len(batch))
    bar.close()
    return embeddings


def _read_cache(path: Path, version: str) -> dict[tuple[str, str], np.ndarray]:
    """(utt_id, path) -> embedding from a cache file; empty when absent or made differently."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as stored:
            if int(stored["format"]) != _CACHE_FORMAT or str(stored["encoder_version"]) != version:
                return {}
            utt_ids, paths, embeddings = stored["utt_ids"], stored["paths"], stored["embeddings"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise BaselineError(
            f"{path}: not a Resemblyzer embedding cache ({error}); delete it or choose another cache folder"
        ) from error
    if not len(utt_ids) == len(paths) == len(embeddings) or embeddings.shape[1:] != (RESEMBLYZER_DIM,):
        raise BaselineError(f"{path}: a damaged Resemblyzer embedding cache (inconsistent array shapes); delete it")
    return {(str(u), str(p)): e for u, p, e in zip(utt_ids, paths, embeddings)}


def _write_cache(path: Path, version: str, entries: dict[tuple[str, str], np.ndarray]) -> None:
    keys = list(entries)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file handle, so numpy does not append ".npz" to the name
            np.savez(
                handle,
                format=np.array(_CACHE_FORMAT),
                encoder_version=np.array(version),
                utt_ids=np.array([k[0] for k in keys], dtype=str),
                paths=np.array([k[1] for k in keys], dtype=str),
                embeddings=np.stack([entries[k] for k in keys]).astype(np.float32),
            )

    write_atomic(path, write)


def resemblyzer_embeddings_cached(
    table: pd.DataFrame, cache_dir: str | Path, progress: bool = True
) -> np.ndarray:
    """Resemblyzer embeddings of a manifest's rows, float32[N, 256] in row order, cached.

    `cache_dir/resemblyzer.npz` holds every embedding computed so far, keyed by the
    row's `utt_id` and resolved audio path (and the Resemblyzer version); only rows not
    in it are computed, and the file is rewritten atomically with old and new rows every
    `_SAVE_EVERY` new clips, so an interrupted run keeps what it had computed.

    >>> import tempfile, soundfile
    >>> if resemblyzer_available():
    ...     folder = Path(tempfile.mkdtemp())
    ...     soundfile.write(folder / "a.wav", 0.3 * np.sin(np.arange(16000) / 16000 * 900), 16000)
    ...     table = pd.DataFrame({"utt_id": ["a"], "path": [str(folder / "a.wav")]})
    ...     first = resemblyzer_embeddings_cached(table, folder / "cache", progress=False)
    ...     again = resemblyzer_embeddings_cached(table, folder / "cache", progress=False)
    ...     same = bool(np.array_equal(first, again))
    ... else:
    ...     same = True
    >>> same
    True
    """
    _import_resemblyzer()  # fail early, before any cache folder is read or made
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / _CACHE_NAME
    version = _resemblyzer_version()
    paths = [str(p.resolve()) for p in audio_paths(table)]
    keys = list(zip(table["utt_id"].astype(str), paths))
    if len(set(keys)) != len(keys):
        raise BaselineError(f"the manifest has {len(keys) - len(set(keys))} duplicate (utt_id, path) row(s)")
    if not keys:
        return np.empty((0, RESEMBLYZER_DIM), dtype=np.float32)
    cached = _read_cache(cache_file, version)
    missing = [key for key in keys if key not in cached]
    bar = progress_bar(total=len(missing), desc="resemblyzer", unit="utt", enabled=progress and bool(missing))
    # Saved every `_SAVE_EVERY` clips, so an interrupted run keeps what it computed.
    for start in range(0, len(missing), _SAVE_EVERY):
        chunk = missing[start : start + _SAVE_EVERY]
        cached.update(zip(chunk, resemblyzer_embeddings([Path(p) for _, p in chunk], progress=False)))
        _write_cache(cache_file, version, cached)
        bar.update(len(chunk))
    bar.close()
    return np.stack([cached[key] for key in keys]).astype(np.float32)
