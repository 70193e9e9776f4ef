"""Backbone throughput: seconds of audio encoded per second, every layer kept.

Compares, in one run on the same clips, our own-length Whisper encoder (float32 and
bfloat16 autocast) with stock `transformers.WhisperEncoder` fed Whisper's usual 30 s
of padded log-mel. Clips are 1-3 s, batched by length as the feature extractor does.

    .venv/bin/python benchmarks/bench_backbone.py --clips 256 --batch 16
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from subspaces.backbones import load_backbone


def make_clips(count: int, seed: int) -> list[np.ndarray]:
    """Speech-like noise bursts of 1-3 s (the encoder's cost depends only on length)."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.uniform(1.0, 3.0) * 16000))).astype(np.float32) for _ in range(count)]


def time_own_length(backbone, clips: list[np.ndarray], batch: int) -> float:
    ordered = sorted(clips, key=len)
    backbone.encode(ordered[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(ordered), batch):
        backbone.encode(ordered[i : i + batch])
    return time.perf_counter() - started


def time_padded(backbone, clips: list[np.ndarray], batch: int) -> float:
    """Stock transformers path: log-mel padded to 30 s, the encoder's full 1500 frames."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=backbone.encoder.config.num_mel_bins)
    encoder = backbone.encoder
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            features = extractor(clips[i : i + batch], sampling_rate=16000, return_tensors="pt").input_features
            encoder(features, output_hidden_states=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="whisper-base")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--padded-clips", type=int, default=32, help="the padded baseline is slow; time fewer clips")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    clips = make_clips(args.clips, args.seed)
    audio_s = sum(len(c) for c in clips) / 16000
    print(f"{args.backbone}: {len(clips)} clips, {audio_s:.0f} s of audio (1-3 s each), batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    results = {}
    for precision in ("float32", "bfloat16"):
        backbone = load_backbone(args.backbone, precision=precision)
        elapsed = time_own_length(backbone, clips, args.batch)
        results[precision] = audio_s / elapsed
        print(f"  own length, {precision:8s}: {elapsed:6.1f} s  -> {results[precision]:6.1f}x real time")
    backbone = load_backbone(args.backbone)
    few = clips[: args.padded_clips]
    elapsed = time_padded(backbone, few, args.batch)
    padded = sum(len(c) for c in few) / 16000 / elapsed
    print(f"  stock transformers, 30 s padded, float32 ({len(few)} clips): {elapsed:6.1f} s  -> {padded:6.1f}x real time")
    print(f"  speed-up over padded: float32 {results['float32'] / padded:.1f}x, bfloat16 {results['bfloat16'] / padded:.1f}x")


if __name__ == "__main__":
    main()
