"""The backbone's precision: chosen by the machine when not given, recorded in a feature
store, and never mixed within one store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from subspaces import devices
from subspaces.backbones import WhisperBackbone, load_backbone
from subspaces.devices import DeviceError, cpu_flags, default_precision, resolve_precision
from subspaces.features import FeatureStoreError, extract_features, merge_feature_stores
from subspaces.manifest import COLUMNS


@pytest.fixture
def machine_chooses(monkeypatch):
    """No SUBSPACES_PRECISION (conftest sets it for every other test): the machine decides."""
    monkeypatch.delenv("SUBSPACES_PRECISION", raising=False)


@pytest.mark.parametrize("flags, expected", [
    ({"fma", "avx2"}, "float32"),                            # AVX2 only: bfloat16 autocast is slow there
    ({"avx2", "avx512f", "avx512bw"}, "float32"),            # AVX512 without its bfloat16 extension
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "bfloat16"),
    (set(), "float32"),                                      # unknown CPU: the exact choice
])
def test_cpu_default_follows_native_bfloat16(machine_chooses, flags, expected):
    assert default_precision("cpu", flags=flags) == expected


def test_the_environment_variable_overrides_the_machine(monkeypatch):
    monkeypatch.setenv("SUBSPACES_PRECISION", "bfloat16")
    assert default_precision("cpu", flags={"avx2"}) == "bfloat16"
    monkeypatch.setenv("SUBSPACES_PRECISION", "float32")
    assert default_precision("cpu", flags={"avx512_bf16"}) == "float32"
    monkeypatch.setenv("SUBSPACES_PRECISION", "fp16")
    with pytest.raises(DeviceError, match="SUBSPACES_PRECISION='fp16': expected one of float32, bfloat16"):
        default_precision("cpu")


def test_gpus_default_to_float32_whatever_the_cpu(machine_chooses):
    # bfloat16 measured slower than float32 on an H200 (benchmarks/gpu_check.py)
    assert default_precision("cuda", flags={"avx512_bf16"}) == "float32"
    assert default_precision("cuda:1", flags={"avx2"}) == "float32"


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_resolve_precision_refuses_other_names():
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(DeviceError, match="auto or one of float32, bfloat16, got 'half'"):
        resolve_precision("half")


@pytest.mark.parametrize("flags, expected", [({"avx2"}, "float32"), ({"avx512_bf16"}, "bfloat16")])
def test_load_backbone_auto_picks_by_cpu_flags(machine_chooses, monkeypatch, tmp_path, flags, expected):
    import transformers as tf

    model = tf.WhisperModel(tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                             decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64))
    model.save_pretrained(tmp_path / "tiny")
    monkeypatch.setattr(devices, "cpu_flags", lambda *a: flags)
    assert load_backbone(tmp_path / "tiny").precision == expected  # "auto" is the default
    assert load_backbone(tmp_path / "tiny", precision="float32").precision == "float32"
    assert load_backbone(tmp_path / "tiny").describe()["precision"] == expected


def _manifest(folder, n=6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / f"c{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000 + 1000 * i)).astype(np.float32), 16000)
        rows.append(dict(utt_id=f"c{i}", path=str(path), speaker=f"s{i % 2}", content=f"w{i % 3}", text="",
                         duration_s=(8000 + 1000 * i) / 16000, sample_rate=16000, split="test", source="t"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_a_store_records_its_precision_and_is_never_continued_in_another(tmp_path, tiny_whisper):
    table = _manifest(tmp_path)
    tiny_whisper.precision = "bfloat16"
    store = extract_features(table, tiny_whisper, tmp_path / "store", shard_size=2, progress=False)
    import json

    assert json.loads((store / "store.json").read_text())["backbone"]["precision"] == "bfloat16"
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    tiny_whisper.precision = "float32"
    with pytest.raises(FeatureStoreError, match=r"backbone\.precision: store has 'bfloat16', asked 'float32'.*"
                                                r"--precision bfloat16"):
        extract_features(table, tiny_whisper, store, shard_size=2, progress=False)
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"}


def test_parts_made_in_two_precisions_are_not_merged(tmp_path, tiny_whisper):
    table = _manifest(tmp_path)
    tiny_whisper.precision = "float32"
    first = extract_features(table, tiny_whisper, tmp_path / "p0", shard_size=2, shard=(0, 2), progress=False)
    tiny_whisper.precision = "bfloat16"
    second = extract_features(table, tiny_whisper, tmp_path / "p1", shard_size=2, shard=(1, 2), progress=False)
    with pytest.raises(FeatureStoreError, match="precision"):
        merge_feature_stores([first, second], tmp_path / "merged")
    assert not (tmp_path / "merged" / "store.json").exists()


def test_extract_by_name_uses_the_machines_choice(machine_chooses, monkeypatch, tmp_path):
    from conftest import tiny_whisper_encoder

    monkeypatch.setattr(devices, "cpu_flags", lambda *a: {"avx512_bf16"})
    backbone = WhisperBackbone(tiny_whisper_encoder(), name="tiny-whisper", revision="random-seed-0")
    backbone.precision = devices.default_precision("cpu")
    assert backbone.precision == "bfloat16"
    # A given backbone and precision="auto" agree when the machine would choose the same.
    store = extract_features(_manifest(tmp_path), backbone, tmp_path / "s", precision="auto", progress=False)
    assert (store / "store.json").is_file()
    backbone.precision = "float32"
    with pytest.raises(FeatureStoreError, match="precision='auto' but the given backbone runs in float32"):
        extract_features(_manifest(tmp_path), backbone, tmp_path / "s2", precision="auto", progress=False)
