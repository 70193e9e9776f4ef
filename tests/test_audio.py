"""Audio input: formats, mono mixing, resampling, trimming, loudness, and every error case."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from subspaces.audio import AudioError, load_audio, normalize_loudness, resample, trim_silence


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_reads_formats_and_resamples(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    sf.write(path, tone(0.5, 8000), 8000)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 8000
    # The 440 Hz tone survives resampling: its spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(0.2, 16000), np.zeros(3200, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000)
    wave = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(wave, left / 2, atol=1e-4)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("this is not audio")
    with pytest.raises(AudioError, match=r"text\.wav: not a readable audio file"):
        load_audio(path)


def test_a_folder_a_symlink_loop_and_a_broken_link_are_told_apart(tmp_path):
    (tmp_path / "clips.wav").mkdir()
    with pytest.raises(AudioError, match=r"clips\.wav: is a directory, not an audio file"):
        load_audio(tmp_path / "clips.wav")
    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")
    with pytest.raises(AudioError, match=r"a\.wav: a symlink loop"):
        load_audio(tmp_path / "a.wav")
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    with pytest.raises(AudioError, match=r"link\.wav: a broken symbolic link \(to .*gone\.wav"):
        load_audio(tmp_path / "link.wav")


def truncated_wav(path: Path) -> Path:
    """A 16-bit WAV of 0.3 s whose header still promises the 0.9 s it held before a cut."""
    sf.write(path, tone(0.9, 16000), 16000, subtype="PCM_16")
    os.truncate(path, path.stat().st_size - 2 * 9600)
    return path


def test_truncated_wav_is_refused_by_default_or_warned_on_request(tmp_path):
    path = truncated_wav(tmp_path / "cut.wav")
    assert sf.info(str(path)).frames == 4800  # what libsndfile would silently decode
    with pytest.raises(AudioError, match=r"cut\.wav: truncated: the WAV header promises 14400 samples \(0\.90 s\) "
                                         r"but the file holds 4800 \(0\.30 s\)"):
        load_audio(path)
    with pytest.warns(UserWarning, match=r"cut\.wav: truncated"):
        assert len(load_audio(path, truncated="warn")) == 4800
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_audio(path, truncated="ignore")) == 4800


def test_complete_wavs_with_extra_chunks_are_not_taken_for_truncated(tmp_path):
    path = tmp_path / "tagged.wav"
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_24") as handle:
        handle.artist = "someone"  # a LIST chunk, before or after the data
        handle.write(tone(0.5, 16000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_audio(path)) == 8000


def test_digital_silence_is_warned_by_default_or_refused_on_request(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.warns(UserWarning, match=r"silence\.wav: digital silence \(every sample is 0\)"):
        assert len(load_audio(path)) == 8000
    with pytest.raises(AudioError, match=r"silence\.wav: digital silence"):
        load_audio(path, silent="error")
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, tone(0.5, 16000) * 1e-3, 16000, subtype="FLOAT")  # quiet, but not silence
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(quiet)
    with pytest.raises(AudioError, match="silent must be one of error, warn, ignore, got 'skip'"):
        load_audio(quiet, silent="skip")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: the file holds no audio"):
        load_audio(path)


def test_non_finite_samples(tmp_path):
    wave = tone(0.1, 16000)
    wave[10] = np.nan
    wave[20] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 2 samples are NaN or infinite"):
        load_audio(path)


def test_too_short_for_the_model(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, tone(0.01, 16000), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: 160 samples .* shorter than the minimum of 400"):
        load_audio(path, min_samples=400)


def test_too_long_is_refused_from_the_header(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 5, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"long\.wav: 5\.0 s is longer than the limit of 2 s"):
        load_audio(path, max_duration_s=2)
    assert len(load_audio(path, max_duration_s=None, silent="ignore")) == 16000 * 5


def test_trim_keeps_speech_and_drops_silence():
    rate = 16000
    speech = tone(0.5, rate)
    padded = np.concatenate([np.zeros(rate), speech, np.zeros(2 * rate)]).astype(np.float32)
    trimmed = trim_silence(padded, rate)
    assert 0.5 <= len(trimmed) / rate <= 0.65
    assert np.abs(trimmed).max() == pytest.approx(np.abs(speech).max())


def test_trim_leaves_silence_alone():
    silent = np.zeros(16000, dtype=np.float32)
    assert len(trim_silence(silent, 16000)) == 16000


def test_loudness_target_and_peak_limit():
    quiet = tone(0.3, 16000) * 0.01
    louder = normalize_loudness(quiet, target_dbfs=-20.0)
    assert 20 * np.log10(np.sqrt(np.mean(louder.astype(np.float64) ** 2))) == pytest.approx(-20.0, abs=1e-3)
    spiky = np.zeros(1000, dtype=np.float32)
    spiky[0] = 0.5
    limited = normalize_loudness(spiky, target_dbfs=-3.0)
    assert np.abs(limited).max() <= 0.99 + 1e-6


def test_resample_identity_and_length():
    wave = tone(1.0, 22050)
    assert resample(wave, 22050, 22050) is not None
    assert len(resample(wave, 22050, 16000)) == 16000


def test_load_options_trim_and_normalize(tmp_path):
    path = tmp_path / "p.wav"
    sf.write(path, np.concatenate([np.zeros(8000), tone(0.5, 16000) * 0.05, np.zeros(8000)]), 16000)
    wave = load_audio(Path(path), trim=True, normalize=True)
    assert len(wave) < 16000
    assert 20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) == pytest.approx(-23.0, abs=0.1)
