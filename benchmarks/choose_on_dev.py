"""Choose the demo recipe on the development suite; report FSDD (the test set) untouched.

Each row of the one-at-a-time study changes one setting of the recipe that had been
chosen on FSDD before the dev suite existed; the combined study puts its winners together;
each row is trained on the demo's own grid with every seed and scored on the dev corpora
(KLettres and KTuberling: recorded letters and words of about 50 real people) and on
FSDD. The row chosen is the one with the lowest **dev speaker EER**: the mean, over both dev
corpora, of the speaker subspace's EER on all trials and on same-language trials
(pairs within a language that at least two people speak, so that telling languages
apart cannot pass for telling people apart). The content layer is chosen by the
synthetic validation content EER (held-out voices saying held-out words); the dev keyword
probe is printed beside it but cannot choose: only KLettres' two English speakers share
classes (one clip per letter each: 42-way one-shot folds of 42 test clips), and
KTuberling's Catalan speakers recorded different themes. FSDD is printed beside each row
and never read by the choice.

    subspaces demo --out runs/demo
    subspaces evaluate --model runs/demo/model --suite dev --out runs/demo/suite-dev   # dev features
    python benchmarks/choose_on_dev.py --demo runs/demo --dev runs/demo/suite-dev --study one-at-a-time
    python benchmarks/choose_on_dev.py --demo runs/demo --dev runs/demo/suite-dev --study combined
    python benchmarks/choose_on_dev.py --demo runs/demo --dev runs/demo/suite-dev --study trained-vs-start

Writes the table (Markdown) to stdout and every number to `--out` (JSON). Results:
benchmarks/DEV.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from subspaces.evaluate import keyword_probe, verification_all_pairs
from subspaces.features import load_features
from subspaces.manifest import read_manifest
from subspaces.model import SubspaceModel
from subspaces.pipeline import DemoPlan, embed_features, training_rows
from subspaces.suite import scored_rows
from subspaces.training import train

DEMO, DEMO_SOURCES = DemoPlan().train, DemoPlan().train_sources
BOTH = ("espeak-ng", "flite")
LDA_ONLY = {"steps": 2, "max_lr": 1e-9, "val_every": 0, "checkpoint_every": 0}
# --study one-at-a-time: one change at a time to the recipe that was chosen on FSDD before the
# dev suite existed (both engines' voices, speaker layer 0, LDA shrinkage 0.01, content layer 5,
# 480 steps, the best checkpoint, tau 0.1). --study combined: its winners together. "sources" keeps only
# those engines' voices for training (validation rows are kept whatever their engine).
FSDD_CHOSEN = {"sources": BOTH, "lda_init": {"speaker": 0.01}, "layer": {"speaker": 0, "content": 5}, "temperature": 0.1}


def _change(**changes) -> dict:
    return {**FSDD_CHOSEN, **changes}


ROUND_1 = {
    "the FSDD-chosen recipe (both engines, speaker layer 0, LDA shrinkage 0.01, content layer 5, 480 steps)": FSDD_CHOSEN,
    "speaker layer 1": _change(layer={"speaker": 1, "content": 5}),
    "speaker layer 2": _change(layer={"speaker": 2, "content": 5}),
    "speaker layer 3": _change(layer={"speaker": 3, "content": 5}),
    "LDA shrinkage 0.001": _change(lda_init={"speaker": 0.001}),
    "LDA shrinkage 0.05": _change(lda_init={"speaker": 0.05}),
    "LDA shrinkage 0.2": _change(lda_init={"speaker": 0.2}),
    "LDA shrinkage 0.5": _change(lda_init={"speaker": 0.5}),
    "content layer 2": _change(layer={"speaker": 0, "content": 2}),
    "content layer 3": _change(layer={"speaker": 0, "content": 3}),
    "content layer 4": _change(layer={"speaker": 0, "content": 4}),
    "content layer 6": _change(layer={"speaker": 0, "content": 6}),
    "LDA start only (no contrastive steps)": _change(**LDA_ONLY),
    "960 steps": _change(steps=960),
    "last checkpoint instead of the best on validation": _change(select="last"),
    "espeak-ng voices only": _change(sources=("espeak-ng",)),
    "flite voices only": _change(sources=("flite",)),
}
# The one-at-a-time winners: shrinkage 0.2, 960 steps (both engines stay: espeak-ng alone is no
# better), content layer 4 (by the synthetic validation). --study combined puts them together and tries
# what lets the contrastive training move the weights: the temperature, a larger rate.
WINNERS = {"lda_init": {"speaker": 0.2}, "layer": {"speaker": 0, "content": 4}}
ROUND_2 = {
    "LDA shrinkage 0.2, content layer 4": _change(**WINNERS),
    "LDA shrinkage 0.2, content layer 4, 960 steps": _change(**WINNERS, steps=960),
    "LDA shrinkage 0.2, content layer 4, tau 0.5": _change(**WINNERS, temperature=0.5),
    "LDA shrinkage 0.2, content layer 4, 960 steps, tau 0.5": _change(**WINNERS, steps=960, temperature=0.5),
    "LDA shrinkage 0.2, content layer 4, max lr 1e-3": _change(**WINNERS, max_lr=1e-3),
    "content layer 4, random start, max lr 1e-3": _change(layer={"speaker": 0, "content": 4}, lda_init={},
                                                          max_lr=1e-3),
}
# --study trained-vs-start: the demo's recipe as it ships (`DemoPlan()`: the combined study's
# winner), and its closed-form start alone.
HEADLINE = {
    "the demo (chosen on dev)": {},
    "the demo's LDA start alone (no contrastive steps)": LDA_ONLY,
}
ROWS = {**ROUND_1, **ROUND_2, **HEADLINE}
STUDIES = {"one-at-a-time": ROUND_1, "combined": ROUND_2, "trained-vs-start": HEADLINE, "all": ROWS}


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def speaker_scores(vectors: np.ndarray, table) -> dict:
    """EER per trial group, all pairs of the manifest (streamed: evaluate.verification_all_pairs)."""
    groups = verification_all_pairs(vectors, table)
    return {group: (groups[group]["eer"] if group in groups else None)
            for group in ("all", "same_language", "cross_language", "matched", "mismatched")}


def corpus_scores(ours: dict[str, np.ndarray], table, leakage: bool) -> dict:
    """Speaker EERs and the content probe; with `leakage` also the content subspace's
    speaker EER and the speaker subspace's keyword probe."""
    scores = {"speaker_eer": speaker_scores(ours["speaker"], table),
              "content_probe": _quiet(keyword_probe, ours["content"], table)["accuracy"]}
    if leakage:
        scores["content_subspace_speaker_eer"] = speaker_scores(ours["content"], table)["all"]
        scores["speaker_subspace_probe"] = _quiet(keyword_probe, ours["speaker"], table)["accuracy"]
    return scores


