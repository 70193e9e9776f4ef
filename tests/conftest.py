"""Shared fixtures: tiny random-weight backbones built here (no download) and test clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

FSDD = Path(__file__).resolve().parents[1] / "src" / "subspaces" / "data" / "fsdd" / "recordings"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """For the whole session, session fixtures included: converted models go to a
    temporary cache, never the user's, and backbones run in float32 whatever the CPU
    ("auto" would pick bfloat16 on CPUs with AVX512-BF16, and the tests compare numbers
    that must not depend on the machine; the choice itself is tested in
    test_precision.py, with the variable removed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUBSPACES_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        patch.setenv("SUBSPACES_PRECISION", "float32")
        yield


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is 10x faster than several fighting over a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_whisper_encoder(seed: int = 0, layers: int = 2, width: int = 32, n_mels: int = 80):
    """A random-weight transformers WhisperEncoder small enough for unit tests."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    config = WhisperConfig(
        d_model=width, encoder_layers=layers, encoder_attention_heads=4, encoder_ffn_dim=2 * width,
        num_mel_bins=n_mels, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4,
    )
    return WhisperEncoder(config).eval()


@pytest.fixture
def tiny_whisper():
    """A `Backbone` around a tiny random Whisper encoder (3 hidden states of width 32)."""
    from subspaces.backbones import WhisperBackbone

    return WhisperBackbone(tiny_whisper_encoder(), name="tiny-whisper", revision="random-seed-0")


def write_tone(path: Path, seconds: float, sample_rate: int = 16000, freq: float = 220.0, seed: int = 0) -> Path:
    """A short voiced-like test clip: a tone with harmonics and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6)) * 0.2
    wave = wave + 0.01 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), sample_rate)
    return path


@pytest.fixture
def clips(tmp_path) -> list[Path]:
    """Six clips of 0.3-1.5 s at 16 kHz and 8 kHz."""
    out = []
    for i, seconds in enumerate([0.3, 0.5, 0.8, 1.0, 1.2, 1.5]):
        out.append(write_tone(tmp_path / f"clip{i}.wav", seconds, 8000 if i % 2 else 16000, 150 + 40 * i, i))
    return out


def tone_corpus(root: Path, seconds_step: float = 0.05) -> tuple[Path, Path, pd.DataFrame]:
    """A tiny random transformers Whisper checkpoint (`root/backbone`) and 24 tone clips of
    6 speakers x 4 contents (`root/clips`, 0.3 s + `seconds_step` x content; speakers 4-5
    are the validation split), with `manifest.csv` and a `corpus.csv` of path, speaker,
    content. Returns (backbone folder, clips folder, manifest table)."""
    import transformers as tf

    torch.manual_seed(0)
    whisper = tf.WhisperModel(tf.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64))
    whisper.save_pretrained(root / "backbone")
    clips = root / "clips"
    clips.mkdir()
    rows = []
    for s in range(6):
        for c in range(4):
            seconds = 0.3 + seconds_step * c
            write_tone(clips / f"s{s}_c{c}.wav", seconds, 16000, freq=120 + 30 * s + 7 * c, seed=10 * s + c)
            rows.append(dict(utt_id=f"s{s}_c{c}", path=f"s{s}_c{c}.wav", speaker=f"s{s}", content=f"c{c}",
                             text=f"c{c}", duration_s=seconds, sample_rate=16000, split="val" if s >= 4 else "train",
                             source="tone"))
    table = pd.DataFrame(rows)
    table.to_csv(clips / "manifest.csv", index=False)
    table[["path", "speaker", "content"]].to_csv(clips / "corpus.csv", index=False)
    return root / "backbone", clips, table
