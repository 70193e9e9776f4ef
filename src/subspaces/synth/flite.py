"""The flite engine (Debian package `flite`).

A voice is one of flite's own voices (kal, kal16, awb, rms, slt) with a mean F0
(`f0_mean`, Hz: flite's `int_f0_target_mean`) and a duration stretch (`stretch`:
`duration_stretch`), plus `warp`.

>>> default_speaker({"voice": "slt", "f0_mean": 150.0, "stretch": 1.1})
'flite-slt-f150-d1.1'
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import (SynthError, Voice, VoiceError, check_range, check_warp, find_program, read_wave, reject_unknown, run,
                   sample_grid, warp_rate, warp_suffix)

__all__ = ["FLITE_VOICES", "flite_voices"]

ENGINE = "flite"
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
# The grids `sample` draws from: wide enough to make voices that sound different,
# narrow enough to stay intelligible (checked by ear on a few draws).
_FLITE_F0S = tuple(float(f) for f in range(80, 221, 10))
_FLITE_STRETCHES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3)


def flite_voices() -> tuple[str, ...]:
    """The flite voices this module can use (raises if flite is not installed).

    >>> flite_voices()  # doctest: +SKIP
    ('kal', 'kal16', 'awb', 'rms', 'slt')
    """
    find_program("flite", "flite")
    return FLITE_VOICES


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The voice (default kal), and f0_mean and stretch when given."""
    reject_unknown(ENGINE, params, {"voice", "f0_mean", "stretch", "warp"})
    name = params.get("voice", "kal")
    if name not in FLITE_VOICES:
        raise VoiceError(f"flite voice {name!r} is unknown; choose one of {', '.join(FLITE_VOICES)}")
    checked: dict[str, Any] = {"voice": name}
    if params.get("f0_mean") is not None:
        if name in FLITE_FIXED_F0:
            raise VoiceError(f"flite voice {name!r} ignores f0_mean (its F0 model has no target mean); leave it out")
        checked["f0_mean"] = check_range(ENGINE, "f0_mean", params["f0_mean"], FLITE_F0_HZ, float)
    if params.get("stretch") is not None:
        checked["stretch"] = check_range(ENGINE, "stretch", params["stretch"], FLITE_STRETCH, float)
    return checked | check_warp(ENGINE, params)


def default_speaker(params: Mapping[str, Any]) -> str:
    """`flite-VOICE[-fF0][-dSTRETCH][-vWARP]`."""
    parts = [f"flite-{params['voice']}"]
    if "f0_mean" in params:
        parts.append(f"f{params['f0_mean']:g}")
    if "stretch" in params:
        parts.append(f"d{params['stretch']:g}")
    return "-".join(parts) + warp_suffix(params)


def base_name(voice: Voice) -> str:
    """The voice, with kal16 as kal (one recorded speaker at 8 and 16 kHz)."""
    return FLITE_SAME_SPEAKER.get(voice.params["voice"], voice.params["voice"])


def sample(n: int, seed: int, variants: Sequence[str] | None, extrapolate: float) -> list[dict[str, Any]]:
    """Voice x mean F0 x duration stretch (rms: x stretch only); `variants`: the voices to use."""
    bases = list(variants) if variants is not None else list(FLITE_VOICES)
    grids = {"f0_mean": _FLITE_F0S, "stretch": _FLITE_STRETCHES}
    unset = {name: ("f0_mean",) for name in FLITE_FIXED_F0}
    return sample_grid(ENGINE, n, seed, bases, "voice", grids, lambda p: default_speaker(check_params(dict(p))), unset)


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Run flite once into a temporary file; 8 kHz for kal, 16 kHz for the others (times the warp)."""
    program = find_program("flite", "flite")
    p = voice.params
    with tempfile.TemporaryDirectory(prefix="subspaces-flite-") as folder:
        out = Path(folder) / "out.wav"
        argv = [program, "-voice", p["voice"], "-t", text, "-o", str(out)]
        if "f0_mean" in p:
            argv += ["--setf", f"int_f0_target_mean={p['f0_mean']:g}"]
        if "stretch" in p:
            argv += ["--setf", f"duration_stretch={p['stretch']:g}"]
        run(argv, voice, text)
        if not out.is_file():
            raise SynthError(f"flite voice {voice.speaker} wrote no file for {text!r}")
        wave, rate = read_wave(out, voice, text)
    return wave, warp_rate(rate, p)


def save_files(voice: Voice, folder: Path) -> dict[str, str]:
    """Nothing: a flite voice is all in its parameters."""
    return {}


def check_installed() -> None:
    """Raise `EngineNotInstalled` when flite is missing."""
    flite_voices()
