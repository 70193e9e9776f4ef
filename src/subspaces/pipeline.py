"""Pipelines that chain the stages: `run_demo` (the whole default pipeline, offline:
synthesise, extract, train, evaluate on real speech) and `evaluate_model` (a trained
model on any corpus, beside the raw backbone layers).

Each stage writes its own folder under `out_dir` and is resumable, so a rerun reuses
finished stages (and an interrupted one continues):

    out_dir/grid/          synthetic interventional grid (voices x words)
    out_dir/features-grid/ backbone features of the grid
    out_dir/fsdd/          manifest of the real-speech evaluation subset
    out_dir/features-fsdd/ backbone features of it
    out_dir/model/         the trained subspace model
    out_dir/report/        metrics.json, report.md, plots

>>> plan = DemoPlan()
>>> plan.train.block
{'speaker': 16, 'content': 16}
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import write_text_atomic
from .backbones import Backbone, load_backbone
from .corpora import read_fsdd
from .errors import SubspacesError
from .evaluate import evaluate_systems, linear_cka, summary_table
from .features import extract_features, load_features
from .inference import load_model
from .manifest import read_manifest, write_manifest
from .model import LAYER_MIX, LAYER_MIX_EACH, SubspaceModel
from .report import write_report
from .synth import load_texts, sample_texts, sample_voice_mix, synthesize_grid
from .training import TrainConfig, load_recipe, train

__all__ = ["DEMO_PLANS", "DemoPlan", "PipelineError", "calibrate_model", "embed_features", "evaluate_model",
           "evaluate_models", "run_demo", "training_rows"]


class PipelineError(SubspacesError, ValueError):
    """A pipeline step that cannot run as asked (a model for another backbone, an unknown subspace, ...)."""


STORED_POOLING = ("mean", "std")


@dataclass(frozen=True)
class DemoPlan:
    """What `subspaces demo` runs. Sized to finish in minutes on a 2-core CPU.

    The grid holds voices of both offline engines (flite's are built from recordings of
    real speakers; espeak-ng's are formant synthesis); texts are single English words
    (never digits: the real test set is spoken digits); held-out voices and words
    validate. The training settings that were searched (speaker and content layers, LDA
    shrinkage, steps, checkpoint, voices, learning rate, temperature) were chosen on the
    development suite (KLettres + KTuberling) or the synthetic validation split, never on
    FSDD (benchmarks/choose_on_dev.py, benchmarks/DEV.md); the structure (a linear
    projection per subspace, the LDA start) was found on FSDD earlier
    (benchmarks/RESULTS.md), and the rest are the paper's.
    """

    espeak_voices: int = 48
    flite_voices: int = 32
    # Which engines' voices are trained on (validation rows are kept whatever their
    # engine). On the dev suite espeak-ng alone is no better than both (benchmarks/DEV.md).
    train_sources: tuple[str, ...] = ("espeak-ng", "flite")
    kokoro_voices: int = 0
    piper_voices: int = 0
    texts: str = "words"
    num_texts: int = 64
    # Held out as whole base voices (no held-out voice is a pitch or rate variant of a
    # training voice; grid.py): with seed 0, four espeak-ng variants.
    val_voices: int = 4
    hold_out: str = "base"
    val_texts: int = 8
    channels: tuple[str, ...] = ("clean",)
    backbone: str = "whisper-base"
    # bfloat16 where the CPU (AVX512-BF16, AMX) or GPU has it natively, else float32
    # (devices.default_precision); pretrained.py pins float32 to rebuild the shipped model.
    precision: str = "auto"
    fsdd_per_speaker_digit: int = 10
    seed: int = 0
    # The training recipe: the shipped src/subspaces/data/recipes/demo.toml (its comments
    # say what differs from the paper's and where each value was chosen).
    train: TrainConfig = field(default_factory=lambda: load_recipe("demo"))


# `subspaces demo --size NAME`. "large" adds Kokoro's and Piper's neural voices to the
# demo's grid and trains on all four engines: about 30 min of synthesis on 2 cores instead
# of about 1. It was measured on FSDD only (benchmarks/RESULTS.md, "Which voices"), not
# yet on the dev suite.
DEMO_PLANS = {
    "small": DemoPlan(),
    "large": DemoPlan(kokoro_voices=48, piper_voices=9, train_sources=("espeak-ng", "flite", "kokoro", "piper")),
}


def training_rows(grid: pd.DataFrame, sources: tuple[str, ...]) -> np.ndarray:
    """bool[N]: the grid rows a recipe trains and validates on: every row of the listed
    engines (`source`), and the validation rows ("val") of any engine.

    >>> grid = pd.DataFrame({"source": ["espeak-ng", "flite", "flite"], "split": ["train", "train", "val"]})
    >>> training_rows(grid, ("espeak-ng",)).tolist()
    [True, False, True]
    """
    unknown = sorted(set(sources) - set(grid["source"]))
    if unknown:
        raise PipelineError(f"train_sources {', '.join(unknown)} has no voice in the grid; "
                         f"its engines: {', '.join(sorted(set(grid['source'])))}")
    return (grid["source"].isin(sources) | (grid["split"] == "val")).to_numpy(copy=True)


def embed_features(model: SubspaceModel, features: torch.Tensor, batch: int = 1024) -> dict[str, np.ndarray]:
    """Run a subspace model over pooled features float[N, L, D]: {subspace: float[N, size]}."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            for name, vectors in model(features[start : start + batch]).items():
                parts.setdefault(name, []).append(vectors.numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _stage(message: str) -> float:
    print(f"[demo] {message}", flush=True)
    return time.perf_counter()


def _layer_weights(model: SubspaceModel) -> dict[str, np.ndarray] | None:
    """The learned layer weights to plot: {label: float[L]}, or None for a fixed layer."""
    if isinstance(model.config.layer, int):
        return None
    weights = model.layer_weights.detach().numpy()
    if weights.ndim == 1:
        return {"shared mix": weights}
    return dict(zip(model.config.sizes, weights))


def run_demo(out_dir: str | Path, plan: DemoPlan = DemoPlan(), *, evaluate: bool = True) -> dict:
    """Run the default pipeline into `out_dir` and return the evaluation results
    (also written to out_dir/report/metrics.json); with `evaluate=False`, stop once the
    model is trained (out_dir/model) and return the stage timings only."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "plan.json", json.dumps(asdict(plan), indent=2, default=str) + "\n")
    timings = {}

    started = _stage("1/4 synthesising the interventional grid")
    voices = sample_voice_mix(plan.espeak_voices, plan.flite_voices, seed=plan.seed,
                              kokoro=plan.kokoro_voices, piper=plan.piper_voices)
    texts = sample_texts(load_texts(plan.texts), plan.num_texts, seed=plan.seed)
    synthesize_grid(voices, texts, out / "grid", val_voices=plan.val_voices, val_texts=plan.val_texts,
                    hold_out=plan.hold_out,
                    seed=plan.seed, channels=list(plan.channels), keep_mixed=False)
    timings["synth_s"] = time.perf_counter() - started

    started = _stage(f"2/4 extracting {plan.backbone} features of the grid")
    backbone = load_backbone(plan.backbone, precision=plan.precision)
    grid = read_manifest(out / "grid" / "manifest.csv")
    # mean and std are both kept (the std costs no backbone time), so benchmarks/levers.py
    # can compare poolings on the same features.
    extract_features(grid, backbone, out / "features-grid", pooling=STORED_POOLING)
    fsdd = read_fsdd(limit_per_speaker_digit=plan.fsdd_per_speaker_digit, seed=plan.seed)
    write_manifest(fsdd, out / "fsdd" / "manifest.csv")
    fsdd = read_manifest(out / "fsdd" / "manifest.csv")
    timings["extract_s"] = time.perf_counter() - started

    started = _stage("3/4 training the subspace model")
    keep = training_rows(grid, plan.train_sources)
    grid_features = load_features(out / "features-grid", grid, pooling=plan.train.pooling)[torch.from_numpy(keep)]
    train(grid_features, grid[keep].reset_index(drop=True), plan.train, out / "model",
          metadata={"backbone": backbone.name, "backbone_revision": backbone.revision, "demo_plan": "subspaces demo"})
    timings["train_s"] = time.perf_counter() - started
    if not evaluate:
        return {"timings": timings}

    started = _stage("4/4 evaluating on real speech (FSDD) and writing the report")
    results = evaluate_model(out / "model", fsdd, out / "features-fsdd", out / "report", backbone=backbone,
                             seed=plan.seed, title=f"FSDD (real speech) after training on a synthetic grid, {backbone.name}")
    timings["evaluate_s"] = time.perf_counter() - started
    results["timings"] = timings
    write_text_atomic(out / "report" / "timings.json", json.dumps(timings, indent=2) + "\n")
    print(summary_table(results))
    print(f"[demo] report: {out / 'report' / 'report.md'}")
    return results


def evaluate_model(
    model_dir: str | Path, corpus: pd.DataFrame, features_dir: str | Path, report_dir: str | Path, *,
    backbone: Backbone | None = None, max_trials: int | None = None, seed: int = 0, title: str = "Evaluation",
    baseline: bool = True, trial_list: pd.DataFrame | None = None, official_split: bool = False,
    store_manifest: pd.DataFrame | None = None, device: str = "cpu",
) -> dict:
    """Evaluate a trained model on a corpus manifest, beside every raw backbone layer and
    (when `baseline` and the package is installed) Resemblyzer's GE2E d-vector.

    Extracts the corpus' features with the model's backbone into `features_dir`
    (resumable; reused when finished; the d-vectors are cached there too), embeds them,
    scores every system on the same trials and probe folds, and writes the report into
    `report_dir`. `trial_list` (VoxCeleb-style, see `evaluate.trials_from_list`) replaces
    all-pairs trials; `official_split` makes the keyword probe use the corpus' own
    train/test split (Speech Commands). `store_manifest`: a manifest holding every row of
    `corpus` (and maybe more) whose features the store keeps, so that a subset can be
    scored without extracting again. Returns the results.
    """
    encoder = load_model(model_dir, backbone=backbone, device=device)
    model, backbone = encoder.model, encoder.backbone
    extract_features(corpus if store_manifest is None else store_manifest, backbone, features_dir,
                     pooling=STORED_POOLING)
    features = load_features(features_dir, corpus, pooling=model.config.pooling)
    ours = embed_features(model, features)
    systems = {f"ours: {name} subspace": vectors for name, vectors in ours.items()}
    raw = features[..., : backbone.width] if model.config.pooling == "mean+std" else features
    for layer in range(raw.shape[1]):
        systems[f"raw layer {layer}"] = raw[:, layer].numpy()
    notes = ""
    if baseline:
        from .baselines import RESEMBLYZER_INSTALL, resemblyzer_available, resemblyzer_embeddings_cached

        if resemblyzer_available():
            print("[evaluate] Resemblyzer (GE2E d-vector) baseline", flush=True)
            systems["Resemblyzer d-vector"] = resemblyzer_embeddings_cached(corpus, features_dir)
        else:
            notes = f"Resemblyzer baseline skipped: not installed (`{RESEMBLYZER_INSTALL}`). "
    results = evaluate_systems(systems, corpus, max_trials=max_trials, seed=seed, trial_list=trial_list,
                               official_split=official_split)
    if {"speaker", "content"} <= set(ours):
        results["cka_speaker_content"] = linear_cka(ours["speaker"], ours["content"])
        notes += f"Linear CKA between the speaker and content subspaces: {results['cka_speaker_content']:.3f}."
    write_report(
        results, report_dir, systems=systems, table=corpus,
        tsne_systems=tuple(f"ours: {name} subspace" for name in ours) + ("raw layer 0",),
        layer_weights=_layer_weights(model), layer_weights_learned=model.config.layer in (LAYER_MIX, LAYER_MIX_EACH),
        title=title, notes=notes,
    )
    return results


def evaluate_models(
    model_dirs: Sequence[str | Path], corpus: pd.DataFrame, out_dir: str | Path, *, name: str = "corpus",
    **options,
) -> tuple[list[dict], dict | None, str]:
    """`evaluate_model` for each model (e.g. one per seed) on one corpus, features in
    `out_dir/features` (extracted once). One model reports into `out_dir`; several into
    `out_dir/model-K`, plus `summary.json` and `summary.md` (mean +- std). `options` go to
    `evaluate_model`. Returns (every model's results, the mean +- std summary or None for
    one model, the Markdown table: the model's, or the summary's).
    """
    from .evaluate import summarize_runs

    out = Path(out_dir)
    runs = []
    for k, model in enumerate(model_dirs):
        report_dir = out if len(model_dirs) == 1 else out / f"model-{k}"
        print(f"[evaluate] {name}: model {k + 1}/{len(model_dirs)} {model}", flush=True)
        runs.append(evaluate_model(model, corpus, out / "features", report_dir, title=f"{name}: {model}", **options))
    if len(runs) == 1:
        return runs, None, summary_table(runs[0])
    summary, markdown = summarize_runs(runs)
    write_text_atomic(out / "summary.json",
                      json.dumps({"models": [str(m) for m in model_dirs], "systems": summary}, indent=2) + "\n")
    write_text_atomic(out / "summary.md", f"# {name}: {len(runs)} models\n\n{markdown}\n")
    return runs, summary, markdown


def calibrate_model(
    model_dir: str | Path, corpus: pd.DataFrame, *, subspace: str = "speaker", operating_point: str = "eer",
    max_trials: int | None = 200_000, seed: int = 0, data: str = "", allow_unfinished: bool = False,
    device: str = "cpu",
) -> dict:
    """Store a verification threshold for `subspace` in the model folder, chosen on the
    trials of a labelled corpus (all pairs, or a seeded sample of `max_trials`); with a
    `language` column, on its same-language trials only (see `evaluate`). The corpus must
    give at least `inference.MIN_TARGET_TRIALS` target and `MIN_NONTARGET_TRIALS`
    non-target trials; that is checked before any audio is embedded. `allow_unfinished`
    as in `load_model`.

    Returns the stored record (threshold, operating point, the data it came from, the
    trial counts, the miss and false-alarm rates reached there). `SubspaceEncoder.verify`
    then uses it.
    """
    from .evaluate import cosine_scores, make_trials
    from .inference import calibrate_threshold, check_trial_counts, load_model
    from .manifest import audio_paths

    encoder = load_model(model_dir, allow_unfinished=allow_unfinished, device=device)
    if subspace not in encoder.subspaces:
        raise PipelineError(f"{model_dir}: no subspace {subspace!r}; it has {', '.join(encoder.subspaces)}")
    trials = make_trials(corpus, max_trials=max_trials, seed=seed)
    kind = "trials"
    if "same_language" in trials.columns:
        same = trials[trials["same_language"]]
        if same["target"].any() and not same["target"].all():
            # Most pairs of a many-language corpus differ in language, which any system tells
            # apart: a threshold set on them would be too lenient for same-language audio.
            trials, kind = same.reset_index(drop=True), "same-language trials"
    description = (data + ", " if data else "") + f"{len(corpus)} utterances, {len(trials)} {kind}"
    targets = trials["target"].astype(bool)
    check_trial_counts(int(targets.sum()), int((~targets).sum()), f"{data or 'the corpus'} ({len(corpus)} utterances)")
    vectors = encoder.embed(audio_paths(corpus))
    scores = cosine_scores(vectors[subspace], trials)
    return calibrate_threshold(model_dir, scores, trials["target"].astype(int).to_numpy(), operating_point,
                               subspace=subspace, data=description)
