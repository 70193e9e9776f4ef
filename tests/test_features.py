"""Feature extraction and the feature store, on a tiny random Whisper and generated clips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_whisper_encoder, write_tone

from subspaces.audio import load_audio
from subspaces.backbones import WhisperBackbone
from subspaces.features import (
    FeatureStore,
    FeatureStoreError,
    extract_features,
    load_features,
    merge_feature_stores,
    plan_shards,
)
from subspaces.manifest import COLUMNS

# Eight clips of 0.3-1.6 s at 16 and 8 kHz. With shard_size=2 and batch_seconds=2.0 the
# plan is four shards of two clips; the two longest shards need two batches each.
DURATIONS = [1.6, 0.3, 1.0, 0.5, 1.3, 0.8, 0.4, 1.1]
SHARD_SIZE, BATCH_SECONDS = 2, 2.0


def make_manifest(folder: Path, durations=DURATIONS) -> pd.DataFrame:
    rows = []
    for i, seconds in enumerate(durations):
        rate = 8000 if i % 2 else 16000
        path = write_tone(folder / f"utt{i}.wav", seconds, rate, freq=120 + 30 * i, seed=i)
        rows.append(dict(utt_id=f"u{i}", path=path.name, speaker=f"s{i % 2}", content=f"c{i % 3}",
                         text="", duration_s=seconds, sample_rate=rate, split="train", source="tone"))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["root"] = str(folder)
    return table


def extract(table, backbone, out_dir, **kwargs):
    options = dict(shard_size=SHARD_SIZE, batch_seconds=BATCH_SECONDS, progress=False)
    return extract_features(table, backbone, out_dir, **(options | kwargs))


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime_ns, bytes) of every file: a rewritten file changes inode (os.replace)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def count_encoded(monkeypatch, backbone, fail_on_call: int | None = None) -> list[int]:
    """Patch `backbone.encode` to record each batch size, raising on call `fail_on_call`."""
    sizes: list[int] = []
    original = backbone.encode

    def encode(waves):
        if fail_on_call is not None and len(sizes) + 1 == fail_on_call:
            raise RuntimeError("simulated crash")
        sizes.append(len(waves))
        return original(waves)

    monkeypatch.setattr(backbone, "encode", encode)
    return sizes


def test_plan_keeps_similar_lengths_together():
    shards = plan_shards(DURATIONS, SHARD_SIZE, BATCH_SECONDS)
    assert [s.positions for s in shards] == [(1, 6), (3, 5), (2, 7), (4, 0)]
    # 2 x 1.1 s of padded audio exceeds 2.0 s, so the third shard needs two batches.
    assert [len(s.batches) for s in shards] == [1, 1, 2, 2]


def test_pooled_values_equal_direct_encode(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path)
    store_dir = extract(table, tiny_whisper, tmp_path / "features", frame_layers=(1, 2))

    both = load_features(store_dir, table, pooling="mean+std")
    assert both.shape == (len(table), 3, 64) and both.dtype == torch.float32
    for i, path in enumerate(tmp_path / p for p in table["path"]):
        wave = load_audio(path, 16000)
        out = tiny_whisper.encode([wave])
        n = int(out.num_frames[0])
        frames = out.hidden_states[:, 0, :n].numpy().astype(np.float64)  # [L, T, D]
        mean, std = frames.mean(axis=1), frames.std(axis=1)
        np.testing.assert_allclose(both[i, :, :32].numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(both[i, :, 32:].numpy(), std, rtol=1e-4, atol=1e-5)
        stored_frames = FeatureStore(store_dir).frames(f"u{i}", layers=[2])
        assert stored_frames.shape == (n, 1, 32)
        np.testing.assert_allclose(stored_frames[:, 0].numpy(), frames[2], rtol=1e-4, atol=1e-5)

    # Asking for a subset of layers or one pooling picks the same numbers out.
    std_last = load_features(store_dir, ["u3", "u0"], layers=[-1], pooling="std")
    assert torch.equal(std_last[:, 0], both[[3, 0], 2, 32:])
    info = json.loads((store_dir / "store.json").read_text())
    assert info["backbone"] == tiny_whisper.describe() and info["complete"] is True
    assert info["layers"] == [0, 1, 2] and info["pooling"] == ["mean", "std"]


def test_interrupted_run_resumes_and_redoes_only_unfinished_shards(tmp_path, tiny_whisper, monkeypatch):
    table = make_manifest(tmp_path)
    reference = extract(table, tiny_whisper, tmp_path / "reference")

    out = tmp_path / "features"
    count_encoded(monkeypatch, tiny_whisper, fail_on_call=3)  # the crash hits the third shard
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(table, tiny_whisper, out)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (out / "index.parquet").exists() and not list(out.glob(".*.tmp"))
    with pytest.raises(FeatureStoreError, match="unfinished"):
        FeatureStore(out)
    finished = snapshot(out)

    monkeypatch.undo()
    sizes = count_encoded(monkeypatch, tiny_whisper)
    extract(table, tiny_whisper, out)
    assert sum(sizes) == 4  # only the clips of the two unfinished shards
    after = snapshot(out)
    for name in ("shard-00000.safetensors", "shard-00001.safetensors"):
        assert after[name] == finished[name]  # kept, not rewritten
    reference_files = snapshot(reference)
    assert sorted(after) == sorted(reference_files)
    for name in after:
        assert after[name][2] == reference_files[name][2], name
    assert torch.equal(load_features(out, table), load_features(reference, table))


def test_rerun_over_finished_store_does_nothing(tmp_path, tiny_whisper, monkeypatch):
    table = make_manifest(tmp_path)
    out = extract(table, tiny_whisper, tmp_path / "features")
    before = snapshot(out)
    sizes = count_encoded(monkeypatch, tiny_whisper)
    extract(table, tiny_whisper, out)
    assert sizes == [] and snapshot(out) == before


def test_two_shards_merged_equal_single_process(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path)
    single = extract(table, tiny_whisper, tmp_path / "single")
    parts = [extract(table, tiny_whisper, tmp_path / f"part{i}", shard=(i, 2)) for i in range(2)]
    assert len(FeatureStore(parts[0])) + len(FeatureStore(parts[1])) == len(table)
    assert len(FeatureStore(parts[0])) not in (0, len(table))

    with pytest.raises(FeatureStoreError, match=r"missing \[1\]"):
        merge_feature_stores(parts[:1], tmp_path / "bad")
    merged = merge_feature_stores(parts[::-1], tmp_path / "merged")

    expected, got = snapshot(single), snapshot(merged)
    assert sorted(got) == sorted(expected)
    for name in got:
        assert got[name][2] == expected[name][2], name
    assert FeatureStore(merged).utt_ids == table["utt_id"].tolist()
    assert torch.equal(load_features(merged, table, pooling="mean+std"), load_features(single, table, pooling="mean+std"))


def test_a_different_backbone_or_layers_cannot_reuse_a_store(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path, DURATIONS[:3])
    out = extract(table, tiny_whisper, tmp_path / "features")
    other = WhisperBackbone(tiny_whisper_encoder(seed=1), name="tiny-whisper", revision="random-seed-1")
    with pytest.raises(FeatureStoreError, match=r"backbone.revision: store has 'random-seed-0\+layer0-without-positions', asked 'random-seed-1"):
        extract(table, other, out)
    with pytest.raises(FeatureStoreError, match=r"layers: store has \[0, 1, 2\], asked \[2\]"):
        extract(table, tiny_whisper, out, layers=[2])
    with pytest.raises(FeatureStoreError, match="revision"):
        FeatureStore(out).check_backbone(other)
    FeatureStore(out).check_backbone(tiny_whisper)
    last_only = extract(table, tiny_whisper, tmp_path / "last", layers=[2])
    with pytest.raises(FeatureStoreError, match=r"layer\(s\) \[1\] are not stored"):
        load_features(last_only, table, layers=[1])


def test_unreadable_clip_is_recorded_and_skipped(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path, DURATIONS[:4])
    (tmp_path / "utt2.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    sf.write(tmp_path / "utt1.wav", np.zeros(100, dtype=np.float32), 8000)  # 200 samples at 16 kHz: too short
    with pytest.warns(UserWarning, match="2 of 4 clips could not be decoded"):
        out = extract(table, tiny_whisper, tmp_path / "features")

    store = FeatureStore(out)
    assert store.utt_ids == ["u0", "u3"] and "u2" not in store
    failures = store.failures
    assert failures["utt_id"].tolist() == ["u1", "u2"]
    assert "shorter than the minimum of 400 samples" in failures["error"][0]
    assert "not a readable audio file" in failures["error"][1]
    with pytest.raises(FeatureStoreError, match=r"2 of 4 utt_id\(s\) are not in the store: u1, u2 \(2 of them failed"):
        load_features(out, table)
    good = load_features(out, ["u3", "u0"])
    assert good.shape == (2, 3, 32) and torch.isfinite(good).all() and (good.abs().sum(dim=(1, 2)) > 0).all()


KILLED_WHILE_WRITING = """
import os, signal, sys
import pandas as pd
sys.path.insert(0, {tests!r})
from conftest import tiny_whisper_encoder
import subspaces.features as features
from subspaces.backbones import WhisperBackbone

