"""GPU checks in one run (a benchmark and a check, not a test; CI has no GPU).

1. Extraction speed on the GPU, in x real time (seconds of audio per second): the backbone
   alone (waves in memory) and the whole `extract_features` (decoding, pooling, shards),
   in float32 and bfloat16, beside stock transformers fed 30 s of padded log-mel on the
   same GPU and our float32 encoder on this machine's CPU.
2. Batched against single on the GPU: the largest difference between a clip's hidden
   states in a batch of mixed lengths and alone, per precision; and GPU against CPU
   (float32) on the same clips.
3. Training (`train`, the paper's MLP recipe on planted features) on the GPU against the
   CPU: per-step loss and final weights.
4. Data-parallel training under torchrun: 2 processes with nccl (one GPU each; refused
   with a clear error where the machine has fewer GPUs), and 2 processes sharing the GPU
   through gloo (`SUBSPACES_DIST_BACKEND=gloo`), each against 1 process on the GPU.

    python benchmarks/gpu_check.py [--backbone whisper-base|FOLDER] [--clips 2000] [--out DIR]

FOLDER may be the converted encoder this package caches (`model.safetensors` +
`source.json`, see `subspaces.backbones`), so a machine without the PyPI packages can
run it. Prints one block per check; every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import planted_features  # noqa: E402

from subspaces.backbones import load_backbone  # noqa: E402
from subspaces.features import extract_features, plan_shards  # noqa: E402
from subspaces.manifest import COLUMNS  # noqa: E402
from subspaces.training import TrainConfig, train, write_recipe  # noqa: E402


def write_clips(folder: Path, count: int, seed: int = 0) -> pd.DataFrame:
    """Harmonic tones with vibrato and noise, 1-3 s at 16 kHz (cost depends only on length)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        t = np.arange(int(rng.uniform(1.0, 3.0) * 16000)) / 16000
        f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.1 + 0.01 * rng.standard_normal(len(t))
        path = folder / f"clip{i:05d}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        rows.append(dict(utt_id=path.stem, path=path.name, speaker="s", content="c", text="", duration_s=len(t) / 16000,
                         sample_rate=16000, split="test", source="bench"))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["root"] = str(folder)
    return table


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def encode_speed(backbone, waves: list[np.ndarray], batch_seconds: float) -> float:
    """x real time of `backbone.encode` over length-sorted batches of waves in memory."""
    plan = plan_shards([len(w) / 16000 for w in waves], len(waves), batch_seconds)
    batches = [b for s in plan for b in s.batches]
    backbone.encode([waves[i] for i in batches[0]])  # warm-up (kernels, allocator)
    synchronize()
    started = time.perf_counter()
    for batch in batches:
        backbone.encode([waves[i] for i in batch])
    synchronize()
    return sum(len(w) for w in waves) / 16000 / (time.perf_counter() - started)


def padded_speed(backbone, waves: list[np.ndarray], batch: int) -> float:
    """Stock transformers: log-mel padded to 30 s, the encoder's 1,500 frames, every layer."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=backbone.encoder.config.num_mel_bins)
    device = backbone.device
    with torch.inference_mode():
        features = extractor(waves[:batch], sampling_rate=16000, return_tensors="pt").input_features.to(device)
        backbone.encoder(features, output_hidden_states=True)
        synchronize()
        started = time.perf_counter()
        for i in range(0, len(waves), batch):
            features = extractor(waves[i : i + batch], sampling_rate=16000, return_tensors="pt").input_features
            backbone.encoder(features.to(device), output_hidden_states=True)
        synchronize()
    return sum(len(w) for w in waves) / 16000 / (time.perf_counter() - started)


def profile_batch(args, waves: list[np.ndarray]) -> None:
    """Where one batch's GPU time goes, per precision: the kernels that take the most."""
    from torch.profiler import ProfilerActivity, profile

    batch = waves[: max(1, int(args.batch_seconds / 3))]
    for precision in args.precisions:
        backbone = load_backbone(args.backbone, device=args.device, precision=precision)
        backbone.encode(batch)
        synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            backbone.encode(batch)
            synchronize()
        print(f"--- {precision}: one batch of {len(batch)} clips, top kernels by GPU time")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


