"""Nuisance channel interventions: the same voice saying the same text through another channel.

A channel is named by a short spec string, which is also its value in a grid's
`channel` column:

- `clean`: unchanged;
- `telephone`: resampled to 8 kHz and back, band-passed to 300-3400 Hz (the ITU-T
  narrowband telephone band);
- `mulaw` / `mulawB`: G.711-style mu-law companding quantised to B bits (default 8);
- `noiseX`: white Gaussian noise added at an SNR of X dB (e.g. `noise20`, `noise-5`);
- `reverbT`: convolved with a synthetic room impulse response whose energy decays by
  60 dB in T seconds (e.g. `reverb0.4`).

Noise and rooms are random; they are drawn from the `seed` passed in, so a grid that
derives the seed from the clip's id makes the same audio on every run.

>>> import numpy as np
>>> wave = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32)
>>> parse_channel("noise20")
Channel(kind='noise', value=20.0)
>>> apply_channel(wave, 16000, "telephone").shape
(16000,)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..audio import resample
from ..errors import SubspacesError

__all__ = [
    "CHANNEL_KINDS",
    "Channel",
    "ChannelError",
    "add_noise",
    "apply_channel",
    "mu_law",
    "parse_channel",
    "room_reverb",
    "telephone_band",
]

CHANNEL_KINDS = ("clean", "telephone", "mulaw", "noise", "reverb")
# ITU-T G.712 narrowband telephone channel: 300-3400 Hz, sampled at 8 kHz.
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
# G.711 mu-law uses mu = 255 with 8-bit codes.
MU = 255.0
_DEFAULT_VALUE = {"mulaw": 8.0}
_SPEC = re.compile(r"^(clean|telephone|mulaw|noise|reverb)(-?[0-9]+(?:\.[0-9]+)?)?$")


class ChannelError(SubspacesError, ValueError):
    """A channel spec that cannot be parsed, or a value outside its valid range."""


@dataclass(frozen=True)
class Channel:
    """A parsed channel spec: `kind` (one of `CHANNEL_KINDS`) and its number, if any."""

    kind: str
    value: float | None = None


def parse_channel(spec: str) -> Channel:
    """Parse a channel spec string (see the module docstring).

    >>> parse_channel("reverb0.4")
    Channel(kind='reverb', value=0.4)
    >>> parse_channel("mulaw")
    Channel(kind='mulaw', value=8.0)
    """
    match = _SPEC.match(spec.strip())
    if not match:
        raise ChannelError(
            f"unknown channel {spec!r}; use clean, telephone, mulaw[BITS], noise<SNR dB> or reverb<RT60 s> "
            "(e.g. mulaw, noise20, reverb0.4)"
        )
    kind, number = match.group(1), match.group(2)
    value = float(number) if number is not None else _DEFAULT_VALUE.get(kind)
    if kind in ("clean", "telephone") and number is not None:
        raise ChannelError(f"channel {spec!r}: {kind} takes no number")
    if kind == "noise" and value is None:
        raise ChannelError(f"channel {spec!r}: give the SNR in dB, e.g. noise20")
    if kind == "reverb" and (value is None or not 0.05 <= value <= 5.0):
        raise ChannelError(f"channel {spec!r}: give an RT60 between 0.05 and 5 seconds, e.g. reverb0.4")
    if kind == "mulaw" and (value is None or not value.is_integer() or not 2 <= value <= 16):
        raise ChannelError(f"channel {spec!r}: mu-law takes a whole number of bits from 2 to 16, e.g. mulaw8")
    return Channel(kind, value)


def telephone_band(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Pass `wave` through a narrowband telephone channel: down to 8 kHz, a 300-3400 Hz
    band-pass (an FFT brick-wall filter), and back to `sample_rate`.

    >>> tone = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 6000).astype(np.float32)
    >>> out = telephone_band(tone, 16000)  # a 6 kHz tone is cut by over 50 dB
    >>> bool(np.sqrt(np.mean(out ** 2)) < 0.7071 * 10 ** (-50 / 20))
    True
    """
    narrow = resample(wave, sample_rate, TELEPHONE_RATE) if sample_rate != TELEPHONE_RATE else wave
    spectrum = np.fft.rfft(narrow.astype(np.float64))
    freqs = np.fft.rfftfreq(len(narrow), d=1.0 / TELEPHONE_RATE)
    spectrum[(freqs < TELEPHONE_BAND_HZ[0]) | (freqs > TELEPHONE_BAND_HZ[1])] = 0.0
    narrow = np.fft.irfft(spectrum, n=len(narrow)).astype(np.float32)
    back = resample(narrow, TELEPHONE_RATE, sample_rate) if sample_rate != TELEPHONE_RATE else narrow
    # Resampling there and back can change the length by a sample; keep the input's.
    out = np.zeros(len(wave), dtype=np.float32)
    out[: min(len(back), len(wave))] = back[: len(wave)]
    return out


