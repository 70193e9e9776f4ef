"""The evaluation report: metrics.json, report.md and PNG plots a person can look at.

Plots: DET curves of every system on the same trials and score distributions (targets
vs non-targets), both on a bounded sample of pairs whatever the corpus size; t-SNE maps
of chosen systems coloured by speaker and by content; and the model's layer weights
(learned or fixed). Figures are drawn by Agg without pyplot, so writing reports neither
switches a caller's backend nor leaves figures open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .atomic import write_text_atomic
from .evaluate import cosine_scores, make_trials, summary_table
from .metrics import det_curve, eer_of_curve

__all__ = ["write_report"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**options) -> Figure:
    """A figure drawn by Agg and held only by its caller: it is never registered with pyplot,
    so nothing has to close it (it is freed once dropped, however many reports a suite
    writes) and a caller's own pyplot backend (a notebook's, say) is left as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(layout="constrained", **options)
    FigureCanvasAgg(figure)
    return figure


def _probit(p: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(np.clip(p, 1e-4, 1 - 1e-4))


def _legend_label(name: str, eer: float | None, where: str = "") -> str:
    return name if eer is None else f"{name} (EER {100 * eer:.1f} %{where})"


# DET axes from 0.1 % to 80 %: a content subspace (the one that should not verify) sits at
# an EER near 50 %, which a plot stopping at 40 % would leave off the chart.
_DET_TICKS = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8])
# Matplotlib's default cycle has 10 colours; systems 11-20 reuse them dashed, and so on.
_DET_STYLES = ("-", "--", ":", "-.")


def plot_det(
    systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path,
    eers: Mapping[str, float | None] | None = None, evaluated_trials: int | None = None,
) -> Figure:
    """DET curves (normal-deviate axes) of every system on the same trials (a bounded
    sample, see `write_report`); the legend shows each system's EER from `eers` (the
    evaluation's own, on `evaluated_trials` trials), or, for a system `eers` lacks, the EER
    of the plotted sample, marked so. Saves a PNG to `path` and returns the figure."""
    eers = eers or {}
    columns = 1 if len(systems) < 6 else 2
    fig = _figure(figsize=(6.5, 6.9 + 0.17 * np.ceil(len(systems) / columns)))
    ax = fig.subplots()
    target = trials["target"].to_numpy(dtype=bool)
    if target.any() and not target.all():
        for k, (name, embeddings) in enumerate(systems.items()):
            p_fa, p_miss, _ = det_curve(cosine_scores(embeddings, trials), target.astype(int))
            eer, where = eers.get(name), ""
            if eer is None:
                eer, where = eer_of_curve(p_fa, p_miss)[0], " on the plotted sample"
            ax.plot(_probit(p_fa), _probit(p_miss), color=f"C{k % 10}", ls=_DET_STYLES[k // 10 % len(_DET_STYLES)],
                    label=_legend_label(name, eer, where))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=columns,
                  frameon=False)
    else:
        kind = "same-speaker" if not target.any() else "different-speaker"
        ax.text(0.5, 0.5, f"no {kind} trials among the {len(trials):,} sampled", ha="center",
                transform=ax.transAxes)
    ends = _probit(_DET_TICKS[[0, -1]])
    ax.plot(ends, ends, color="grey", lw=0.5, ls=":")
    ax.set_xticks(_probit(_DET_TICKS), [f"{100 * t:g}" for t in _DET_TICKS])
    ax.set_yticks(_probit(_DET_TICKS), [f"{100 * t:g}" for t in _DET_TICKS])
    ax.set_xlim(*ends)
    ax.set_ylim(*ends)
    ax.set_aspect("equal")
    ax.grid(color="0.9", lw=0.5)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    subtitle = f"curves: a sample of {len(trials):,} trials ({int(target.sum()):,} same-speaker)"
    if evaluated_trials is not None and any(eers.get(name) is not None for name in systems):
        subtitle += f"\nEER in the legend: all {evaluated_trials:,} evaluated trials"
    ax.set_title(f"Speaker verification, DET (EER where a curve crosses the dotted diagonal)\n{subtitle}",
                 fontsize=9)
    fig.savefig(path, dpi=110)
    return fig


