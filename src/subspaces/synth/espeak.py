"""The espeak-ng engine (Debian package `espeak-ng`), and its phonemes for the neural engines.

A voice is a variant (`en+VARIANT`, about 100), pitch (`-p`, 0-99), rate (`-s`, words
per minute) and word gap (`-g`, units of 10 ms), plus `warp`. `espeak_ipa` writes the
IPA that Kokoro and Piper read.

>>> default_speaker({"language": "en", "variant": "m3", "pitch": 40, "rate": 160, "gap": 1})
'espeak-m3-p40-s160-g1'
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .base import (EngineNotInstalled, SynthError, Voice, VoiceError, check_range, check_warp, find_program, read_wave,
                   reject_unknown, run, sample_grid, warp_rate, warp_suffix)

__all__ = ["espeak_ipa", "espeak_variants"]

ENGINE = "espeak-ng"
# espeak-ng applies a `+VARIANT` only to some language voices: `en-gb+m3` (and so
# `en-gb`'s aliases other than `en`) silently ignores it, `en+m3` and `en-us+m3` honour it.
ESPEAK_LANGUAGES = ("en", "en-us")
# Ranges from espeak-ng's manual: pitch 0-99, speed 80-450 words per minute (it clamps
# outside them, so a value outside is a mistake the user would never hear).
ESPEAK_PITCH = (0, 99)
ESPEAK_RATE = (80, 450)
ESPEAK_GAP = (0, 100)
# The grids `sample` draws from: wide enough to make voices that sound different,
# narrow enough to stay intelligible (checked by ear on a few draws).
_ESPEAK_PITCHES = tuple(range(20, 81, 5))
_ESPEAK_RATES = tuple(range(130, 211, 10))
_ESPEAK_GAPS = (0, 1, 2, 3, 4)
_PUNCTUATION = ",.;:!?"


@lru_cache(maxsize=1)
def espeak_variants() -> tuple[str, ...]:
    """Names of the installed espeak-ng voice variants (what follows `en+`).

    >>> "m3" in espeak_variants()  # doctest: +SKIP
    True
    """
    program = find_program("espeak-ng", "espeak-ng")
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


def espeak_ipa(text: str, language: str = "en-us", tie: bool = True) -> str:
    """espeak-ng's IPA for `text`, clause by clause, keeping the text's punctuation.

    With `tie`, the two halves of a diphthong or affricate are joined by `^`.

    >>> espeak_ipa("yellow window")  # doctest: +SKIP
    'jˈɛlo^ʊ wˈɪndo^ʊ'
    """
    program = find_program("espeak-ng", "espeak-ng")
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


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Language (en or en-us), variant, pitch, rate and gap, with espeak-ng's defaults."""
    allowed = {"variant", "pitch", "rate", "gap", "language"}
    reject_unknown(ENGINE, params, allowed | {"warp"})
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
    checked["pitch"] = check_range(ENGINE, "pitch", params.get("pitch", 50), ESPEAK_PITCH, int)
    checked["rate"] = check_range(ENGINE, "rate", params.get("rate", 175), ESPEAK_RATE, int)
    checked["gap"] = check_range(ENGINE, "gap", params.get("gap", 0), ESPEAK_GAP, int)
    return checked | check_warp(ENGINE, params)


def default_speaker(params: Mapping[str, Any]) -> str:
    """`espeak-[LANGUAGE-]VARIANT-pPITCH-sRATE-gGAP[-vWARP]` (no language for plain `en`)."""
    language = "" if params["language"] == "en" else params["language"] + "-"
    variant = params.get("variant", "default")
    return f"espeak-{language}{variant}-p{params['pitch']}-s{params['rate']}-g{params['gap']}{warp_suffix(params)}"


def base_name(voice: Voice) -> str:
    """The variant: the language is an accent, not another person."""
    return voice.params.get("variant", "default")


def sample(n: int, seed: int, variants: Sequence[str] | None, extrapolate: float) -> list[dict[str, Any]]:
    """Variant x pitch x rate x gap (`variants`: the variants to use; all installed by default)."""
    installed = espeak_variants()  # raises, with the install command, when espeak-ng is missing
    bases = list(variants) if variants is not None else list(installed)
    grids = {"pitch": _ESPEAK_PITCHES, "rate": _ESPEAK_RATES, "gap": _ESPEAK_GAPS}
    return sample_grid(ENGINE, n, seed, bases, "variant", grids, lambda p: default_speaker(check_params(dict(p))))


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Run espeak-ng once; 22.05 kHz (times the voice's warp)."""
    program = find_program("espeak-ng", "espeak-ng")
    p = voice.params
    name = p["language"] + (f"+{p['variant']}" if "variant" in p else "")
    # The text goes in on stdin so a text that starts with '-' is never read as an option.
    argv = [program, "-v", name, "-p", str(p["pitch"]), "-s", str(p["rate"]), "-g", str(p["gap"]),
            "-b", "1", "--stdin", "--stdout"]
    wave, rate = read_wave(run(argv, voice, text, stdin=text.encode("utf-8")), voice, text)
    return wave, warp_rate(rate, p)


def save_files(voice: Voice, folder: Path) -> dict[str, str]:
    """Nothing: an espeak-ng voice is all in its parameters."""
    return {}


def check_installed() -> None:
    """Raise `EngineNotInstalled` when espeak-ng is missing or lists no variants."""
    espeak_variants()
