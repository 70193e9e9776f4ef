"""Data-parallel training against one process, on a real feature store: same losses, same weights?

Trains the same recipe twice through the CLI, once as one process and once under
`torchrun --standalone --nproc_per_node N`, and prints the wall time of each, the largest
relative difference of the per-step loss and of the final weights.

    python benchmarks/ddp_check.py --features /tmp/demo_q/features-grid --manifest /tmp/demo_q/grid/manifest.csv \\
        --recipe /tmp/demo_q/model/recipe.toml --steps 6 --nproc 2

On GPUs give a recipe with `device = "cuda"` (nccl, one GPU per process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from subspaces.training import TrainConfig, load_recipe, write_recipe


def run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--recipe", help="TOML recipe (default: the paper's)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()

    config = load_recipe(args.recipe) if args.recipe else TrainConfig()
    config = TrainConfig.from_dict({**config.to_dict(), "steps": args.steps, "select": "last"})
    folder = Path(tempfile.mkdtemp(prefix="ddp-check-"))
    write_recipe(config, folder / "recipe.toml")
    train = ["-m", "subspaces.cli", "train", "--features", args.features, "--manifest", args.manifest,
             "--recipe", str(folder / "recipe.toml"), "--out"]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    seconds_one = run([sys.executable, *train, str(folder / "one")])
    seconds_many = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(args.nproc), *train, str(folder / "many")])

    one, many = pd.read_csv(folder / "one" / "train_log.csv"), pd.read_csv(folder / "many" / "train_log.csv")
    loss_difference = ((many["loss"] - one["loss"]).abs() / one["loss"].abs()).max()
    weights_one, weights_many = load_file(folder / "one" / "model.safetensors"), load_file(folder / "many" / "model.safetensors")
    weight_difference = max(relative_difference(weights_many[name], weights_one[name]) for name in weights_one)
    print(f"batch {config.batch_size}, {args.steps} steps, device {config.device}")
    print(f"1 process: {seconds_one:.1f} s; {args.nproc} processes: {seconds_many:.1f} s (both including start-up)")
    print(f"loss per step, largest relative difference: {loss_difference:.2e}")
    print(f"weights, largest difference relative to the tensor's largest value: {weight_difference:.2e}")
    print(f"runs kept in {folder}")


if __name__ == "__main__":
    main()