def plot_scores(systems: Mapping[str, np.ndarray], trials: pd.DataFrame, path: Path) -> Figure:
    """Histograms (densities) of target and non-target cosine scores on the same trials
    (a bounded sample, see `write_report`), one panel per system. Saves a PNG to `path`
    and returns the figure."""
    from matplotlib.patches import Patch

    cols = min(3, len(systems))
    rows = int(np.ceil(len(systems) / cols))
    fig = _figure(figsize=(4 * cols, 3 * rows + 0.7))
    axes = fig.subplots(rows, cols, squeeze=False)
    target = trials["target"].to_numpy(dtype=bool)
    groups = ((~target, "different speaker", "C0"), (target, "same speaker", "C1"))
    for ax, (name, embeddings) in zip(axes.flat, systems.items()):
        scores = cosine_scores(embeddings, trials)
        low, high = scores.min(), scores.max()
        if high - low < 1e-6:  # one score value: give the single bin some width
            low, high = low - 0.01, high + 0.01
        bins = np.linspace(low, high, 61)
        for chosen, label, colour in groups:
            if chosen.any():
                # One filled outline per histogram, not 60 bar patches: the same picture, drawn in
                # a fraction of the time (ten panels of bars took seconds).
                ax.hist(scores[chosen], bins=bins, density=True, alpha=0.55, color=colour, label=label,
                        histtype="stepfilled")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("cosine score", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(systems):]:
        ax.axis("off")
    handles = [Patch(color=colour, alpha=0.55, label=f"{label} ({int(chosen.sum()):,} trials)")
               for chosen, label, colour in groups]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Cosine score distributions, all trials: a sample of {len(trials):,} "
                 "(each class's histogram has area 1)", fontsize=9)
    fig.savefig(path, dpi=100)
    return fig


# tab10's ten colours are as many as stay distinct as small dots; further classes are drawn
# grey rather than given a colour again, so that one colour always means one class.
_MAX_COLOURED = 10
_OTHERS = "0.8"
_MAX_LABEL = 24


