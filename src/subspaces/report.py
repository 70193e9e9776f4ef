"""The evaluation report: metrics.json, report.md and PNG plots a person can look at.

Plots: DET curves of every system on the same trials, score distributions (targets vs
non-targets), t-SNE maps of chosen systems coloured by speaker and by content, and the
model's learned layer weights when it mixes layers.
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


def plot_det(systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path) -> None:
    """DET curves (normal-deviate axes) of every system on the same trials."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6))
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    for name, embeddings in systems.items():
        p_fa, p_miss, _ = det_curve(cosine_scores(embeddings, trials), trials["target"].astype(int))
        ax.plot(_probit(p_fa), _probit(p_miss), label=name)
    ax.plot(_probit(ticks), _probit(ticks), color="grey", lw=0.5, ls=":")
    ax.set_xticks(_probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(_probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(_probit(0.005), _probit(0.6))
    ax.set_ylim(_probit(0.005), _probit(0.6))
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title("Speaker verification, DET")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path) -> None:
    """Histograms of target and non-target cosine scores, one panel per system."""
    plt = _plt()
    cols = min(3, len(systems))
    rows = int(np.ceil(len(systems) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    target = trials["target"].to_numpy()
    for ax, (name, embeddings) in zip(axes.flat, systems.items()):
        scores = cosine_scores(embeddings, trials)
        bins = np.linspace(scores.min(), scores.max(), 60)
        ax.hist(scores[~target], bins=bins, density=True, alpha=0.6, label="different speaker")
        ax.hist(scores[target], bins=bins, density=True, alpha=0.6, label="same speaker")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(systems):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
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
    notes: str = "", max_plot_trials: int = 50_000,
) -> Path:
    """Write `metrics.json`, `report.md` and the plots into `out_dir`; return the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(results, indent=2) + "\n")
    trials = make_trials(table, max_trials=max_plot_trials, seed=0)
    plot_det(systems, trials, out / "det.png")
    plot_scores(systems, trials, out / "scores.png")
    plots = ["det.png", "scores.png"]
    chosen = {name: systems[name] for name in tsne_systems if name in systems}
    if chosen:
        plot_tsne(chosen, table, out / "tsne.png")
        plots.append("tsne.png")
    if layer_weights is not None:
        plot_layer_weights(layer_weights, out / "layer_weights.png")
        plots.append("layer_weights.png")
    counts = results["trials"]
    lines = [
        f"# {title}", "",
        f"{results['utterances']} utterances, {results['speakers']} speakers, {results['contents']} contents; "
        f"{counts['total']:,} trials ({counts['targets']:,} same-speaker, {counts['content_matched']:,} content-matched).",
        "", "EER and accuracies in %. Speaker verification wants a low EER, and EER matched close to EER "
        "mismatched (a speaker embedding that carries content looks better on matched trials). "
        "Leakage: a content subspace should have a high EER and a speaker-ID probe near chance; a speaker "
        "subspace should have a keyword probe near chance.", "",
        summary_table(results), "",
    ]
    if notes:
        lines += [notes, ""]
    lines += [f"![{p}]({p})" for p in plots]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report
