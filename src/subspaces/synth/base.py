"""Voices, the engine table, and what every engine is built from.

A `Voice` is an engine name plus the engine's parameters, with a stable `speaker` id.
`ENGINES` maps each engine's name to the module that speaks it (`espeak.py`,
`flite.py`, `kokoro.py`, `piper.py`, `command.py`); every function here that depends
on the engine looks it up there, so a new engine is one module that defines what
`Engine` lists plus one entry in the table (filled in `subspaces/synth/__init__.py`:
the engine modules import this one, so it cannot import them).

Every engine but `command` also takes `warp` (0.7-1.4): pitch and formants are moved by
that factor and the clip shortened by it, as a shorter vocal tract would (speed
perturbation), which makes several speakers out of one voice.

>>> Voice("flite", {"voice": "slt", "f0_mean": 150}).base
'flite:slt'
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from ..errors import SubspacesError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENGINES",
    "Engine",
    "EngineNotInstalled",
    "SynthError",
    "Voice",
    "VoiceError",
    "check_range",
    "check_warp",
    "engine_of",
    "find_program",
    "read_wave",
    "reject_unknown",
    "run",
    "sample_grid",
    "sample_voice_mix",
    "sample_voices",
    "synthesize",
    "warp_rate",
    "warp_suffix",
]

# `warp` multiplies pitch and formants; beyond about +-30 % voices stop sounding human.
WARP = (0.7, 1.4)
# A TTS run that takes longer than this is hung; a clip is seconds long.
DEFAULT_TIMEOUT_S = 120.0

_SPEAKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SynthError(SubspacesError, RuntimeError):
    """Synthesis failed: the engine's message, the voice and the text are in the message."""


class EngineNotInstalled(SynthError):
    """The engine's program is missing; the message says how to install it."""


class VoiceError(SubspacesError, ValueError):
    """A voice that no engine can speak with: unknown engine, variant, or parameter."""


class Engine(Protocol):
    """What an engine module defines; `ENGINES` maps the engine's name to it.

    `sample` is None for an engine whose voices are only made by hand (`command`).
    """

    sample: Callable[[int, int, Sequence[str] | None, float], list[dict[str, Any]]] | None

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The voice's parameters checked and completed with defaults; raises `VoiceError`."""

    def default_speaker(self, params: Mapping[str, Any]) -> str:
        """The speaker id of a voice with these (checked) parameters and no id of its own."""

    def base_name(self, voice: Voice) -> str:
        """The base voice's name, the part of `Voice.base` after `ENGINE:`."""

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """Speak `text`: a mono float32 waveform and its sample rate."""

    def save_files(self, voice: Voice, folder: Path) -> dict[str, str]:
        """Write what a voice bank in `folder` keeps beside its JSON for this voice; return
        the entry's fields that name those files (empty when there are none)."""

    def check_installed(self) -> None:
        """Raise `EngineNotInstalled`, with the install command, when the engine is missing."""


# The engine modules, by name; the order is the order error messages list them in.
ENGINES: dict[str, Engine] = {}


