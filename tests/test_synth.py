"""TTS engines, voices, voice banks, and the built-in texts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from subspaces.synth import base
from subspaces.synth import (
    EngineNotInstalled,
    SynthError,
    Voice,
    VoiceError,
    espeak_variants,
    load_voices,
    sample_voices,
    save_voices,
    synthesize,
)
from subspaces.synth.flite import FLITE_VOICES
from subspaces.synth.texts import FORBIDDEN_WORDS, TEXT_SETS, TextError, forbidden_words, load_texts, text_id

SENTENCE = "The birch canoe slid on the smooth planks."

needs_espeak = pytest.mark.skipif(base.shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
needs_flite = pytest.mark.skipif(base.shutil.which("flite") is None, reason="apt-get install flite")


def median_f0(wave: np.ndarray, rate: int, low: float = 60.0, high: float = 400.0) -> float:
    """Median autocorrelation pitch over the loudest 40 ms frames (a rough F0 estimate)."""
    frame = int(0.04 * rate)
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame).astype(np.float64)
    energy = (frames**2).mean(axis=1)
    f0s = []
    for f in frames[energy > np.quantile(energy, 0.6)]:
        f = f - f.mean()
        ac = np.correlate(f, f, mode="full")[frame - 1:]
        lags = np.arange(int(rate / high), int(rate / low))
        f0s.append(rate / lags[np.argmax(ac[lags])])
    return float(np.median(f0s))


# --- engines -----------------------------------------------------------------------------

@needs_espeak
def test_espeak_makes_audio_of_plausible_length():
    wave, rate = synthesize(Voice("espeak-ng", {"variant": "m3", "pitch": 50, "rate": 175}), SENTENCE)
    assert rate == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    # 8 words at 175 words per minute is 2.7 s of speech; allow pauses and edges.
    assert 1.5 < len(wave) / rate < 4.5
    assert np.sqrt(np.mean(wave**2)) > 0.01
    word, _ = synthesize(Voice("espeak-ng", {"variant": "m3"}), "yes")
    assert 0.2 < len(word) / rate < 1.5


@needs_espeak
def test_espeak_parameters_change_rate_and_pitch():
    slow, rate = synthesize(Voice("espeak-ng", {"variant": "m3", "rate": 120}), SENTENCE)
    fast, _ = synthesize(Voice("espeak-ng", {"variant": "m3", "rate": 240}), SENTENCE)
    assert 1.5 < len(slow) / len(fast) < 2.5  # twice the words per minute, about half the time
    low, _ = synthesize(Voice("espeak-ng", {"variant": "m3", "pitch": 10}), SENTENCE)
    high, _ = synthesize(Voice("espeak-ng", {"variant": "m3", "pitch": 90}), SENTENCE)
    assert median_f0(high, rate) > 1.3 * median_f0(low, rate)
    plain, _ = synthesize(Voice("espeak-ng", {}), SENTENCE)
    variant, _ = synthesize(Voice("espeak-ng", {"variant": "f3"}), SENTENCE)
    assert len(plain) != len(variant) or not np.array_equal(plain, variant)


@needs_flite
@pytest.mark.parametrize("name", ["kal", "kal16", "awb", "rms", "slt"])
def test_flite_voices_make_audio(name):
    wave, rate = synthesize(Voice("flite", {"voice": name}), SENTENCE)
    assert rate == (8000 if name == "kal" else 16000)
    assert 1.2 < len(wave) / rate < 4.5
    assert np.sqrt(np.mean(wave**2)) > 0.005


@needs_flite
def test_flite_stretch_and_f0_take_effect():
    base, rate = synthesize(Voice("flite", {"voice": "slt", "stretch": 1.0}), SENTENCE)
    slow, _ = synthesize(Voice("flite", {"voice": "slt", "stretch": 1.5}), SENTENCE)
    assert 1.3 < len(slow) / len(base) < 1.7
    for name in ("kal", "awb", "slt"):
        low, rate = synthesize(Voice("flite", {"voice": name, "f0_mean": 90}), SENTENCE)
        high, _ = synthesize(Voice("flite", {"voice": name, "f0_mean": 180}), SENTENCE)
        assert 1.5 < median_f0(high, rate) / median_f0(low, rate) < 2.5, name
    with pytest.raises(VoiceError, match="'rms' ignores f0_mean"):
        Voice("flite", {"voice": "rms", "f0_mean": 120})


FAKE_TTS = """
import sys, numpy as np, soundfile as sf
text, out, ref, log = sys.argv[1:5]
open(log, "w", encoding="utf-8").write(text + "\\n" + ref)
rate = 16000
t = np.arange(int(0.1 * len(text.split()) * rate)) / rate
sf.write(out, 0.3 * np.sin(2 * np.pi * 200 * t), rate)
"""


def fake_voice(tmp_path: Path, ref: str = "ref speaker.wav") -> Voice:
    script = tmp_path / "fake_tts.py"
    script.write_text(FAKE_TTS)
    return Voice("command", {
        "command": "{python} {script} {text} {out} {ref_audio} {log}",
        "python": sys.executable, "script": str(script), "ref_audio": ref, "log": str(tmp_path / "log.txt"),
    })


def test_command_engine_passes_text_safely(tmp_path):
    voice = fake_voice(tmp_path)
    text = "it's \"quoted\"; touch pwned $(touch pwned2) `x`"
    wave, rate = synthesize(voice, text)
    assert rate == 16000 and len(wave) == int(0.1 * len(text.split()) * 16000)
    assert (tmp_path / "log.txt").read_text(encoding="utf-8") == text + "\nref speaker.wav"
    assert not any(p.name.startswith("pwned") for p in Path.cwd().iterdir())
    assert voice.speaker.startswith("command-") and voice.speaker == fake_voice(tmp_path).speaker
    assert fake_voice(tmp_path, ref="other.wav").speaker != voice.speaker


def test_command_engine_failure_is_a_clear_error(tmp_path):
    voice = Voice("command", {"command": "echo broken model >&2; exit 3 # {text} {out}"})
    with pytest.raises(SynthError, match=r"exit 3.*broken model"):
        synthesize(voice, "hello")
    silent = Voice("command", {"command": "true {text} {out}"})
    with pytest.raises(SynthError, match="wrote nothing"):
        synthesize(silent, "hello")


def test_command_template_is_checked():
    with pytest.raises(VoiceError, match=r"\{text\} and \{out\}"):
        Voice("command", {"command": "tts {text} > x.wav"})
    with pytest.raises(VoiceError, match=r"\{ref_audio\}.*no value"):
        Voice("command", {"command": "tts --ref {ref_audio} {text} {out}"})


@needs_espeak
def test_unknown_voices_give_clear_errors():
    with pytest.raises(VoiceError, match=r"variant 'nobody' is not installed.*espeak-ng --voices=variant"):
        Voice("espeak-ng", {"variant": "nobody"})
    with pytest.raises(VoiceError, match=r"did you mean 'm3'"):
        Voice("espeak-ng", {"variant": "M3"})
    with pytest.raises(VoiceError, match="silently ignore"):
        Voice("espeak-ng", {"variant": "m3", "language": "en-gb"})
    with pytest.raises(VoiceError, match=r"pitch=120 is outside 0..99"):
        Voice("espeak-ng", {"variant": "m3", "pitch": 120})
    with pytest.raises(VoiceError, match=r"no parameter\(s\) speed"):
        Voice("espeak-ng", {"speed": 100})
    with pytest.raises(VoiceError, match=r"flite voice 'bob' is unknown; choose one of kal, kal16, awb, rms, slt"):
        Voice("flite", {"voice": "bob"})
    with pytest.raises(VoiceError, match=r"unknown TTS engine 'festival'; choose one of espeak-ng, flite, kokoro, piper, command"):
        Voice("festival", {})
    with pytest.raises(VoiceError, match="file name"):
        Voice("flite", {"voice": "slt"}, speaker="a/b")


def test_missing_engine_says_how_to_install(monkeypatch):
    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    with pytest.raises(EngineNotInstalled, match=r"apt-get install espeak-ng"):
        synthesize(Voice("espeak-ng", {}), "hello")
    with pytest.raises(EngineNotInstalled, match=r"apt-get install flite"):
        synthesize(Voice("flite", {"voice": "slt"}), "hello")


# --- voices ------------------------------------------------------------------------------

@needs_espeak
def test_sampled_voices_are_reproducible_and_distinct():
    first = sample_voices("espeak-ng", 40, seed=3)
    assert [v.to_dict() for v in first] == [v.to_dict() for v in sample_voices("espeak-ng", 40, seed=3)]
    assert len({v.speaker for v in first}) == 40
    # Up to the number of variants, every voice has its own variant.
    assert len({v.params["variant"] for v in first}) == 40
    assert {v.speaker for v in first} != {v.speaker for v in sample_voices("espeak-ng", 40, seed=4)}
    many = sample_voices("espeak-ng", len(espeak_variants()) + 20, seed=0)
    assert len({v.speaker for v in many}) == len(many)
    flite = sample_voices("flite", 12, seed=1)
    assert len({v.speaker for v in flite}) == 12 and {v.params["voice"] for v in flite} == set(FLITE_VOICES)
    assert all(80 <= v.params["f0_mean"] <= 220 for v in flite if v.params["voice"] != "rms")
    assert all(0.8 <= v.params["stretch"] <= 1.3 for v in flite)
    # 4 voices x 15 F0s x 6 stretches, plus rms x 6 stretches.
    assert len(sample_voices("flite", 366, seed=0)) == 366
    with pytest.raises(VoiceError, match="only 366 distinct"):
        sample_voices("flite", 367)
    with pytest.raises(VoiceError, match="command voices yourself"):
        sample_voices("command", 2)


def test_voice_bank_round_trip(tmp_path):
    voices = [
        Voice("espeak-ng", {"variant": "m3", "pitch": 35, "rate": 150, "gap": 2}) if base.shutil.which("espeak-ng")
        else Voice("flite", {"voice": "kal"}),
        Voice("flite", {"voice": "slt", "f0_mean": 170.0, "stretch": 1.1}),
        Voice("flite", {"voice": "awb"}, speaker="alan"),
        fake_voice(tmp_path),
    ]
    bank = tmp_path / "bank" / "voices.json"
    save_voices(voices, bank)
    again = load_voices(bank)
    assert again == voices
    assert [v.speaker for v in again][2] == "alan"
    assert json.loads(bank.read_text())["voices"][1]["params"] == {"voice": "slt", "f0_mean": 170.0, "stretch": 1.1}
    with pytest.raises(VoiceError, match="listed twice"):
        save_voices([voices[1], voices[1]], tmp_path / "dup.json")
    (tmp_path / "bad.json").write_text('{"voices": [{"engine": "flite", "params": {"voice": "zz"}}]}')
    with pytest.raises(VoiceError, match=r"bad.json: voice #0: flite voice 'zz' is unknown"):
        load_voices(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(VoiceError, match="not a JSON voice bank"):
        load_voices(tmp_path / "broken.json")


# --- texts -------------------------------------------------------------------------------

def test_default_texts_hold_no_digits():
    for name in TEXT_SETS:
        for text in load_texts(name):
            assert forbidden_words(text.text) == [], (name, text.text)
            assert not any(ch.isdigit() for ch in text.text), (name, text.text)
    assert {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"} <= FORBIDDEN_WORDS
    # The check itself catches digit words, numerals, and homophones in any case.
    assert forbidden_words("ONE fish, Two fish, 3 fish") == ["one", "two", "3"]
    assert forbidden_words("We won and ate") == ["won", "ate"]
    assert forbidden_words("Stone phone tone often") == []


def test_built_in_text_sets():
    keywords = load_texts("keywords")
    assert {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"} <= {t.id for t in keywords}
    words = load_texts("words")
    assert {t.id for t in keywords} <= {t.id for t in words} and len(words) >= 200
    assert all(len(t.text.split()) == 1 for t in words)
    sentences = load_texts("sentences")
    assert len(sentences) >= 250
    assert all(3 <= len(t.text.split()) <= 12 for t in sentences)
    assert len({t.id for t in sentences}) == len(sentences)


def test_user_text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my texts\nHello there.\n\n  Good morning  \n", encoding="utf-8")
    texts = load_texts(path)
    assert [(t.id, t.text) for t in texts] == [("hello-there", "Hello there."), ("good-morning", "Good morning")]
    path.write_text("Hello there.\nhello, there\n", encoding="utf-8")
    with pytest.raises(TextError, match=r"line 2 .* repeats the text of line 1"):
        load_texts(path)
    with pytest.raises(TextError, match="neither a built-in text set"):
        load_texts(tmp_path / "missing.txt")
    assert text_id("A" * 60) != text_id("A" * 61) and len(text_id("A" * 60)) <= 40
