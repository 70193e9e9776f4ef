"""Lever studies: how training choices change transfer from synthetic voices to real speech.

Reuses a finished demo folder (its grid, grid features and FSDD features), trains one
model per (lever, seed) and scores it on FSDD exactly as `subspaces evaluate` does:
speaker-subspace EER (all / content-matched / mismatched), content-subspace digit probe
(speaker-disjoint), and leakage (content-subspace speaker EER, speaker-subspace digit
probe). Prints mean +- std over seeds, with the best raw layer in the same run.

    subspaces demo --out runs/demo
    python benchmarks/levers.py --demo runs/demo --study demo-training --seeds 0 1 2  # the demo's training
    python benchmarks/levers.py --demo runs/demo32 --study paper-recipe --seeds 0 1 2  # the paper's recipe
    subspaces demo --size large --out runs/large
    python benchmarks/levers.py --demo runs/large --study voices --seeds 0 1 2

Results, with the command behind each table: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from subspaces.backbones import load_backbone
from subspaces.evaluate import keyword_probe, make_trials, verification
from subspaces.features import load_features
from subspaces.manifest import read_manifest
from subspaces.model import SubspaceModel
from subspaces.pipeline import DemoPlan, embed_features
from subspaces.training import train

# --study paper-recipe: every lever is a change to the paper's recipe (one shared layer mix,
# an MLP of three hidden layers of 768, everything at max lr 1e-4, random start) with the
# demo's block shape. It was measured on the 32-voice grid with feature format 1
# (benchmarks/RESULTS.md, history).
MLP = (768, 768, 768)
BASE = dataclasses.replace(DemoPlan().train, layer="mix", layer_lr_scale=1.0, hidden=MLP, lda_init={},
                           temperature=0.1, select_by="eer")
LEVERS = {
    "paper default (one shared layer mix)": {},
    "layer 0 only": {"layer": 0},
    "layer 1 only": {"layer": 1},
    "tau 0.05": {"temperature": 0.05},
    "tau 0.3": {"temperature": 0.3},
    "orthogonality 0": {"orthogonality_weight": 0.0},
    "orthogonality 10": {"orthogonality_weight": 10.0},
    # The penalty is a mean over E1 x E2 = 147,456 entries of row-normalised vectors, so
    # it starts near 5e-6: weight 1e5 makes it count about as much as one contrastive term.
    "orthogonality 1e5": {"orthogonality_weight": 1e5},
    "smaller MLP (256, 128+128)": {"hidden": (256,), "subspaces": {"speaker": 128, "content": 128}},
    "layer mix per subspace": {"layer": "mix-per-subspace"},
    "layer mix, layer lr x100": {"layer_lr_scale": 100.0},
    "layer mix per subspace, layer lr x100": {"layer": "mix-per-subspace", "layer_lr_scale": 100.0},
    "layer mix per subspace, layer lr x1000 (the demo default before fixed layers)": {"layer": "mix-per-subspace", "layer_lr_scale": 1000.0},
    # Needs a grid made with channels clean + telephone (FSDD is 8 kHz telephone-band speech):
    # python benchmarks/levers.py --demo DIR --study paper-recipe --levers "telephone channel as a nuisance ..." after
    # run_demo(DIR, DemoPlan(channels=("clean", "telephone"), ...)); see benchmarks/RESULTS.md.
    "telephone channel as a nuisance (mix per subspace, layer lr x1000)": {
        "layer": "mix-per-subspace", "layer_lr_scale": 1000.0, "nuisance": "channel",
        "block": {"speaker": 16, "content": 8, "channel": 2}},
    "layer per subspace (speaker 0, content 3)": {"layer": {"speaker": 0, "content": 3}},
    "layer per subspace (speaker 0, content 5), MLP each (the demo default before the LDA start)": {
        "layer": {"speaker": 0, "content": 5}},
    "flite voices only": {"sources": ("flite",)},
    "espeak-ng voices only": {"sources": ("espeak-ng",)},
}

# --study demo-training, on feature format 2 (Whisper's layer 0 without its positional
# table): each row is a change to the demo's training (a linear projection per subspace,
# speaker from layer 0, content from layer 5, the speaker projection started as a
# shrinkage LDA of the training voices) on the demo's own grid.
#   python benchmarks/levers.py --demo runs/demo --study demo-training --seeds 0 1 2
RANDOM_START = {"lda_init": {}}
TRANSFER_LEVERS = {
    "paper recipe (one shared layer mix, MLP, random start)": {"layer": "mix", "hidden": MLP, **RANDOM_START},
    "layer per subspace, MLP each, random start (the demo's training before the LDA start)": {"hidden": MLP, **RANDOM_START},
    "linear, random start": RANDOM_START,
    "linear, random start, layer 0 with the positional table (feature format 1)": {**RANDOM_START, "positions": True},
    "**the demo: linear, LDA start for the speaker (shrinkage 0.01)**": {},
    "LDA start for the speaker, no contrastive training": {
        "steps": 2, "max_lr": 1e-9, "val_every": 0, "checkpoint_every": 0},
    "LDA start, shrinkage 0.05": {"lda_init": {"speaker": 0.05}},
    "LDA start, shrinkage 0.2": {"lda_init": {"speaker": 0.2}},
    "LDA start for the speaker and the content (words as classes)": {"lda_init": {"speaker": 0.01, "content": 0.01}},
    "LDA start, 32 speaker dimensions": {"subspaces": {"speaker": 32, "content": 384}},
    "LDA start, 960 steps": {"steps": 960},
    "LDA start, mean+std pooling": {"pooling": "mean+std"},
    "LDA start, content layer 4": {"layer": {"speaker": 0, "content": 4}},
    "LDA start, layer 0 with the positional table (feature format 1)": {"positions": True},
}

# Which voices to train on, on the grid of all four engines that `subspaces demo --recipe
# large --out DIR` makes (48 Kokoro + 9 Piper voices besides the demo's 80); each row is a
# change to the demo's recipe. Engines left out of training are scored as held-out voices
# (speaker EER of the speaker subspace on all their clips, a seeded sample of 100,000 pairs).
#   python benchmarks/levers.py --demo DIR --study voices --seeds 0 1 2
# The rows marked "(format 1)" are the recipes of the earlier engine study (MLP trunks,
# random start), measured with feature format 1 on a 32 + 57 voice grid (benchmarks/RESULTS.md,
# history); today's features (format 2) give other numbers.
# The demo's training as it was when these studies ran (chosen on FSDD; the demo's recipe
# has since been chosen on the dev suite, benchmarks/choose_on_dev.py).
DEMO = dataclasses.replace(DemoPlan().train, layer={"speaker": 0, "content": 5}, lda_init={"speaker": 0.01},
                           temperature=0.1, select_by="eer")
ALL = ("espeak-ng", "flite", "kokoro", "piper")
OLD = {"hidden": MLP, **RANDOM_START}
MIX = {"layer": "mix-per-subspace", "layer_lr_scale": 1000.0, **OLD}
VOICE_LEVERS = {
    "espeak-ng + flite (the demo's training)": {"sources": ("espeak-ng", "flite")},
    "kokoro + piper": {"sources": ("kokoro", "piper")},
    "all four engines (the large recipe)": {"sources": ALL},
    "all four engines, random start": {"sources": ALL, **RANDOM_START},
    "kokoro held out": {"sources": ("espeak-ng", "flite", "piper")},
    "flite held out": {"sources": ("espeak-ng", "kokoro", "piper")},
    "piper held out": {"sources": ("espeak-ng", "flite", "kokoro")},
    "espeak-ng + flite, layer mix per subspace (format 1)": {"sources": ("espeak-ng", "flite"), **MIX},
    "espeak-ng + flite, layer per subspace, MLP (format 1)": {"sources": ("espeak-ng", "flite"), **OLD},
    "kokoro only, layer mix per subspace (format 1)": {"sources": ("kokoro",), **MIX},
    "kokoro + piper, layer mix per subspace (format 1)": {"sources": ("kokoro", "piper"), **MIX},
    "all four engines, layer mix per subspace (format 1)": {"sources": ALL, **MIX},
    "all four engines, layer per subspace, MLP (format 1)": {"sources": ALL, **OLD},
    "all four engines, layer per subspace, MLP, mean+std pooling (format 1)": {
        "sources": ALL, "pooling": "mean+std", **OLD},
    "all four engines, layer per subspace, MLP, 32 voices x 8 words per batch (format 1)": {
        "sources": ALL, "block": {"speaker": 32, "content": 8}, **OLD},
    "layer per subspace, MLP, piper held out (format 1)": {"sources": ("espeak-ng", "flite", "kokoro"), **OLD},
    "layer per subspace, MLP, kokoro held out (format 1)": {"sources": ("espeak-ng", "flite", "piper"), **OLD},
    "layer per subspace, MLP, flite held out (format 1)": {"sources": ("espeak-ng", "kokoro", "piper"), **OLD},
}


@functools.cache
def whisper_base_positions() -> torch.Tensor:
    """whisper-base's positional table `float[1500, 512]` (the backbone is loaded once)."""
    return load_backbone("whisper-base").encoder.embed_positions.weight.detach().float()


