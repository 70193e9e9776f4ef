"""Shared fixtures: tiny random-weight backbones built here (no download) and test clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

FSDD = Path(__file__).resolve().parents[1] / "src" / "subspaces" / "data" / "fsdd" / "recordings"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Converted models go to a per-session temporary cache, never the user's. Backbones
    run in float32 whatever the CPU: "auto" would pick bfloat16 on CPUs with AVX512-BF16,
    and the tests compare numbers that must not depend on the machine (the choice itself
    is tested in test_precision.py, with this variable removed)."""
    monkeypatch.setenv("SUBSPACES_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("SUBSPACES_PRECISION", "float32")


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