def mu_law(wave: np.ndarray, bits: int = 8) -> np.ndarray:
    """Mu-law compand, quantise to `bits` bits, and expand (a G.711-like codec).

    Input is clipped to [-1, 1] first, as a codec would.

    >>> len(np.unique(mu_law(np.linspace(-1, 1, 10000).astype(np.float32), bits=4)))
    16
    """
    x = np.clip(wave.astype(np.float64), -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    levels = 2 ** int(bits)
    # Mid-rise quantiser: `levels` codes spread evenly over [-1, 1].
    codes = np.clip(np.floor((compressed + 1.0) / 2.0 * levels), 0, levels - 1)
    quantised = (codes + 0.5) / levels * 2.0 - 1.0
    expanded = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(MU)) / MU
    return expanded.astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """Add white Gaussian noise scaled so that signal power / noise power is exactly
    `snr_db` dB (measured over the whole clip).

    >>> w = np.sin(np.arange(8000) / 10).astype(np.float32)
    >>> noisy = add_noise(w, 10.0, seed=0)
    >>> round(float(10 * np.log10(np.mean(w.astype(float) ** 2) / np.mean((noisy - w).astype(float) ** 2))), 1)
    10.0
    """
    signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
    if signal_power == 0.0:
        raise ChannelError("cannot add noise at an SNR to a silent clip (its power is 0)")
    noise = np.random.default_rng(seed).standard_normal(len(wave))
    noise *= np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / np.mean(noise**2))
    return (wave + noise).astype(np.float32)


def room_reverb(wave: np.ndarray, sample_rate: int, rt60_s: float, seed: int) -> np.ndarray:
    """Convolve with a synthetic room impulse response: a unit direct path followed by
    Gaussian noise whose envelope decays by 60 dB over `rt60_s` seconds (the reverb
    tail of a diffuse room). The output keeps the input's length.

    >>> impulse = np.zeros(8000, dtype=np.float32); impulse[0] = 1.0
    >>> response = room_reverb(impulse, 8000, 0.3, seed=0)
    >>> bool(abs(response[0] - 1.0) < 1e-4 and np.abs(response[4000:]).max() < 1e-3)
    True
    """
    length = int(round(rt60_s * sample_rate))
    t = np.arange(length) / sample_rate
    # Amplitude falls by 60 dB (a factor 1000) at t = rt60: exp(-ln(1000) t / rt60).
    envelope = np.exp(-np.log(1000.0) * t / rt60_s)
    impulse = np.random.default_rng(seed).standard_normal(length) * envelope * 0.1
    impulse[0] = 1.0
    size = len(wave) + length - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave.astype(np.float64), n_fft) * np.fft.rfft(impulse, n_fft), n_fft)
    return wet[: len(wave)].astype(np.float32)


def apply_channel(wave: np.ndarray, sample_rate: int, spec: str, seed: int = 0) -> np.ndarray:
    """Apply the channel named by `spec` (see `parse_channel`); `seed` draws noise and rooms.

    >>> w = np.ones(100, dtype=np.float32) * 0.5
    >>> bool(np.array_equal(apply_channel(w, 16000, "clean"), w))
    True
    """
    channel = parse_channel(spec)
    if channel.kind == "clean":
        return wave.astype(np.float32, copy=False)
    if channel.kind == "telephone":
        return telephone_band(wave, sample_rate)
    if channel.kind == "mulaw":
        return mu_law(wave, int(channel.value))
    if channel.kind == "noise":
        return add_noise(wave, float(channel.value), seed)
    return room_reverb(wave, sample_rate, float(channel.value), seed)