def batch_against_single(backbone, waves: list[np.ndarray]) -> float:
    """The largest |difference| between a clip's hidden states batched and alone, relative
    to the largest |hidden state|."""
    batched = backbone.encode(waves)
    worst = 0.0
    for i, wave in enumerate(waves):
        single = backbone.encode([wave])
        n = int(single.num_frames[0])
        worst = max(worst, float((batched.hidden_states[:, i, :n] - single.hidden_states[:, 0, :n]).abs().max()))
        assert not batched.hidden_states[:, i, n:].any()
    return worst / float(batched.hidden_states.abs().max())


def check_extraction(args, folder: Path) -> None:
    table = write_clips(folder, args.clips)
    waves = [sf.read(folder / p, dtype="float32")[0] for p in table["path"]]
    audio_s = float(table["duration_s"].sum())
    print(f"\n## 1. extraction: {len(waves)} clips of 1-3 s, {audio_s:.0f} s of audio, all hidden states, batches of "
          f"{args.batch_seconds:g} s padded audio")
    results = {}
    for precision in args.precisions:
        backbone = load_backbone(args.backbone, device=args.device, precision=precision)
        alone = encode_speed(backbone, waves, args.batch_seconds)
        started = time.perf_counter()
        extract_features(table, backbone, folder / f"store-{precision}", batch_seconds=args.batch_seconds,
                         workers=4, progress=False)
        whole = audio_s / (time.perf_counter() - started)
        results[precision] = (alone, whole)
        print(f"GPU {precision:8s}: backbone alone {alone:7.0f}x real time; extract_features {whole:6.0f}x real time")
    if args.device.startswith("cuda"):
        profile_batch(args, waves)
    gpu = load_backbone(args.backbone, device=args.device, precision="float32")
    padded = padded_speed(gpu, waves[: args.padded_clips], batch=16)
    print(f"GPU float32, stock transformers padded to 30 s ({args.padded_clips} clips): {padded:6.0f}x real time -> ours is "
          + ", ".join(f"{results[p][0] / padded:.1f}x faster ({p})" for p in args.precisions))
    cpu = load_backbone(args.backbone, device="cpu", precision="float32")
    few = waves[: args.cpu_clips]
    cpu_speed = encode_speed(cpu, few, 30.0)
    print(f"CPU float32 ({torch.get_num_threads()} threads, {args.cpu_clips} clips): {cpu_speed:6.0f}x real time -> "
          f"GPU float32 is {results['float32'][0] / cpu_speed:.0f}x the CPU")

    print("\n## 2. batched against single (12 clips of 0.1-30 s): largest |difference| of any hidden state, "
          "relative to the largest |hidden state|")
    rng = np.random.default_rng(1)
    mixed = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (1600, 4000, 8000, 12000, 16000, 23000,
                                                                            40000, 64000, 100000, 160000, 320000, 480000)]
    for precision in args.precisions:
        backbone = load_backbone(args.backbone, device=args.device, precision=precision)
        print(f"GPU {precision:8s}: batched vs single {batch_against_single(backbone, mixed):.2e}")
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False  # cuDNN runs float32 convolutions in TF32 by default
        print(f"GPU float32 without TF32 convolutions: batched vs single {batch_against_single(gpu, mixed):.2e}")
        torch.backends.cudnn.allow_tf32 = True
    on_gpu = gpu.encode(mixed)
    on_gpu.hidden_states = on_gpu.hidden_states.cpu()
    on_cpu = cpu.encode(mixed)
    difference = float((on_gpu.hidden_states - on_cpu.hidden_states).abs().max())
    pooled = torch.nn.functional.cosine_similarity(on_gpu.mean_pool(), on_cpu.mean_pool(), dim=-1)
    scale = float(on_cpu.hidden_states.abs().max())
    print(f"GPU vs CPU float32: largest |difference| {difference:.2e} (largest |value| {scale:.1f}); "
          f"pooled cosine min {float(pooled.min()):.6f}")
    if "bfloat16" in args.precisions:
        bf = load_backbone(args.backbone, device=args.device, precision="bfloat16").encode(mixed)
        bf.hidden_states = bf.hidden_states.cpu()
        cosine = torch.nn.functional.cosine_similarity(bf.mean_pool(), on_cpu.mean_pool(), dim=-1)
        print(f"GPU bfloat16 vs CPU float32: pooled cosine min {float(cosine.min()):.6f}")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare_runs(one: Path, other: Path) -> tuple[float, float]:
    from safetensors.torch import load_file

    loss_one, loss_other = pd.read_csv(one / "train_log.csv")["loss"], pd.read_csv(other / "train_log.csv")["loss"]
    loss = float(((loss_other - loss_one).abs() / loss_one.abs()).max())
    weights_one, weights_other = load_file(one / "model.safetensors"), load_file(other / "model.safetensors")
    return loss, max(relative(weights_other[k], weights_one[k]) for k in weights_one)