def synthetic_validation(model_dir: Path, select: str) -> dict:
    """The synthetic validation scores (held-out voices x held-out words) of the weights
    that training kept: each factor's EER in its own subspace, from val_log.csv."""
    import pandas as pd

    log_file = model_dir / "val_log.csv"
    if not log_file.is_file():
        return {"speaker_eer": None, "content_eer": None}
    log = pd.read_csv(log_file)
    row = log.loc[log["score"].idxmin()] if select == "best" else log.iloc[-1]
    return {"speaker_eer": float(row["speaker/speaker_eer"]), "content_eer": float(row["content/content_eer"])}


def dev_speaker_eer(scores: dict) -> float:
    """The choice criterion: mean over dev corpora of EER all and EER same-language."""
    values = [s["speaker_eer"][g] for s in scores.values() for g in ("all", "same_language")
              if s["speaker_eer"][g] is not None]
    return float(np.mean(values))


def dev_content_probe(scores: dict) -> float | None:
    values = [s["content_probe"] for s in scores.values() if s["content_probe"] is not None]
    return float(np.mean(values)) if values else None


def _pct(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{100 * np.mean(values):.1f} +- {100 * np.std(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="a finished `subspaces demo` folder")
    parser.add_argument("--dev", default="runs/demo/suite-dev",
                        help="a finished `subspaces evaluate --suite dev` folder (its manifests and features)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--study", choices=tuple(STUDIES), default="all",
                        help="one-at-a-time: one change at a time to the FSDD-chosen recipe; combined: its "
                             "winners together, with the temperature and learning rate; trained-vs-start: the "
                             "demo's recipe and its LDA start (the README's table)")
    parser.add_argument("--rows", nargs="*", help="subset of row names (default: all of the study)")
    parser.add_argument("--out", default="choose_on_dev.json", help="every number, as JSON")
    args = parser.parse_args()
    demo, dev = Path(args.demo), Path(args.dev)
    grid = read_manifest(demo / "grid" / "manifest.csv")
    corpora = {"fsdd": (read_manifest(demo / "fsdd" / "manifest.csv"), demo / "features-fsdd")}
    for name in ("klettres", "ktuberling"):
        # The rows `subspaces evaluate --suite dev` scores (folders credited to two people left out).
        corpora[name] = (scored_rows(read_manifest(dev / name / "manifest-all.csv")), dev / name / "features")
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def features(which: str, pooling: str) -> torch.Tensor:
        if (which, pooling) not in cache:
            table, folder = (grid, demo / "features-grid") if which == "grid" else corpora[which]
            cache[which, pooling] = load_features(folder, table, pooling=pooling)
        return cache[which, pooling]

    results: dict = {"baselines": {}, "rows": {}}
    # Baselines in the same run: every raw layer, and Resemblyzer where evaluate cached it.
    for name, (table, folder) in corpora.items():
        raw = features(name, "mean")
        for layer in range(raw.shape[1]):
            results["baselines"].setdefault(f"raw layer {layer}", {})[name] = speaker_scores(raw[:, layer].numpy(), table)
        cached = folder / "resemblyzer.npz"
        if cached.is_file():
            from subspaces.baselines import resemblyzer_embeddings_cached

            vectors = resemblyzer_embeddings_cached(table, folder, progress=False)
            results["baselines"].setdefault("Resemblyzer", {})[name] = speaker_scores(vectors, table)
    header = ("| system | dev speaker EER (chosen on) | KLettres all | KLettres same-lang | KTuberling all | "
              "KTuberling same-lang | dev content probe | synthetic val content EER | FSDD EER all | FSDD matched | FSDD mismatched | "
              "FSDD digit probe | FSDD content-subspace spk EER | FSDD speaker-subspace digit probe |")
    print(header)
    print("|---|" + "---:|" * (header.count("|") - 2))
    for system, per_corpus in results["baselines"].items():
        dev_scores = {k: {"speaker_eer": v} for k, v in per_corpus.items() if k != "fsdd"}
        fsdd = per_corpus["fsdd"]
        print(f"| {system} | {_pct([dev_speaker_eer(dev_scores)])} | "
              f"{_pct([per_corpus['klettres']['all']])} | {_pct([per_corpus['klettres']['same_language']])} | "
              f"{_pct([per_corpus['ktuberling']['all']])} | {_pct([per_corpus['ktuberling']['same_language']])} | - | - | "
              f"{_pct([fsdd['all']])} | {_pct([fsdd['matched']])} | {_pct([fsdd['mismatched']])} | - | - | - |", flush=True)
    for row, changes in STUDIES[args.study].items():
        if args.rows and row not in args.rows:
            continue
        changes = dict(changes)
        keep = training_rows(grid, changes.pop("sources", DEMO_SOURCES))
        table = grid[keep].reset_index(drop=True)
        started, runs = time.perf_counter(), []
        for seed in args.seeds:
            config = dataclasses.replace(DEMO, seed=seed, **changes)
            grid_features = features("grid", config.pooling)[torch.from_numpy(keep.copy())]
            with tempfile.TemporaryDirectory() as out:
                train(grid_features, table, config, out, metadata={"backbone": "dev-choice-study"})
                model = SubspaceModel.load(out)
                run = {"synthetic_val": synthetic_validation(Path(out), config.select)}
                for name, (corpus, _) in corpora.items():
                    ours = embed_features(model, features(name, config.pooling))
                    # Leakage is measured on FSDD (digits said by every speaker); on the dev
                    # corpora no content class is shared across people except KLettres' English.
                    run[name] = corpus_scores(ours, corpus, leakage=name == "fsdd")
                runs.append(run)
        dev_runs = [{k: v for k, v in run.items() if k in ("klettres", "ktuberling")} for run in runs]
        summary = {
            "dev_speaker_eer": [dev_speaker_eer(r) for r in dev_runs],
            "dev_content_probe": [dev_content_probe(r) for r in dev_runs],
            "runs": runs, "seconds_per_run": (time.perf_counter() - started) / len(args.seeds),
        }
        results["rows"][row] = summary
        get = lambda corpus, *keys: [_dig(run[corpus], keys) for run in runs]  # noqa: E731
        print(f"| {row} | {_pct(summary['dev_speaker_eer'])} | "
              f"{_pct(get('klettres', 'speaker_eer', 'all'))} | {_pct(get('klettres', 'speaker_eer', 'same_language'))} | "
              f"{_pct(get('ktuberling', 'speaker_eer', 'all'))} | {_pct(get('ktuberling', 'speaker_eer', 'same_language'))} | "
              f"{_pct(summary['dev_content_probe'])} | {_pct(get('synthetic_val', 'content_eer'))} | "
              f"{_pct(get('fsdd', 'speaker_eer', 'all'))} | {_pct(get('fsdd', 'speaker_eer', 'matched'))} | "
              f"{_pct(get('fsdd', 'speaker_eer', 'mismatched'))} | {_pct(get('fsdd', 'content_probe'))} | "
              f"{_pct(get('fsdd', 'content_subspace_speaker_eer'))} | {_pct(get('fsdd', 'speaker_subspace_probe'))} |",
              flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    rows = results["rows"]
    if rows:
        speaker_rows = [r for r in rows if not r.startswith("content layer")]
        best = min(speaker_rows, key=lambda r: np.mean(rows[r]["dev_speaker_eer"]))
        print(f"\nlowest dev speaker EER: {best!r}")
        content = {r: np.mean([v for v in rows[r]["dev_content_probe"] if v is not None] or [-1.0]) for r in rows
                   if r.startswith(("content layer", "the FSDD-chosen"))}
        if content:
            val = {r: np.mean([run["synthetic_val"]["content_eer"] for run in rows[r]["runs"]]) for r in content}
            print(f"content layer by the synthetic validation content EER: {min(val, key=val.get)!r} "
                  f"(by the dev probe, which cannot choose: {max(content, key=content.get)!r})")


def _dig(entry: dict, keys: tuple[str, ...]):
    for key in keys:
        entry = entry[key]
    return entry


if __name__ == "__main__":
    main()
