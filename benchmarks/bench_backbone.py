"""Backbone throughput in one run: x real time (seconds of audio per second), every layer kept.

On the same clips (1-3 s, or the demo's word-length clips with --short), it times:

- our own-length Whisper encoder in the precision the machine chooses by default
  (`devices.default_precision`: bfloat16 on CPUs with AVX512-BF16/AMX, else float32),
  and in each precision given with --precisions;
- stock `transformers.WhisperEncoder` fed Whisper's usual 30 s of padded log-mel
  (the baseline every other tool pays);
- the compute bound: the encoder's floating-point operations per second of audio
  (counted from its config and the clips' lengths) against the float32 matrix-product
  rate this machine reaches on the encoder's own shapes, measured here.

    .venv/bin/python benchmarks/bench_backbone.py [--clips 256] [--short] [--precisions float32 bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from subspaces.backbones import load_backbone
from subspaces.devices import cpu_flags, default_precision
from subspaces.features import plan_shards


def make_clips(count: int, seed: int, low: float, high: float) -> list[np.ndarray]:
    """Noise bursts of `low`-`high` s (the encoder's cost depends only on length)."""
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(rng.uniform(low, high) * 16000))).astype(np.float32) for _ in range(count)]


def time_own_length(backbone, clips: list[np.ndarray], batch_seconds: float) -> float:
    """Seconds to encode `clips` in the extractor's length-sorted batches (after a warm-up)."""
    plan = plan_shards([len(c) / 16000 for c in clips], len(clips), batch_seconds)
    batches = [b for s in plan for b in s.batches]
    backbone.encode([clips[i] for i in batches[0]])
    started = time.perf_counter()
    for batch in batches:
        backbone.encode([clips[i] for i in batch])
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


def encoder_flops(config, clips: list[np.ndarray]) -> float:
    """Floating-point operations (2 per multiply-add) of our encoder over `clips`: log-mel
    (DFT and mel filters), the two convolutions, and every layer's projections, MLP and
    attention on each clip's own frames."""
    width, ffn, mels = config.d_model, config.encoder_ffn_dim, config.num_mel_bins
    total = 0.0
    for clip in clips:
        mel_frames = len(clip) // 160
        frames = (mel_frames + 1) // 2
        total += mel_frames * (402 * 400 + 201 * mels)          # DFT as a convolution, mel filter bank
        total += mel_frames * mels * width * 3                  # conv1, kernel 3
        total += frames * width * width * 3                     # conv2, kernel 3, stride 2
        per_layer = frames * (4 * width * width + 2 * width * ffn) + 2 * frames * frames * width
        total += config.encoder_layers * per_layer
    return 2.0 * total


def matmul_rate(config, frames: int = 2048, repeats: int = 20) -> float:
    """float32 GFLOP/s of this machine on the encoder's matrix shapes (projections, MLP in
    and out), each timed after a warm-up; the rate of their total work over their total time."""
    width, ffn = config.d_model, config.encoder_ffn_dim
    shapes = [(frames, width, width)] * 4 + [(frames, width, ffn), (frames, ffn, width)]
    work = seconds = 0.0
    with torch.inference_mode():
        for n, k, m in shapes:
            a, b = torch.randn(n, k), torch.randn(m, k)
            torch.nn.functional.linear(a, b)
            started = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.linear(a, b)
            seconds += time.perf_counter() - started
            work += 2.0 * n * k * m * repeats
    return work / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="whisper-base")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--short", action="store_true", help="0.3-0.8 s clips, like the demo's single words")
    parser.add_argument("--padded-clips", type=int, default=32, help="the padded baseline is slow; time fewer clips")
    parser.add_argument("--batch-seconds", type=float, default=30.0)
    parser.add_argument("--precisions", nargs="*", default=[],
                        help="also time these (bfloat16 on a CPU without native bfloat16 is very slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    low, high = (0.3, 0.8) if args.short else (1.0, 3.0)
    clips = make_clips(args.clips, args.seed, low, high)
    audio_s = sum(len(c) for c in clips) / 16000
    native = sorted(f for f in cpu_flags() if f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2"))
    chosen = default_precision("cpu")
    print(f"{args.backbone}: {len(clips)} clips of {low:g}-{high:g} s, {audio_s:.0f} s of audio; batches of "
          f"{args.batch_seconds:g} s; {torch.get_num_threads()} threads; CPU {platform.processor() or platform.machine()} "
          f"with {', '.join(native) or 'none of avx2/avx512'}; default precision here: {chosen}")
    results = {}
    for precision in dict.fromkeys([chosen, *args.precisions]):
        backbone = load_backbone(args.backbone, precision=precision)
        results[precision] = audio_s / time_own_length(backbone, clips, args.batch_seconds)
        label = " (the default here)" if precision == chosen else ""
        print(f"  ours, own length, {precision:8s}: {results[precision]:6.1f}x real time{label}")

    backbone = load_backbone(args.backbone, precision="float32")
    few = clips[: args.padded_clips]
    padded = sum(len(c) for c in few) / 16000 / time_padded(backbone, few, 16)
    print(f"  stock transformers, 30 s padded, float32 ({len(few)} clips): {padded:6.1f}x real time")
    flops = encoder_flops(backbone.encoder.config, clips) / audio_s
    rate = matmul_rate(backbone.encoder.config)
    bound = rate * 1e9 / flops
    print(f"  compute bound: {flops / 1e9:.2f} GFLOP per second of audio at {rate:.0f} GFLOP/s (float32 matrix "
          f"products of the encoder's shapes, measured here) = {bound:.0f}x real time")
    for precision, speed in results.items():
        print(f"  {precision}: {speed / padded:.1f}x stock transformers (padded), {100 * speed / bound:.0f}% of the "
              f"float32 compute bound")


if __name__ == "__main__":
    main()
