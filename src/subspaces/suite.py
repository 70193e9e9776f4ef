"""Named evaluation suites: the development corpora (choose settings here) and the test set.

    dev   KLettres + KTuberling: about 50 real people in 20-odd languages, recorded
          letters, syllables and object words (Debian's klettres-data and ktuberling-data;
          `scripts/install.sh` installs them). Settings, thresholds and checkpoints are
          chosen here or on the synthetic validation split.
    test  FSDD (600 clips: 10 per speaker x digit), bundled. Reported, never chosen on.

In the dev corpora one language is mostly one person, so a verifier can look good by
telling languages apart: every table also reports same-language trials (different people
speaking one language; the corpus' `language` column, see `evaluate.verification`) and
cross-language trials. Every person there is also one recording session, so speaker and
channel are confounded.

`evaluate_suite` scores one or several models (e.g. one per seed) on every corpus of a
suite, beside the raw backbone layers and Resemblyzer, and writes one report per corpus.

>>> SUITES["dev"]
('klettres', 'ktuberling')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .atomic import write_text_atomic
from .backbones import Backbone
from .corpora import load_corpus
from .errors import SubspacesError
from .manifest import read_manifest, write_manifest

__all__ = ["SUITES", "evaluate_suite", "load_suite", "scored_rows", "suite_corpus"]

SUITES: dict[str, tuple[str, ...]] = {"dev": ("klettres", "ktuberling"), "test": ("fsdd",)}
# FSDD as the demo scores it: 10 clips per speaker x digit, drawn with seed 0 (600 clips).
FSDD_PER_SPEAKER_DIGIT = 10


class SuiteError(SubspacesError, ValueError):
    """An unknown suite name, or a suite whose corpora cannot be read."""


def _corpus(name: str) -> pd.DataFrame:
    if name == "fsdd":
        return load_corpus("fsdd", limit_per_speaker_digit=FSDD_PER_SPEAKER_DIGIT, seed=0)
    return load_corpus(name)


def scored_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows a suite scores: all but those whose speaker label is a folder that the
    credits say holds two people (`confidence == "mixed"`: KLettres es and nb, KTuberling
    el and nn), whose same-speaker pairs may pair two people. `attrs["dropped_mixed"]`
    counts them.

    >>> table = pd.DataFrame({"speaker": ["a", "b"], "confidence": ["tagged", "mixed"]})
    >>> kept = scored_rows(table)
    >>> len(kept), kept.attrs["dropped_mixed"]
    (1, 1)
    """
    if "confidence" not in table.columns:
        kept = table.copy()
    else:
        kept = table[table["confidence"].astype(str) != "mixed"].reset_index(drop=True)
    kept.attrs = {**table.attrs, "dropped_mixed": len(table) - len(kept)}
    return kept


def load_suite(suite: str) -> dict[str, pd.DataFrame]:
    """The manifests of a suite's corpora, `scored_rows` of each: {corpus name: manifest}.

    >>> tables = load_suite("test")
    >>> {name: len(table) for name, table in tables.items()}
    {'fsdd': 600}
    """
    if suite not in SUITES:
        raise SuiteError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return {name: scored_rows(_corpus(name)) for name in SUITES[suite]}


def suite_corpus(suite: str) -> pd.DataFrame:
    """All of a suite's corpora in one manifest (rows keep their `source`), e.g. to
    calibrate a threshold on the whole dev suite. Pairs across corpora are non-targets.

    >>> table = suite_corpus("test")
    >>> sorted(table["source"].unique())
    ['fsdd']
    """
    tables = load_suite(suite)
    table = pd.concat(list(tables.values()), ignore_index=True)
    speakers = table.groupby("speaker")["source"].nunique()
    shared = sorted(speakers[speakers > 1].index)
    if shared:
        raise SuiteError(f"suite {suite!r}: speaker label(s) {', '.join(shared[:5])} appear in two corpora; "
                         "their trials would mix two people or two sessions")
    table.attrs["root"] = "/"
    return table


def evaluate_suite(
    model_dirs: Sequence[str | Path], suite: str, out_dir: str | Path, *, max_trials: int | None = None,
    seed: int = 0, baseline: bool = True, backbone: Backbone | None = None, device: str = "cpu",
) -> dict:
    """Evaluate models on every corpus of a suite and write, under `out_dir`:

        <corpus>/manifest.csv                       the scored rows (`scored_rows`)
        <corpus>/manifest-all.csv, features/        every row; extracted once, shared by the models
        <corpus>/report.md, metrics.json, plots     (one model), or
        <corpus>/model-K/... and <corpus>/summary.md, summary.json (several: mean +- std)
        metrics.json, report.md                     every corpus' table

    `backbone` defaults to the one each model names. Returns {"suite", "models",
    "corpora": {corpus: results of one model, or {"systems": mean +- std summary} for
    several}}.
    """
    from .pipeline import evaluate_models

    if not model_dirs:
        raise SuiteError("evaluate_suite needs at least one model folder")
    out = Path(out_dir)
    results: dict = {"suite": suite, "models": [str(m) for m in model_dirs], "corpora": {}}
    if suite not in SUITES:
        raise SuiteError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    sections = [f"# Suite {suite!r}: {', '.join(SUITES[suite])}", ""]
    for name in SUITES[suite]:
        folder = out / name.split(":")[0]
        # Features are extracted for the whole corpus (manifest-all.csv), so a store stays
        # valid whichever rows are scored; the scored rows are manifest.csv.
        write_manifest(_corpus(name), folder / "manifest-all.csv")
        everything = read_manifest(folder / "manifest-all.csv")
        table = scored_rows(everything)
        write_manifest(table, folder / "manifest.csv")
        table = read_manifest(folder / "manifest.csv")
        runs, summary, markdown = evaluate_models(
            model_dirs, table, folder, name=f"{suite} suite, {name}", max_trials=max_trials, seed=seed,
            baseline=baseline, backbone=backbone, store_manifest=everything, device=device)
        results["corpora"][name] = runs[0] if summary is None else {"systems": summary, "runs": len(runs)}
        dropped = len(everything) - len(table)
        note = f"; {dropped} clips of folders credited to two people left out" if dropped else ""
        sections += [f"## {name} ({len(table)} clips, {table['speaker'].nunique()} speakers{note})", "", markdown, ""]
        print(f"\n{name} ({len(table)} clips, {table['speaker'].nunique()} speakers)\n{markdown}\n", flush=True)
    write_text_atomic(out / "metrics.json", json.dumps(results, indent=2, default=str) + "\n")
    write_text_atomic(out / "report.md", "\n".join(sections))
    return results
