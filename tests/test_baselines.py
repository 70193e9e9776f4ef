"""Resemblyzer speaker baseline: real embeddings of FSDD clips, the cache, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import FSDD

from subspaces import baselines
from subspaces.audio import AudioError, load_audio
from subspaces.baselines import (
    BaselineUnavailableError,
    resemblyzer_available,
    resemblyzer_embeddings,
    resemblyzer_embeddings_cached,
)

SPEAKERS = ["george", "jackson", "nicolas", "theo"]
# Three different digits per speaker, so same-speaker pairs never share their words.
DIGITS_AND_INDICES = [(1, 5), (4, 7), (8, 9)]


def fsdd_table(speakers=SPEAKERS, takes=DIGITS_AND_INDICES) -> pd.DataFrame:
    rows = [{"utt_id": f"{digit}_{speaker}_{index}", "path": str(FSDD / f"{digit}_{speaker}_{index}.wav"),
             "speaker": speaker} for speaker in speakers for digit, index in takes]
    return pd.DataFrame(rows)


@pytest.fixture
def counted_encoder(monkeypatch) -> list[int]:
    """Count clips that reach Resemblyzer (its `preprocess_wav` runs once per clip embedded)."""
    resemblyzer = pytest.importorskip("resemblyzer")
    calls = [0]
    original = resemblyzer.preprocess_wav

    def counting(wav, *args, **kwargs):
        calls[0] += 1
        return original(wav, *args, **kwargs)

    monkeypatch.setattr(resemblyzer, "preprocess_wav", counting)
    return calls


def test_same_speaker_clips_are_closer_than_different_speakers():
    pytest.importorskip("resemblyzer")
    table = fsdd_table()
    embeddings = resemblyzer_embeddings([Path(p) for p in table["path"]], progress=False)
    assert embeddings.shape == (12, 256) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    similarity = embeddings @ embeddings.T
    speaker = table["speaker"].to_numpy()
    same = speaker[:, None] == speaker[None, :]
    other_clip = ~np.eye(len(table), dtype=bool)
    assert similarity[same & other_clip].mean() > similarity[~same].mean() + 0.03
    # Nearest other clip is by the same speaker for most clips (chance: 2 of 11 neighbours).
    np.fill_diagonal(similarity, -np.inf)
    assert np.mean(speaker[similarity.argmax(axis=1)] == speaker) >= 0.5


def test_batched_embeddings_equal_resemblyzers_own_per_clip_embedding(tmp_path, monkeypatch):
    resemblyzer = pytest.importorskip("resemblyzer")
    # A 5 s clip (three partial utterances) between two short ones (one partial each).
    long_wave = np.concatenate([load_audio(FSDD / f"{d}_theo_{d}.wav", 16000) for d in range(10)])
    sf.write(tmp_path / "long.wav", long_wave, 16000)
    paths = [FSDD / "1_george_5.wav", tmp_path / "long.wav", FSDD / "4_jackson_7.wav"]
    encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)
    expected = np.stack([encoder.embed_utterance(resemblyzer.preprocess_wav(load_audio(p, 16000))) for p in paths])
    assert len(encoder.compute_partial_slices(len(resemblyzer.preprocess_wav(long_wave)), 1.3, 0.75)[0]) >= 3
    monkeypatch.setattr(baselines, "_CLIPS_PER_BATCH", 2)  # one batch of two clips, one of one
    np.testing.assert_allclose(resemblyzer_embeddings(paths, progress=False), expected, atol=1e-5)


def test_mel_frames_equal_resemblyzers_librosa_mel_spectrogram():
    resemblyzer = pytest.importorskip("resemblyzer")
    for name in ("0_george_0.wav", "9_jackson_3.wav"):
        wave = resemblyzer.preprocess_wav(load_audio(FSDD / name, 16000))
        ours, theirs = baselines.mel_frames(wave), resemblyzer.wav_to_mel_spectrogram(wave)
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_cache_reuses_embeddings_and_computes_only_new_rows(tmp_path, counted_encoder):
    table = fsdd_table(speakers=["george", "theo"], takes=[(1, 5), (4, 7)])
    first = resemblyzer_embeddings_cached(table, tmp_path / "cache", progress=False)
    assert counted_encoder[0] == 4 and first.shape == (4, 256) and first.dtype == np.float32
    assert (tmp_path / "cache" / "resemblyzer.npz").is_file()

    again = resemblyzer_embeddings_cached(table, tmp_path / "cache", progress=False)
    assert counted_encoder[0] == 4
    np.testing.assert_array_equal(first, again)

    # Rows come back in the table's order, and only the one new row is computed.
    grown = pd.concat([fsdd_table(speakers=["jackson"], takes=[(2, 8)]), table.iloc[::-1]], ignore_index=True)
    embeddings = resemblyzer_embeddings_cached(grown, tmp_path / "cache", progress=False)
    assert counted_encoder[0] == 5
    np.testing.assert_array_equal(embeddings[1:], first[::-1])
    np.testing.assert_allclose(embeddings[0], resemblyzer_embeddings([grown.loc[0, "path"]], progress=False)[0],
                               atol=1e-6)


def test_an_interrupted_run_keeps_the_clips_it_saved(tmp_path, counted_encoder, monkeypatch):
    resemblyzer = pytest.importorskip("resemblyzer")
    monkeypatch.setattr(baselines, "_SAVE_EVERY", 2)
    table = fsdd_table(speakers=["george", "theo"], takes=[(1, 5), (4, 7)])
    counting = resemblyzer.preprocess_wav

    def interrupted(wav, *args, **kwargs):
        if counted_encoder[0] == 3:  # Ctrl-C while the second pair is being embedded
            raise KeyboardInterrupt
        return counting(wav, *args, **kwargs)

    monkeypatch.setattr(resemblyzer, "preprocess_wav", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resemblyzer_embeddings_cached(table, tmp_path / "cache", progress=False)
    monkeypatch.setattr(resemblyzer, "preprocess_wav", counting)
    before = counted_encoder[0]
    resemblyzer_embeddings_cached(table, tmp_path / "cache", progress=False)
    assert counted_encoder[0] - before == 2  # the first pair was saved; only the second is redone


def test_cache_is_not_reused_for_another_file_or_encoder_version(tmp_path, counted_encoder, monkeypatch):
    table = fsdd_table(speakers=["george"], takes=[(1, 5)])
    resemblyzer_embeddings_cached(table, tmp_path, progress=False)
    moved = table.assign(path=[str(FSDD / "1_theo_5.wav")])  # same utt_id, another recording
    resemblyzer_embeddings_cached(moved, tmp_path, progress=False)
    assert counted_encoder[0] == 2
    monkeypatch.setattr(baselines, "_resemblyzer_version", lambda: "9.9.9")
    resemblyzer_embeddings_cached(table, tmp_path, progress=False)
    assert counted_encoder[0] == 3


def test_damaged_cache_names_the_file(tmp_path):
    pytest.importorskip("resemblyzer")
    (tmp_path / "resemblyzer.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="resemblyzer.npz.*delete it"):
        resemblyzer_embeddings_cached(fsdd_table(speakers=["george"], takes=[(1, 5)]), tmp_path, progress=False)


def test_bad_and_silent_files_raise_audio_error(tmp_path):
    pytest.importorskip("resemblyzer")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioError, match="broken.wav"):
        resemblyzer_embeddings([broken], progress=False)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="silent.wav.*silent"):
        resemblyzer_embeddings([silent], progress=False)


def test_clip_without_detected_speech_is_embedded_whole(monkeypatch):
    resemblyzer = pytest.importorskip("resemblyzer")
    from resemblyzer.hparams import audio_norm_target_dBFS

    path = FSDD / "0_lucas_3.wav"
    wave = load_audio(path, 16000)
    expected = resemblyzer.VoiceEncoder("cpu", verbose=False).embed_utterance(
        resemblyzer.normalize_volume(wave, audio_norm_target_dBFS, increase_only=True))
    monkeypatch.setattr(resemblyzer, "preprocess_wav", lambda w: w[:0])  # the VAD keeps nothing
    embedding = resemblyzer_embeddings([path], progress=False)[0]
    np.testing.assert_allclose(embedding, expected, atol=1e-5)


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # makes `import resemblyzer` fail
    assert resemblyzer_available() is False
    with pytest.raises(BaselineUnavailableError, match="pip install --no-deps resemblyzer"):
        resemblyzer_embeddings([FSDD / "1_george_5.wav"], progress=False)
    with pytest.raises(BaselineUnavailableError, match="webrtcvad-wheels"):
        resemblyzer_embeddings_cached(fsdd_table(), tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
