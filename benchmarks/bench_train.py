"""Benchmark: the paper's training budget on planted-structure random features.

32 training speakers x 256 texts = 8,192 items of width 512 (one layer), batch 512 as a
16 x 32 grid block, 480 steps, MLP 768-768-768-768, AdamW + one-cycle (max lr 1e-4).
Another 8 speakers x 256 texts are held out and validated once, at the end, to check that
the speaker subspace verifies speakers and not texts, and the content subspace the reverse.
Target: <= 60 s of training on a 2-core CPU.

    python benchmarks/bench_train.py [--steps 480] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from subspaces.training import TrainConfig, train


def planted_features(speakers: int, texts: int, dim: int, held_out: int, seed: int = 0) -> tuple[torch.Tensor, pd.DataFrame]:
    """x = speaker code @ A + text code @ B + noise: both factors spread over every dimension."""
    rng = np.random.default_rng(seed)
    rank = 16
    speaker_code = rng.normal(size=(speakers + held_out, rank))
    text_code = rng.normal(size=(texts, rank))
    mix_speaker, mix_text = rng.normal(size=(2, rank, dim)) / np.sqrt(rank)
    s, t = np.meshgrid(np.arange(speakers + held_out), np.arange(texts), indexing="ij")
    s, t = s.reshape(-1), t.reshape(-1)
    x = speaker_code[s] @ mix_speaker + text_code[t] @ mix_text + 0.5 * rng.normal(size=(len(s), dim))
    table = pd.DataFrame({
        "speaker": [f"spk{i:02d}" for i in s],
        "content": [f"text{i:03d}" for i in t],
        "split": np.where(s < speakers, "train", "val"),
    })
    return torch.tensor(x[:, None, :], dtype=torch.float32), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features, table = planted_features(speakers=32, texts=256, dim=512, held_out=8)
    config = TrainConfig(layer=0, steps=args.steps, val_every=0, checkpoint_every=0, select="last")
    out = args.out or tempfile.mkdtemp(prefix="bench_train_")
    start = time.perf_counter()
    folder = train(features, table, config, out)
    seconds = time.perf_counter() - start
    log = pd.read_csv(folder / "train_log.csv")
    val = pd.read_csv(folder / "val_log.csv").iloc[-1]
    print(f"items: {int((table.split == 'train').sum())} train, {int((table.split == 'val').sum())} held out; "
          f"batch {config.batch_size}; steps {args.steps}; threads {args.threads}")
    print(f"train() wall time: {seconds:.1f} s ({args.steps / seconds:.1f} steps/s, including one final validation)")
    print(f"loss: first 10 steps {log.loss.iloc[:10].mean():.3f}, last 10 steps {log.loss.iloc[-10:].mean():.3f}")
    for subspace in ("speaker", "content"):
        print(f"{subspace:>8} subspace on held-out speakers: speaker EER {val[f'{subspace}/speaker_eer']:.3f}, "
              f"content EER {val[f'{subspace}/content_eer']:.3f}, content 1-NN accuracy {val[f'{subspace}/content_nn_accuracy']:.3f}")


if __name__ == "__main__":
    main()