real_save, calls = features.save_file, []
def save_then_die(tensors, path, metadata=None):
    calls.append(path)
    real_save(tensors, path, metadata=metadata)
    if len(calls) == 2:  # the second shard is written to its temporary file, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
features.save_file = save_then_die

table = pd.read_csv({manifest!r}, dtype=str)
table.attrs["root"] = {root!r}
backbone = WhisperBackbone(tiny_whisper_encoder(), name="tiny-whisper", revision="random-seed-0")
features.extract_features(table, backbone, {out!r}, shard_size={shard_size}, batch_seconds={batch_seconds},
                          progress=False)
"""


def test_process_killed_mid_write_resumes_cleanly(tmp_path, tiny_whisper, monkeypatch):
    import subprocess
    import sys

    table = make_manifest(tmp_path)
    table.to_csv(tmp_path / "manifest.csv", index=False)
    reference = extract(table, tiny_whisper, tmp_path / "reference")
    out = tmp_path / "features"
    script = KILLED_WHILE_WRITING.format(
        tests=str(Path(__file__).parent), manifest=str(tmp_path / "manifest.csv"), root=str(tmp_path),
        out=str(out), shard_size=SHARD_SIZE, batch_seconds=BATCH_SECONDS,
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    assert [p.name for p in out.glob("shard-*")] == ["shard-00000.safetensors"]
    assert len(list(out.glob(".shard-00001.safetensors.*.tmp"))) == 1  # the half-done shard never looks finished
    assert json.loads((out / "store.json").read_text())["complete"] is False

    sizes = count_encoded(monkeypatch, tiny_whisper)
    extract(table, tiny_whisper, out)
    assert sum(sizes) == len(table) - 2  # all but the one finished shard
    assert not list(out.glob(".*.tmp"))
    expected, got = snapshot(reference), snapshot(out)
    assert sorted(got) == sorted(expected)
    for name in got:
        assert got[name][2] == expected[name][2], name


def test_a_manifest_whose_audio_is_all_missing_writes_nothing(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path, DURATIONS[:4])
    for path in tmp_path.glob("utt*.wav"):
        path.unlink()
    with pytest.raises(FeatureStoreError, match=r"none of its 4 audio files exists \(e\.g\. .*utt1\.wav"):
        extract(table, tiny_whisper, tmp_path / "features")
    assert not (tmp_path / "features").exists()


def test_a_manifest_whose_clips_all_fail_leaves_no_finished_store(tmp_path, tiny_whisper):
    table = make_manifest(tmp_path, DURATIONS[:4])
    for path in tmp_path.glob("utt*.wav"):
        path.write_text("not audio\n")
    with pytest.raises(FeatureStoreError, match=r"none of its 4 clips could be read, e\.g\. .*utt\d\.wav: not a read"):
        extract(table, tiny_whisper, tmp_path / "features")
    out = tmp_path / "features"
    assert json.loads((out / "store.json").read_text())["complete"] is False
    assert not list(out.glob("shard-*"))  # removed, so that a rerun reads every clip again
    make_manifest(tmp_path, DURATIONS[:4])  # the files repaired
    assert len(FeatureStore(extract(table, tiny_whisper, out))) == 4


@pytest.mark.parametrize("damage", ["truncated shard", "text shard", "truncated index", "missing index"])
def test_a_damaged_store_is_refused_naming_the_file(tmp_path, tiny_whisper, damage):
    table = make_manifest(tmp_path, DURATIONS[:4])
    out = extract(table, tiny_whisper, tmp_path / "features")
    shard, index = out / "shard-00000.safetensors", out / "index.parquet"
    if damage == "truncated shard":
        os.truncate(shard, shard.stat().st_size // 2)
    elif damage == "text shard":
        shard.write_text("version https://git-lfs.github.com/spec/v1\n")
    elif damage == "truncated index":
        os.truncate(index, index.stat().st_size // 2)
    else:
        index.unlink()
    bad = shard if "shard" in damage else index
    with pytest.raises(FeatureStoreError, match=rf"{bad.name}: .*the feature store .* is damaged: delete it"):
        load_features(out, table)


def test_a_second_writer_into_the_same_store_is_refused(tmp_path, tiny_whisper):
    from subspaces.folders import FolderBusy, folder_lock

    table = make_manifest(tmp_path, DURATIONS[:2])
    with folder_lock(tmp_path / "features", "a feature extraction"):
        with pytest.raises(FolderBusy, match=rf"features: another process \(pid {os.getpid()}\) is writing"):
            extract(table, tiny_whisper, tmp_path / "features")
    assert len(FeatureStore(extract(table, tiny_whisper, tmp_path / "features"))) == 2