WORKER = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
from bench_train import planted_features
from subspaces.training import load_recipe, train
features, table = planted_features(speakers=32, texts=64, dim=512, held_out=8)
train(features, table, load_recipe(sys.argv[1]), sys.argv[2])
"""


def check_training(args, folder: Path) -> None:
    features, table = planted_features(speakers=32, texts=64, dim=512, held_out=8)
    base = dict(layer=0, steps=args.steps, val_every=0, checkpoint_every=0, select="last")
    print(f"\n## 3. training: the paper's MLP recipe, {int((table.split == 'train').sum())} planted items, "
          f"{args.steps} steps, batch 512")
    seconds = {}
    for device in ("cpu", args.device):
        started = time.perf_counter()
        train(features, table, TrainConfig(device=device, **base), folder / f"train-{device}")
        seconds[device] = time.perf_counter() - started
    loss, weights = compare_runs(folder / "train-cpu", folder / f"train-{args.device}")
    print(f"1 process: CPU {seconds['cpu']:.1f} s, GPU {seconds[args.device]:.1f} s; GPU vs CPU: loss per step "
          f"{loss:.1e} relative, weights {weights:.1e} relative")

    print(f"\n## 4. data-parallel training under torchrun (2 processes) against 1 process on the GPU "
          f"({torch.cuda.device_count()} GPU(s) here)")
    recipe = folder / "recipe.toml"
    write_recipe(TrainConfig(device=args.device, **base), recipe)
    script = folder / "worker.py"
    script.write_text(WORKER.format(benchmarks=str(Path(__file__).resolve().parent)))
    single = folder / "ddp-one"
    subprocess.run([sys.executable, str(script), str(recipe), str(single)], check=True)
    for backend in ("nccl", "gloo"):
        out = folder / f"ddp-two-{backend}"
        env = dict(os.environ, SUBSPACES_DIST_BACKEND=backend, OMP_NUM_THREADS="2")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), str(recipe), str(out)], env=env, capture_output=True, text=True)
        took = time.perf_counter() - started
        if done.returncode:
            lines = done.stderr.splitlines()
            reason = [line for line in lines if "TrainError:" in line] or [line for line in lines if "Error:" in line]
            print(f"2 processes, {backend}: exit {done.returncode} after {took:.0f} s: "
                  f"{(reason[-1] if reason else done.stderr[-300:]).strip()[:400]}")
            continue
        loss, weights = compare_runs(single, out)
        print(f"2 processes, {backend}: {took:.1f} s (with start-up); vs 1 process: loss per step {loss:.1e} "
              f"relative, weights {weights:.1e} relative")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="whisper-base")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--padded-clips", type=int, default=256)
    parser.add_argument("--cpu-clips", type=int, default=200)
    parser.add_argument("--batch-seconds", type=float, default=240.0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["extraction", "training"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a quick run of the script itself on a machine without a GPU")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check.py: torch finds no CUDA GPU here (--device cpu runs the script on the CPU)")
    folder = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    folder.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    print(json.dumps({"device": args.device, "gpu": gpu.name if gpu else None, "gpus": torch.cuda.device_count(),
                      "gpu_memory_gib": round(gpu.total_memory / 2**30) if gpu else None, "torch": torch.__version__,
                      "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}))
    if "extraction" not in args.skip:
        check_extraction(args, folder)
    if "training" not in args.skip:
        check_training(args, folder)
    print(f"\nfiles in {folder}")


if __name__ == "__main__":
    main()
