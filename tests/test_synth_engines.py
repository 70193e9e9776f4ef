"""A new TTS engine is one module plus one `ENGINES` entry: nothing else changes.

`SineEngine` stands in for such a module (an object with the same functions): it
defines what `subspaces.synth.base.Engine` lists, and the tests register it with one
table entry and use it through the generic functions only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from subspaces.synth import (ENGINES, Voice, VoiceError, load_voices, sample_voices, save_voices, synthesize,
                             synthesize_grid)
from subspaces.synth.base import check_range, reject_unknown

RATE = 16000


class SineEngine:
    """A tone at the voice's `hz`, 0.3 s per word, at 16 kHz."""

    def check_params(self, params):
        reject_unknown("sine", params, {"hz"})
        return {"hz": check_range("sine", "hz", params.get("hz", 200.0), (50.0, 1000.0), float)}

    def default_speaker(self, params):
        return f"sine-{params['hz']:g}"

    def base_name(self, voice):
        return voice.speaker

    def sample(self, n, seed, variants, extrapolate):
        hz = np.random.default_rng(seed).choice(np.arange(100, 400, 10), n, replace=False)
        return [{"hz": float(h)} for h in hz]

    def synthesize(self, voice, text):
        t = np.arange(int(0.3 * len(text.split()) * RATE)) / RATE
        return (0.3 * np.sin(2 * np.pi * voice.params["hz"] * t)).astype(np.float32), RATE

    def save_files(self, voice, folder: Path):
        # An engine may keep files beside the bank; this one writes its tone's frequency.
        path = folder / "tones" / f"{voice.speaker}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{voice.params['hz']:g}\n")
        return {"tone_file": f"tones/{path.name}"}

    def check_installed(self):
        pass


@pytest.fixture
def sine(monkeypatch):
    monkeypatch.setitem(ENGINES, "sine", SineEngine())


def test_a_registered_engine_makes_voices_and_speaks(sine):
    voice = Voice("sine", {"hz": 220})
    assert voice.speaker == "sine-220" and voice.base == "sine:sine-220"
    wave, rate = synthesize(voice, "two words")
    assert rate == RATE and len(wave) == int(0.6 * RATE) and wave.dtype == np.float32
    with pytest.raises(VoiceError, match=r"sine parameter hz=5 is outside 50.0..1000.0"):
        Voice("sine", {"hz": 5})
    with pytest.raises(VoiceError, match=r"sine has no parameter\(s\) pitch; it takes hz"):
        Voice("sine", {"pitch": 5})


def test_a_registered_engine_is_sampled_reproducibly(sine):
    voices = sample_voices("sine", 5, seed=1)
    assert [v.speaker for v in voices] == [v.speaker for v in sample_voices("sine", 5, seed=1)]
    assert len({v.speaker for v in voices}) == 5 and all(v.engine == "sine" for v in voices)
    with pytest.raises(VoiceError, match=r"sampling knows espeak-ng, flite, kokoro, piper and sine"):
        sample_voices("command", 1)


def test_a_registered_engine_round_trips_through_a_voice_bank(sine, tmp_path):
    voices = sample_voices("sine", 3, seed=0) + [Voice("flite", {"voice": "slt"})]
    bank = tmp_path / "bank" / "voices.json"
    save_voices(voices, bank)
    assert load_voices(bank) == voices
    entries = json.loads(bank.read_text())["voices"]
    assert (bank.parent / entries[0]["tone_file"]).read_text() == f"{voices[0].params['hz']:g}\n"
    assert "tone_file" not in entries[3]


def test_a_registered_engine_fills_a_grid(sine, tmp_path):
    voices = sample_voices("sine", 3, seed=0)
    table = synthesize_grid(voices, ["yes", "no", "left"], tmp_path / "grid", val_voices=1, val_texts=1, workers=2)
    assert len(table) == 9 and set(table["source"]) == {"sine"}
    assert set(table["voice_base"]) == {f"sine:{v.speaker}" for v in voices}
    assert (table["duration_s"] > 0.2).all()
    assert load_voices(tmp_path / "grid" / "voices.json") == voices


def test_an_engine_outside_the_table_is_unknown():
    assert "sine" not in ENGINES
    with pytest.raises(VoiceError, match=r"unknown TTS engine 'sine'; choose one of espeak-ng, flite, kokoro, piper, command"):
        Voice("sine", {"hz": 220})


INTERRUPTED_RUN = """
import os, signal, sys, threading, time
sys.path.insert(0, {tests!r})
from test_synth_engines import SineEngine
from subspaces.synth import ENGINES, Text, Voice, synthesize_grid

class SlowSine(SineEngine):
    def synthesize(self, voice, text):
        time.sleep(0.1)
        return super().synthesize(voice, text)

ENGINES["sine"] = SlowSine()
voices = [Voice("sine", {{"hz": 100.0 + 10 * i}}) for i in range(4)]
texts = [Text(f"w{{i}}", f"word{{i}}") for i in range(100)]
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    synthesize_grid(voices, texts, {out!r}, workers=2)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_drops_the_queued_clips_and_a_rerun_finishes_them(tmp_path, monkeypatch):
    import subprocess
    import sys

    out = tmp_path / "grid"
    script = INTERRUPTED_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    written = len(list(out.rglob("*.flac")))
    # 400 clips queued at 0.1 s each on 2 workers would take 20 s: after Ctrl-C at 1 s only the
    # texts already running finish.
    assert 0 < written < 100 and not (out / "manifest.csv").exists()
    assert not list(out.rglob("*.partial")) and not (out / ".lock").exists()
    monkeypatch.setitem(ENGINES, "sine", SineEngine())
    from subspaces.synth import Text

    table = synthesize_grid([Voice("sine", {"hz": 100.0 + 10 * i}) for i in range(4)],
                            [Text(f"w{i}", f"word{i}") for i in range(100)], out, workers=2)
    assert len(table) == 400
