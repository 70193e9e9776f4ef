"""Clips per second per TTS engine through `synthesize_grid` with 2 workers.

Each clip is the full pipeline: synthesis, resampling to 16 kHz, trimming, loudness
normalisation and an atomic FLAC write. The target for espeak-ng and flite is >= 50 clips/s.
Kokoro and Piper run in-process with onnxruntime, one thread per worker.

    python benchmarks/bench_synth.py [--voices 8] [--texts 25] [--workers 2] [--engines kokoro piper]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from subspaces.synth import load_texts, sample_voices, synthesize_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=8)
    parser.add_argument("--texts", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", nargs="+", default=["espeak-ng", "flite", "kokoro", "piper"])
    args = parser.parse_args()
    words = load_texts("words")[: args.texts // 2 + args.texts % 2]
    sentences = load_texts("sentences")[: args.texts // 2]
    texts = words + sentences
    print(f"{args.voices} voices x {len(texts)} texts ({len(words)} words, {len(sentences)} sentences), "
          f"{args.workers} workers")
    for engine in args.engines:
        voices = sample_voices(engine, args.voices, seed=0)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            table = synthesize_grid(voices, texts, Path(folder), workers=args.workers)
            seconds = time.perf_counter() - start
        audio_s = float(table["duration_s"].sum())
        print(f"{engine:10s} {len(table):5d} clips in {seconds:6.2f} s = {len(table) / seconds:6.1f} clips/s "
              f"({audio_s / seconds:5.1f} s of audio per second)")


if __name__ == "__main__":
    main()