def _natural(value: str) -> list:
    """Sort key putting "2" before "10" and "speaker9" before "speaker10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", value)]


def _class_colours(values: pd.Series) -> tuple[dict[str, tuple], str]:
    """The colour of each of the (at most `_MAX_COLOURED`) most frequent classes, by name,
    and the legend title saying how many classes there are and what grey means."""
    from matplotlib import colormaps

    counts = values.value_counts()
    frequent = sorted(counts.index, key=lambda value: (-counts[value], _natural(value)))[:_MAX_COLOURED]
    colours = dict(zip(sorted(frequent, key=_natural), colormaps["tab10"].colors))
    if len(counts) <= _MAX_COLOURED:
        return colours, f"{values.name} ({len(counts)})"
    return colours, f"{values.name}: the {_MAX_COLOURED} most\nfrequent of {len(counts)} (rest grey)"


def plot_tsne(systems: Mapping[str, np.ndarray], table: pd.DataFrame, path: Path, seed: int = 0) -> Figure:
    """t-SNE of each system (rows), coloured by speaker (left) and by content (right).

    A class has one colour in every row, given in the legend beside each panel; past
    `_MAX_COLOURED` classes only the most frequent are coloured and the rest grey. Saves a
    PNG to `path` and returns the figure."""
    from matplotlib.lines import Line2D
    from sklearn.manifold import TSNE

    factors = ("speaker", "content")
    keys = {factor: _class_colours(table[factor].astype(str).rename(factor)) for factor in factors}
    # One drawing order for every panel, shuffled so that no class hides the others.
    order = np.random.default_rng(seed).permutation(len(table))
    fig = _figure(figsize=(12, 4 * len(systems) + 0.3))
    axes = fig.subplots(len(systems), 2, squeeze=False)
    for row, (name, embeddings) in enumerate(systems.items()):
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        perplexity = min(30.0, (len(unit) - 1) / 3)
        points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(unit)
        for col, factor in enumerate(factors):
            colours, title = keys[factor]
            values = table[factor].astype(str).to_numpy()[order]
            coloured = np.isin(values, list(colours))
            ax = axes[row, col]
            shown = order[~coloured]
            if len(shown):
                ax.scatter(points[shown, 0], points[shown, 1], color=_OTHERS, s=4, linewidths=0)
            shown = order[coloured]
            ax.scatter(points[shown, 0], points[shown, 1], color=[colours[v] for v in values[coloured]], s=6,
                       linewidths=0)
            handles = [Line2D([], [], ls="", marker="o", markersize=5, color=colour,
                              label=value if len(value) <= _MAX_LABEL else value[: _MAX_LABEL - 1] + "…")
                       for value, colour in colours.items()]
            ax.legend(handles=handles, title=title, title_fontsize=7, fontsize=7, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
            ax.set_title(f"{name}: coloured by {factor}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"t-SNE of {len(table):,} clips", fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def _one_hot(weights: np.ndarray) -> bool:
    return bool(np.isin(weights, (0.0, 1.0)).all() and weights.sum() == 1.0)


def plot_layer_weights(weights: Mapping[str, np.ndarray], path: Path, learned: bool | None = None) -> Figure:
    """Bar chart of the model's layer weights: {label: float[L]}, one bar group per backbone
    layer, centred on its tick (one label for a shared mix, one per subspace otherwise).

    `learned`: whether the model learns the weights (a softmax mix) or reads fixed layers;
    None reads it off the weights, fixed when every row is one-hot (a softmax never is).
    The title says which. Saves a PNG to `path` and returns the figure.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     figure = plot_layer_weights({"speaker": np.array([0., 1, 0]), "content": np.array([0., 0, 1])},
    ...                                 Path(folder) / "layer_weights.png")
    >>> figure.axes[0].get_title()
    'Fixed layer per subspace (not learned)'
    """
    rows = {label: np.asarray(values, dtype=float) for label, values in weights.items()}
    lengths = {len(values) for values in rows.values()}
    if len(lengths) != 1:
        raise ValueError(f"layer weights need one value per backbone layer in every row, got lengths "
                         f"{ {label: len(values) for label, values in rows.items()} }")
    if learned is None:
        learned = not all(_one_hot(values) for values in rows.values())
    layers = np.arange(lengths.pop())
    fig = _figure(figsize=(min(12.0, max(5.0, 0.25 * len(layers) * len(rows) + 2)), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for k, (label, values) in enumerate(rows.items()):
        if not learned:
            label = f"{label}: layer {int(np.argmax(values))}"
        ax.bar(layers + (k - (len(rows) - 1) / 2) * width, values, width=width, label=label)
    ax.set_xticks(layers, [str(layer) for layer in layers])
    ax.set_xlim(layers[0] - 0.6, layers[-1] + 0.6)
    if len(rows) > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    ax.set_xlabel("backbone hidden state (0 = input embedding)")
    ax.set_ylabel("weight")
    if learned:
        ax.set_title("Learned layer weights (softmax)" + (", one mix per subspace" if len(rows) > 1 else ""),
                     fontsize=10)
    else:
        ax.set_title("Fixed layer per subspace (not learned)" if len(rows) > 1 else "Fixed layer (not learned)",
                     fontsize=10)
    fig.savefig(path, dpi=100)
    return fig


def write_report(
    results: dict, out_dir: str | Path, *, systems: Mapping[str, np.ndarray], table: pd.DataFrame,
    tsne_systems: tuple[str, ...] = (), layer_weights: Mapping[str, np.ndarray] | None = None,
    layer_weights_learned: bool | None = None, title: str = "Evaluation",
    notes: str = "", max_plot_trials: int = 50_000, max_tsne_points: int = 5000,
) -> Path:
    """Write `metrics.json`, `report.md` and the plots into `out_dir`; return the report path.

    The DET and score plots use a seeded sample of at most `max_plot_trials` pairs of the
    manifest (`evaluate.make_trials`, which never lists all pairs), and t-SNE a seeded
    sample of at most `max_tsne_points` clips, so plotting costs about the same for 3,000
    clips as for 20,000; the EERs in the DET legend and the table are those of `results`.
    `layer_weights_learned` says whether `layer_weights` are learned (the plot's title);
    None reads it off the weights (see `plot_layer_weights`).

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
        plot_layer_weights(layer_weights, out / "layer_weights.png", learned=layer_weights_learned)
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
