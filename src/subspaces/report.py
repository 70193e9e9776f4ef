"""The evaluation report: metrics.json, report.md and PNG plots a person can look at.

Plots: DET curves of every system on the same trials and score distributions (targets
vs non-targets), both on a bounded sample of pairs whatever the corpus size; t-SNE maps
of chosen systems coloured by speaker and by content; and the model's learned layer
weights when it mixes layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .evaluate import cosine_scores, make_trials, summary_table
from .metrics import det_curve

__all__ = ["write_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _probit(p: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(np.clip(p, 1e-4, 1 - 1e-4))


def _legend_label(name: str, eer: float | None) -> str:
    return name if eer is None else f"{name} (EER {100 * eer:.1f} %)"


def plot_det(
    systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path,
    eers: Mapping[str, float | None] | None = None, evaluated_trials: int | None = None,
) -> None:
    """DET curves (normal-deviate axes) of every system on the same trials (a bounded
    sample, see `write_report`); the legend shows each system's EER from `eers` (the
    evaluation's own, on `evaluated_trials` trials), not the EER of the plotted sample."""
    plt = _plt()
    eers = eers or {}
    fig, ax = plt.subplots(figsize=(6.5, 6.5 + 0.18 * len(systems)))
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    target = trials["target"].to_numpy(dtype=bool)
    if target.any() and not target.all():
        for name, embeddings in systems.items():
            p_fa, p_miss, _ = det_curve(cosine_scores(embeddings, trials), target.astype(int))
            ax.plot(_probit(p_fa), _probit(p_miss), label=_legend_label(name, eers.get(name)))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1 if len(systems) < 6 else 2,
                  frameon=False)
    else:
        kind = "same-speaker" if not target.any() else "different-speaker"
        ax.text(0.5, 0.5, f"no {kind} trials among the {len(trials):,} sampled", ha="center",
                transform=ax.transAxes)
    ax.plot(_probit(ticks), _probit(ticks), color="grey", lw=0.5, ls=":")
    ax.set_xticks(_probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(_probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(_probit(0.001), _probit(0.6))
    ax.set_ylim(_probit(0.001), _probit(0.6))
    ax.grid(color="0.9", lw=0.5)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    subtitle = f"curves: a sample of {len(trials):,} trials ({int(target.sum()):,} same-speaker)"
    if evaluated_trials is not None and eers:
        subtitle += f"\nEER in the legend: all {evaluated_trials:,} evaluated trials"
    ax.set_title(f"Speaker verification, DET\n{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path) -> None:
    """Histograms (densities) of target and non-target cosine scores on the same trials
    (a bounded sample, see `write_report`), one panel per system."""
    plt = _plt()
    cols = min(3, len(systems))
    rows = int(np.ceil(len(systems) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows + 0.4), squeeze=False)
    target = trials["target"].to_numpy(dtype=bool)
    for ax, (name, embeddings) in zip(axes.flat, systems.items()):
        scores = cosine_scores(embeddings, trials)
        bins = np.linspace(scores.min(), scores.max(), 60)
        ax.hist(scores[~target], bins=bins, density=True, alpha=0.6, label="different speaker")
        ax.hist(scores[target], bins=bins, density=True, alpha=0.6, label="same speaker")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("cosine score", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("density", fontsize=8)
    for ax in list(axes.flat)[len(systems):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Score distributions on {len(trials):,} sampled trials ({int(target.sum()):,} same-speaker)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tsne(systems: Mapping[str, np.ndarray], table: pd.DataFrame, path: Path, seed: int = 0) -> None:
    """t-SNE of each system, coloured by speaker (left) and by content (right)."""
    from sklearn.manifold import TSNE

    plt = _plt()
    fig, axes = plt.subplots(len(systems), 2, figsize=(9, 4 * len(systems)), squeeze=False)
    for row, (name, embeddings) in enumerate(systems.items()):
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        perplexity = min(30.0, (len(unit) - 1) / 3)
        points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(unit)
        for col, factor in enumerate(("speaker", "content")):
            values = table[factor].astype(str)
            codes = pd.Categorical(values).codes
            ax = axes[row, col]
            ax.scatter(points[:, 0], points[:, 1], c=codes, cmap="tab10" if values.nunique() <= 10 else "tab20", s=6)
            ax.set_title(f"{name}: coloured by {factor}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layer_weights(weights: Mapping[str, np.ndarray], path: Path) -> None:
    """Bar chart of the model's softmax layer weights: {label: float[L]}, one bar group per
    backbone layer (one label for a shared mix, one per subspace for "mix-per-subspace")."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    width = 0.8 / len(weights)
    for k, (label, values) in enumerate(weights.items()):
        ax.bar(np.arange(len(values)) + k * width, values, width=width, label=label)
    if len(weights) > 1:
        ax.legend(fontsize=7)
    ax.set_xlabel("backbone hidden state (0 = input embedding)")
    ax.set_ylabel("weight")
    ax.set_title("Learned layer weights")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    results: dict, out_dir: str | Path, *, systems: Mapping[str, np.ndarray], table: pd.DataFrame,
    tsne_systems: tuple[str, ...] = (), layer_weights: Mapping[str, np.ndarray] | None = None,
    title: str = "Evaluation",
    notes: str = "", max_plot_trials: int = 50_000, max_tsne_points: int = 5000,
) -> Path:
    """Write `metrics.json`, `report.md` and the plots into `out_dir`; return the report path.

    The DET and score plots use a seeded sample of at most `max_plot_trials` pairs of the
    manifest (`evaluate.make_trials`, which never lists all pairs), and t-SNE a seeded
    sample of at most `max_tsne_points` clips, so plotting costs about the same for 3,000
    clips as for 20,000; the EERs in the DET legend and the table are those of `results`.

    >>> import tempfile
    >>> table = pd.DataFrame({"speaker": list("aabbcc"), "content": list("xyxyxy")})
    >>> vectors = {"toy": np.array([[1, .1, 0], [1, -.1, 0], [0, 1, .1], [0, 1, -.1], [.1, 0, 1], [-.1, 0, 1]])}
    >>> from subspaces.evaluate import evaluate_systems
    >>> results = evaluate_systems(vectors, table, progress=False)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     print(write_report(results, folder, systems=vectors, table=table).read_text().splitlines()[0])
    # Evaluation
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(results, indent=2) + "\n")
    trials = make_trials(table, max_trials=max_plot_trials, seed=0)
    eers = {name: entry["verification"]["all"]["eer"] for name, entry in results["systems"].items()}
    counts = results["trials"]
    plot_det(systems, trials, out / "det.png", eers=eers, evaluated_trials=counts["total"])
    plot_scores(systems, trials, out / "scores.png")
    plots = ["det.png", "scores.png"]
    chosen = {name: systems[name] for name in tsne_systems if name in systems}
    if chosen:
        rows = np.arange(len(table))
        if len(rows) > max_tsne_points:
            rows = np.sort(np.random.default_rng(0).choice(len(rows), size=max_tsne_points, replace=False))
        plot_tsne({name: np.asarray(v)[rows] for name, v in chosen.items()}, table.iloc[rows], out / "tsne.png")
        plots.append("tsne.png")
    if layer_weights is not None:
        plot_layer_weights(layer_weights, out / "layer_weights.png")
        plots.append("layer_weights.png")
    languages = ""
    if "same_language" in counts:
        languages = (f"; {counts['same_language']:,} same-language and {counts['cross_language']:,} "
                     "cross-language")
    lines = [
        f"# {title}", "",
        f"{results['utterances']} utterances, {results['speakers']} speakers, {results['contents']} contents; "
        f"{counts['total']:,} trials ({counts['targets']:,} same-speaker, {counts['content_matched']:,} "
        f"content-matched{languages}).",
        "", "EER and accuracies in %. Speaker verification wants a low EER, and EER matched close to EER "
        "mismatched (a speaker embedding that carries content looks better on matched trials). "
        + ("Same-lang: both clips in one language, so impostors speak it too; cross-lang: the clips are "
           "in different languages, so a target is one person in two languages. "
           if languages else "")
        + "Leakage: a content subspace should have a high EER and a speaker-ID probe near chance; a speaker "
        "subspace should have a keyword probe near chance. "
        f"Plots: a sample of {len(trials):,} of the manifest's pairs.", "",
        summary_table(results), "",
    ]
    probe_notes = {entry["keyword"]["note"] for entry in results["systems"].values()
                   if "note" in entry.get("keyword", {})}
    lines += [f"Keyword probe: {note}." for note in sorted(probe_notes)] + ([""] if probe_notes else [])
    if notes:
        lines += [notes, ""]
    lines += [f"![{p}]({p})" for p in plots]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report