def engine_of(name: str) -> Engine:
    """The engine called `name`, or a `VoiceError` that lists the known ones.

    >>> engine_of("festival")
    Traceback (most recent call last):
    ...
    subspaces.synth.base.VoiceError: unknown TTS engine 'festival'; choose one of espeak-ng, flite, kokoro, piper, command
    """
    if name not in ENGINES:
        raise VoiceError(f"unknown TTS engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name]


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
    subspaces.synth.base.VoiceError: espeak-ng variant 'nobody' is not installed; ...
    """

    engine: str
    params: Mapping[str, Any] = field(default_factory=dict)
    speaker: str = ""

    def __post_init__(self) -> None:
        engine = engine_of(self.engine)
        params = engine.check_params(dict(self.params))
        object.__setattr__(self, "params", params)
        speaker = self.speaker or engine.default_speaker(params)
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
        return f"{self.engine}:{engine_of(self.engine).base_name(self)}"


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice`: a mono float32 waveform and its sample rate.

    Raises `EngineNotInstalled` (with the install command) when the engine's program
    is missing and `SynthError` when the engine fails or writes no audio.

    >>> echo = Voice("command", {"command": "sox -n -r 16000 {out} synth 0.5 sine 300 # {text}"})
    >>> wave, rate = synthesize(echo, "hi")  # doctest: +SKIP
    """
    if not text.strip():
        raise SynthError(f"nothing to say: the text {text!r} is empty")
    return engine_of(voice.engine).synthesize(voice, text)


def sample_voices(engine: str, n: int, seed: int = 0, *, variants: Sequence[str] | None = None,
                  extrapolate: float = 1.0) -> list[Voice]:
    """Draw `n` distinct voices of `engine` reproducibly from `seed`.

    espeak-ng: variant x pitch x rate x gap; flite: voice x mean F0 x duration stretch
    (rms x duration stretch only: its pitch cannot be set); piper: a distinct warp per
    voice (9 per model: 0.8-1.22), with a length scale (`variants`: Piper model paths;
    default the bundled one);
    kokoro: mixes of the shipped styles, pushed up to `extrapolate` beyond their average
    (`kokoro.sample_kokoro_voice_params`), with speed 0.9-1.1.
    Base voices (`variants`: espeak-ng variants or flite voices; all by default) are
    taken in a shuffled cycle so that `n` up to their number gives distinct base voices;
    the other parameters are drawn uniformly from fixed grids.

    >>> [v.speaker for v in sample_voices("flite", 2, seed=0)]
    ['flite-kal16-f90-d0.8', 'flite-kal-f100-d1.2']
    """
    sample = ENGINES[engine].sample if engine in ENGINES else None
    if sample is None:
        samplers = [name for name, module in ENGINES.items() if module.sample is not None]
        raise VoiceError(
            f"cannot sample {engine!r} voices: sampling knows {', '.join(samplers[:-1])} and {samplers[-1]}; "
            "make command voices yourself with Voice('command', {...})"
        )
    if n < 1:
        raise VoiceError(f"asked for {n} voices; ask for at least 1")
    return [Voice(engine, params) for params in sample(n, seed, variants, extrapolate)]


def sample_voice_mix(espeak: int = 0, flite: int = 0, seed: int = 0, *, kokoro: int = 0, piper: int = 0) -> list[Voice]:
    """`espeak` espeak-ng, `flite` flite, `kokoro` Kokoro and `piper` Piper voices, in that
    order, each engine's sampled with `seed`.

    >>> [v.engine for v in sample_voice_mix(espeak=1, flite=1)]
    ['espeak-ng', 'flite']
    """
    counts = {"espeak-ng": espeak, "flite": flite, "kokoro": kokoro, "piper": piper}
    return [voice for engine, n in counts.items() if n for voice in sample_voices(engine, n, seed=seed)]


# --- what engines are built from ---------------------------------------------------------

def find_program(program: str, package: str) -> str:
    """The path of `program` on PATH, or `EngineNotInstalled` naming the package to install.

    >>> find_program("no-such-tts", "no-such-tts")
    Traceback (most recent call last):
    ...
    subspaces.synth.base.EngineNotInstalled: no-such-tts is not installed (not found on PATH); ...
    """
    path = shutil.which(program)
    if path is None:
        raise EngineNotInstalled(
            f"{program} is not installed (not found on PATH); install it with `apt-get install {package}` "
            f"(Debian/Ubuntu) or `brew install {package}` (macOS)"
        )
    return path


def check_range(engine: str, name: str, value: Any, bounds: tuple[float, float], kind: type) -> Any:
    """`value` as a `kind` (int or float) within `bounds`, or a `VoiceError` naming the parameter.

    >>> check_range("espeak-ng", "pitch", 120, (0, 99), int)
    Traceback (most recent call last):
    ...
    subspaces.synth.base.VoiceError: espeak-ng parameter pitch=120 is outside 0..99
    """
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise VoiceError(f"{engine} parameter {name}={value!r} is not a number") from None
    if isinstance(value, float) and kind is int and not float(value).is_integer():
        raise VoiceError(f"{engine} parameter {name}={value!r} must be a whole number")
    if not bounds[0] <= number <= bounds[1]:
        raise VoiceError(f"{engine} parameter {name}={value!r} is outside {bounds[0]}..{bounds[1]}")
    return number


def reject_unknown(engine: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    """Raise a `VoiceError` listing the parameters `engine` takes when `params` has another."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise VoiceError(f"{engine} has no parameter(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")


def check_warp(engine: str, params: Mapping[str, Any]) -> dict[str, float]:
    """`{"warp": w}` for a voice warped by w, `{}` for one not warped (no warp, or 1).

    >>> check_warp("flite", {"warp": 1.1}), check_warp("flite", {"warp": 1})
    ({'warp': 1.1}, {})
    """
    warp = params.get("warp")
    if warp is None or float(warp) == 1.0:
        return {}
    return {"warp": check_range(engine, "warp", warp, WARP, float)}


def warp_rate(rate: int, params: Mapping[str, Any]) -> int:
    """The sample rate to declare for a clip made at `rate`: declaring the samples at
    `warp` times their rate scales pitch and formants by `warp`.

    >>> warp_rate(22050, {"warp": 1.2}), warp_rate(22050, {})
    (26460, 22050)
    """
    return int(round(rate * float(params.get("warp", 1.0))))


def warp_suffix(params: Mapping[str, Any]) -> str:
    """What a warp adds to a default speaker id (`-v1.1`; nothing without one)."""
    return f"-v{params['warp']:g}" if "warp" in params else ""


def run(argv: Sequence[str] | str, voice: Voice, text: str, *, shell: bool = False, stdin: bytes | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Run an engine's program for one clip; its stdout, or a `SynthError` with its message."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, shell=shell, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{voice.engine} voice {voice.speaker} took over {timeout_s:g} s for {text!r}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()[-500:] or "(no message)"
        raise SynthError(f"{voice.engine} voice {voice.speaker} failed (exit {done.returncode}) for {text!r}: {message}")
    return done.stdout


def read_wave(data: bytes | Path, voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """The mono float32 samples and rate of a wave file (its bytes or its path) an engine wrote."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        wave, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise SynthError(f"{voice.engine} voice {voice.speaker} wrote no readable audio for {text!r} ({error})") from error
    if wave.shape[0] == 0:
        raise SynthError(f"{voice.engine} voice {voice.speaker} wrote 0 samples for {text!r}")
    return np.ascontiguousarray(wave.mean(axis=1), dtype=np.float32), int(rate)


def sample_grid(engine: str, n: int, seed: int, bases: Sequence[str], base_param: str,
                grids: Mapping[str, Sequence[Any]], speaker_of: Callable[[dict[str, Any]], str],
                unset: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """`n` distinct parameter sets: a base voice (`base_param`) from `bases`, in a seeded
    shuffled cycle, and one value from each of `grids`. `unset[base]` names the grid
    parameters a base leaves out (its value is still drawn, so the draws stay aligned);
    `speaker_of` gives a set's speaker id, by which sets are told apart.

    >>> sample_grid("toy", 2, 0, ["a", "b"], "name", {"x": (1, 2)}, lambda p: f"{p['name']}{p['x']}")
    [{'name': 'b', 'x': 2}, {'name': 'a', 'x': 2}]
    """
    unset = unset or {}
    if not bases:
        raise VoiceError("no base voices to sample from: `variants` is empty")
    capacity = sum(math.prod(len(grid) for name, grid in grids.items() if name not in unset.get(base, ()))
                   for base in set(bases))
    if n > capacity:
        raise VoiceError(f"asked for {n} {engine} voices but only {capacity} distinct ones exist on the sampling grid")
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    cycle: list[str] = []
    while len(out) < n:
        if not cycle:
            cycle = [bases[i] for i in rng.permutation(len(bases))]
        params: dict[str, Any] = {base_param: cycle.pop()}
        for name, grid in grids.items():
            value = grid[int(rng.integers(len(grid)))]
            if name not in unset.get(params[base_param], ()):
                params[name] = value
        speaker = speaker_of(params)
        if speaker not in seen:
            seen.add(speaker)
            out.append(params)
    return out
