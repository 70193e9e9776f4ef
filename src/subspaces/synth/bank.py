"""Voice banks: a list of voices kept in a JSON file, to reuse across grids.

`save_voices` writes one atomically, with the files an engine keeps beside it (Kokoro
voices' style tensors, `styles/SPEAKER.npy`); `load_voices` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_text_atomic
from .base import Voice, VoiceError, engine_of

__all__ = ["load_voices", "save_voices"]

_BANK_FORMAT = "subspaces-voice-bank"


def save_voices(voices: Sequence[Voice], path: str | Path) -> None:
    """Write a voice bank (JSON) atomically; `load_voices` reads it back.

    >>> import tempfile
    >>> bank = Path(tempfile.mkdtemp()) / "voices.json"
    >>> save_voices([Voice("flite", {"voice": "slt"})], bank)
    >>> load_voices(bank)[0].speaker
    'flite-slt'
    """
    _check_unique(voices, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [voice.to_dict() | engine_of(voice.engine).save_files(voice, path.parent) for voice in voices]
    body = json.dumps({"format": _BANK_FORMAT, "version": 1, "voices": entries}, indent=2)
    write_text_atomic(path, body + "\n")


def load_voices(path: str | Path) -> list[Voice]:
    """Read a voice bank written by `save_voices` (or by hand: a JSON object with a
    `voices` list of `{"engine": ..., "params": {...}, "speaker": optional}`)."""
    path = Path(path)
    if not path.is_file():
        raise VoiceError(f"{path}: no such voice bank file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VoiceError(f"{path}: not a JSON voice bank ({error})") from error
    entries = data.get("voices") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise VoiceError(f'{path}: a voice bank is a JSON object with a "voices" list')
    voices = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "engine" not in entry:
            raise VoiceError(f"{path}: voice #{index} is not an object with an \"engine\"")
        try:
            voices.append(Voice(entry["engine"], entry.get("params", {}), entry.get("speaker", "")))
        except VoiceError as error:
            raise VoiceError(f"{path}: voice #{index}: {error}") from error
    _check_unique(voices, str(path))
    return voices


def _check_unique(voices: Sequence[Voice], name: str) -> None:
    seen: dict[str, Voice] = {}
    for voice in voices:
        if voice.speaker in seen and seen[voice.speaker] != voice:
            raise VoiceError(f"{name}: two different voices share the speaker id {voice.speaker!r}")
        if voice.speaker in seen:
            raise VoiceError(f"{name}: voice {voice.speaker!r} is listed twice")
        seen[voice.speaker] = voice