def with_positions(features: torch.Tensor, table) -> torch.Tensor:
    """Mean-pooled whisper-base features with layer 0 as transformers gives it: each clip's
    mean of the positional table over its frames added back (feature format 2 leaves it out)."""
    table_rows = whisper_base_positions()
    samples = np.round(table["duration_s"].to_numpy() * 16000).astype(int)
    frames = torch.from_numpy((samples // 160 + 1) // 2)  # 100 mel frames/s, then conv stride 2
    out = features.clone()
    out[:, 0] += torch.cumsum(table_rows, 0)[frames - 1] / frames[:, None]
    return out


def score(model_dir: Path, features: torch.Tensor, table, trials) -> dict:
    ours = embed_features(SubspaceModel.load(model_dir), features)
    speaker = verification(ours["speaker"], trials)
    content = verification(ours["content"], trials)
    return {
        "eer_all": speaker["all"]["eer"], "eer_matched": speaker["matched"]["eer"],
        "eer_mismatched": speaker["mismatched"]["eer"],
        "digit_probe": keyword_probe(ours["content"], table)["accuracy"],
        "leak_content_eer": content["all"]["eer"],
        "leak_speaker_digit": keyword_probe(ours["speaker"], table)["accuracy"],
    }


def held_out_eer(model_dir: Path, features: torch.Tensor, table, seed: int) -> float:
    """Speaker EER of the speaker subspace on grid voices of engines the model never heard."""
    ours = embed_features(SubspaceModel.load(model_dir), features)
    trials = make_trials(table, max_trials=100_000, seed=seed)
    return verification(ours["speaker"], trials)["all"]["eer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="a finished `subspaces demo` folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--study", choices=("paper-recipe", "demo-training", "voices"), default="demo-training",
                        help="demo-training: changes to the demo's training; paper-recipe: changes to the paper's "
                             "recipe; voices: which engines to train on (needs a grid of all four engines)")
    parser.add_argument("--levers", nargs="*", help="subset of lever names (default: all)")
    args = parser.parse_args()
    levers, base = {"paper-recipe": (LEVERS, BASE), "demo-training": (TRANSFER_LEVERS, DEMO), "voices": (VOICE_LEVERS, DEMO)}[args.study]
    demo = Path(args.demo)
    grid = read_manifest(demo / "grid" / "manifest.csv")
    fsdd = read_manifest(demo / "fsdd" / "manifest.csv")
    features: dict[tuple[str, str], torch.Tensor] = {}

    def load(which: str, pooling: str) -> torch.Tensor:
        if (which, pooling) not in features:
            table = grid if which == "grid" else fsdd
            features[which, pooling] = load_features(demo / f"features-{which}", table, pooling=pooling)
        return features[which, pooling]

    trials = make_trials(fsdd)
    raw_fsdd = load("fsdd", "mean")
    raw = {layer: verification(raw_fsdd[:, layer].numpy(), trials)["all"]["eer"] for layer in range(raw_fsdd.shape[1])}
    best = min(raw, key=raw.get)
    print(f"FSDD {len(fsdd)} clips, {len(trials):,} trials; raw whisper layers EER %: "
          + ", ".join(f"{k}:{100 * v:.1f}" for k, v in raw.items()) + f" (best: layer {best})")
    report = demo / "report" / "metrics.json"
    if report.is_file():
        for system, metrics in json.loads(report.read_text())["systems"].items():
            if not system.startswith(("ours", "raw")):  # raw layers: printed above
                eer = metrics["verification"]
                print(f"demo report, {system}: EER % " + " / ".join(
                    f"{100 * eer[k]['eer']:.1f}" for k in ("all", "matched", "mismatched"))
                    + f", digit probe {100 * metrics['keyword']['accuracy']:.1f}")
    print(f"grid: {len(grid)} clips of {grid['speaker'].nunique()} voices; engines "
          + ", ".join(f"{k} {v}" for k, v in grid.groupby("source")["speaker"].nunique().items()))
    keys = ["eer_all", "eer_matched", "eer_mismatched", "digit_probe", "leak_content_eer", "leak_speaker_digit"]
    print("| lever | spk EER all | matched | mismatched | content digit probe | content-subspace spk EER | "
          "speaker-subspace digit probe | held-out engines' spk EER | s/run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, changes in levers.items():
        if args.levers and name not in args.levers:
            continue
        runs, started = [], time.perf_counter()
        changes = dict(changes)
        sources = changes.pop("sources", None)
        positions = changes.pop("positions", False)
        heard = grid["source"].isin(sources).to_numpy() if sources else np.ones(len(grid), dtype=bool)
        # Train on the chosen engines' training rows; validate (choose the best step) on every
        # held-out voice x held-out word, whatever its engine: those rows are never trained on.
        rows = (heard & (grid["split"] == "train").to_numpy()) | (grid["split"] == "val").to_numpy()
        pooling = changes.get("pooling", base.pooling)
        grid_features, fsdd_features = load("grid", pooling), load("fsdd", pooling)
        if positions and pooling != "mean":
            raise SystemExit(f"lever {name!r}: the positional table can only be added back to mean pooling")
        if positions:
            grid_features, fsdd_features = with_positions(grid_features, grid), with_positions(fsdd_features, fsdd)
        table, train_features = grid[rows].reset_index(drop=True), grid_features[torch.from_numpy(rows.copy())]
        unseen = grid[~heard].reset_index(drop=True)
        unseen_features = grid_features[torch.from_numpy(~heard)]
        held_out = []
        for seed in args.seeds:
            config = dataclasses.replace(base, seed=seed, **changes)
            if table.loc[table["split"] == "train", "speaker"].nunique() < 2 * config.block["speaker"]:  # too few voices
                config = dataclasses.replace(config, block={"speaker": 8, "content": 16})
            with tempfile.TemporaryDirectory() as out:
                train(train_features, table, config, out, metadata={"backbone": "lever-study"})
                runs.append(score(Path(out), fsdd_features, fsdd, trials))
                if len(unseen):
                    held_out.append(held_out_eer(Path(out), unseen_features, unseen, seed))
        per_run = (time.perf_counter() - started) / len(args.seeds)
        cells = []
        for key in keys:
            values = 100 * np.array([r[key] for r in runs])
            cells.append(f"{values.mean():.1f} +- {values.std():.1f}")
        cells.append(f"{100 * np.mean(held_out):.1f} +- {100 * np.std(held_out):.1f}" if held_out else "-")
        print(f"| {name} | " + " | ".join(cells) + f" | {per_run:.0f} |", flush=True)


if __name__ == "__main__":
    main()
