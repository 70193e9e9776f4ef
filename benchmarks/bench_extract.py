"""Feature-extraction throughput and memory with whisper-base (a benchmark, not a test).

    python benchmarks/bench_extract.py                  # 300 clips of 1-3 s, then 5,000 short clips
    python benchmarks/bench_extract.py --clips 100 --memory-clips 0

For each precision it reports, in x real time (seconds of audio per second of wall
time): the backbone alone (`encode` on waves already in memory, the same batches the
extractor uses) and the whole `extract_features` run (decoding, resampling, pooling,
writing shards). Then it extracts a manifest of `--memory-clips` rows (short clips,
paths repeated) and reports the process's peak RSS before and after, which stays flat
when shards are streamed to disk.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from subspaces.audio import load_audio
from subspaces.backbones import load_backbone
from subspaces.features import extract_features, load_features, plan_shards
from subspaces.manifest import COLUMNS


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_clips(folder: Path, durations: np.ndarray, seed: int) -> pd.DataFrame:
    """Harmonic tones with a vibrato and noise at 16 kHz (the encoder's cost depends only on length)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, seconds in enumerate(durations):
        t = np.arange(int(seconds * 16000)) / 16000
        f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.1 + 0.01 * rng.standard_normal(len(t))
        name = f"clip{seed}_{i:05d}.wav"
        sf.write(folder / name, wave.astype(np.float32), 16000)
        rows.append(dict(utt_id=name[:-4], path=name, speaker="s", content="c", text="",
                         duration_s=len(t) / 16000, sample_rate=16000, split="test", source="bench"))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["root"] = str(folder)
    return table


def backbone_alone(backbone, table: pd.DataFrame, batch_seconds: float) -> float:
    waves = [load_audio(Path(table.attrs["root"]) / p) for p in table["path"]]
    started = time.perf_counter()
    for shard in plan_shards(table["duration_s"].to_numpy(), 1000, batch_seconds):
        for batch in shard.batches:
            backbone.encode([waves[i] for i in batch])
    return table["duration_s"].sum() / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="whisper-base")
    parser.add_argument("--clips", type=int, default=300, help="clips of 1-3 s for the throughput runs")
    parser.add_argument("--memory-clips", type=int, default=5000, help="manifest rows for the memory run (0: skip)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    table = write_clips(folder, np.random.default_rng(0).uniform(1.0, 3.0, args.clips), seed=0)
    backbone = load_backbone(args.backbone)
    backbone.encode([np.zeros(16000, dtype=np.float32)])  # warm-up
    print(f"torch threads: {torch.get_num_threads()}; {len(table)} clips, {table['duration_s'].sum():.0f} s of audio")
    print(f"peak RSS after loading {args.backbone}: {peak_rss_mib():.0f} MiB")

    for precision in args.precisions:
        backbone.precision = precision
        alone = backbone_alone(backbone, table, args.batch_seconds)
        started = time.perf_counter()
        store = extract_features(table, backbone, folder / f"store-{precision}", batch_seconds=args.batch_seconds,
                                 workers=args.workers)
        whole = table["duration_s"].sum() / (time.perf_counter() - started)
        shape = tuple(load_features(store, table[:1], pooling="mean+std").shape)
        print(f"{precision:>8}: backbone alone {alone:5.0f}x real time; extract_features {whole:5.0f}x real time "
              f"(all {backbone.num_layers} layers, mean+std, features {shape} per clip)")
    print(f"peak RSS after the throughput runs: {peak_rss_mib():.0f} MiB")

    if args.memory_clips:
        short = write_clips(folder, np.random.default_rng(1).uniform(0.3, 0.8, 50), seed=1)
        rows = short.iloc[np.arange(args.memory_clips) % len(short)].reset_index(drop=True)
        rows["utt_id"] = [f"m{i:06d}" for i in range(len(rows))]
        rows.attrs["root"] = str(folder)
        backbone.precision = args.precisions[-1]
        started = time.perf_counter()
        extract_features(rows, backbone, folder / "store-memory", batch_seconds=args.batch_seconds,
                         workers=args.workers)
        elapsed = time.perf_counter() - started
        print(f"{len(rows)} clips ({rows['duration_s'].sum():.0f} s, {backbone.precision}) in {elapsed:.0f} s "
              f"({rows['duration_s'].sum() / elapsed:.0f}x real time); peak RSS {peak_rss_mib():.0f} MiB")
    print(f"clips and stores left in {folder}")


if __name__ == "__main__":
    main()
