"""The report's plots read on their own: a t-SNE colour means one class in every panel and
a legend says which, histograms have labelled axes, the layer-weight title says whether
the weights are learned and the bars sit on their layer ticks, every DET legend entry
gives an EER, and no figure is left open after saving."""

import gc
import weakref

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from subspaces.evaluate import evaluate_systems, make_trials
from subspaces.report import plot_det, plot_layer_weights, plot_scores, plot_tsne, write_report


def _corpus(speakers: int, contents: int, per: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [(f"spk{s}", f"w{c}") for s in range(speakers) for c in range(contents) for _ in range(per)]
    table = pd.DataFrame(rows, columns=["speaker", "content"])
    speaker_axis = {s: rng.normal(size=8) for s in table["speaker"].unique()}
    content_axis = {c: rng.normal(size=8) for c in table["content"].unique()}
    speaker = np.stack([speaker_axis[s] for s in table["speaker"]]) + 0.3 * rng.normal(size=(len(table), 8))
    content = np.stack([content_axis[c] for c in table["content"]]) + 0.3 * rng.normal(size=(len(table), 8))
    return table, {"speaker system": speaker, "content system": content}


def _legend_colours(ax) -> dict[str, tuple]:
    legend = ax.get_legend()
    assert legend is not None, f"panel {ax.get_title()!r} has no legend"
    return {text.get_text(): to_rgba(handle.get_color())
            for text, handle in zip(legend.get_texts(), legend.legend_handles)}


def _drawn_colours(ax) -> set[tuple]:
    return {tuple(colour) for collection in ax.collections for colour in collection.get_facecolors()}


def test_tsne_gives_a_class_one_colour_in_every_panel_and_a_legend_naming_it(tmp_path):
    table, systems = _corpus(speakers=3, contents=4, per=3)
    figure = plot_tsne(systems, table, tmp_path / "tsne.png")
    assert (tmp_path / "tsne.png").stat().st_size > 0
    axes = np.array(figure.axes).reshape(len(systems), 2)
    for col, (factor, classes) in enumerate((("speaker", 3), ("content", 4))):
        keys = [_legend_colours(ax) for ax in axes[:, col]]
        assert sorted(keys[0]) == sorted(table[factor].unique())
        assert all(key == keys[0] for key in keys), f"{factor}: a class changes colour between rows"
        assert len(set(keys[0].values())) == classes, f"{factor}: two classes share a colour"
        assert f"({classes})" in axes[0, col].get_legend().get_title().get_text()
        for ax in axes[:, col]:
            assert _drawn_colours(ax) == set(keys[0].values())


def test_tsne_with_many_classes_colours_ten_and_says_the_rest_are_grey(tmp_path):
    table, systems = _corpus(speakers=12, contents=2, per=3)
    table.loc[table["speaker"] == "spk11", "speaker"] = "spk0"  # spk0 the most frequent of 11
    figure = plot_tsne({"speaker system": systems["speaker system"]}, table, tmp_path / "tsne.png")
    key = _legend_colours(figure.axes[0])
    assert len(key) == 10 and "spk0" in key
    assert "10 most" in figure.axes[0].get_legend().get_title().get_text()
    assert "of 11" in figure.axes[0].get_legend().get_title().get_text()
    grey = to_rgba("0.8")
    assert grey in _drawn_colours(figure.axes[0]) and grey not in key.values()


def test_score_histograms_label_both_axes_and_name_system_and_trials(tmp_path):
    table, systems = _corpus(speakers=3, contents=4, per=2)
    systems["third"] = systems["speaker system"] + systems["content system"]
    systems["fourth"] = -systems["third"]
    figure = plot_scores(systems, make_trials(table), tmp_path / "scores.png")
    panels = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == list(systems)
    for ax in panels:
        assert ax.get_xlabel() == "cosine score" and ax.get_ylabel() == "density"
    assert "all trials" in figure.get_suptitle()
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert any(label.startswith("same speaker") for label in labels)
    assert any(label.startswith("different speaker") for label in labels)


def test_score_histograms_survive_trials_of_one_class(tmp_path):
    table, systems = _corpus(speakers=1, contents=4, per=2)
    plot_scores(systems, make_trials(table), tmp_path / "scores.png")
    assert (tmp_path / "scores.png").stat().st_size > 0


@pytest.mark.parametrize(("weights", "learned", "word"), [
    ({"speaker": [0.0, 1, 0, 0], "content": [0.0, 0, 0, 1]}, None, "Fixed"),
    ({"shared mix": [0.1, 0.2, 0.3, 0.4]}, None, "Learned"),
    ({"speaker": [0.1, 0.6, 0.2, 0.1], "content": [0.4, 0.1, 0.1, 0.4]}, None, "Learned"),
    ({"shared mix": [0.0, 1, 0, 0]}, True, "Learned"),  # a saturated softmax, said so by the caller
])
def test_layer_weights_title_says_learned_or_fixed(tmp_path, weights, learned, word):
    figure = plot_layer_weights({k: np.array(v) for k, v in weights.items()}, tmp_path / "lw.png", learned=learned)
    title = figure.axes[0].get_title()
    assert title.startswith(word)
    assert ("not learned" in title) == (word == "Fixed")


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_layer_weight_bars_are_centred_on_their_layer_ticks(tmp_path, rows):
    weights = {f"row{k}": np.random.default_rng(k).dirichlet(np.ones(5)) for k in range(rows)}
    ax = plot_layer_weights(weights, tmp_path / "lw.png").axes[0]
    ticks = ax.get_xticks()
    assert ticks.tolist() == [0, 1, 2, 3, 4]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    centres = np.array([bar.get_x() + bar.get_width() / 2 for bar in ax.patches]).reshape(rows, 5)
    assert np.allclose(centres.mean(axis=0), ticks)
    if rows == 1:
        assert np.allclose(centres[0], ticks)


def test_layer_weights_of_unequal_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one value per backbone layer"):
        plot_layer_weights({"a": np.ones(3) / 3, "b": np.ones(4) / 4}, tmp_path / "lw.png")


def test_det_legend_gives_every_system_its_eer(tmp_path):
    table, systems = _corpus(speakers=3, contents=4, per=2)
    trials = make_trials(table)
    given = plot_det(systems, trials, tmp_path / "det.png", eers={"speaker system": 0.123, "content system": 0.456},
                     evaluated_trials=len(trials))
    texts = [text.get_text() for text in given.axes[0].get_legend().get_texts()]
    assert texts == ["speaker system (EER 12.3 %)", "content system (EER 45.6 %)"]
    sampled = plot_det(systems, trials, tmp_path / "det.png")
    texts = [text.get_text() for text in sampled.axes[0].get_legend().get_texts()]
    assert len(texts) == 2 and all("EER" in text and "plotted sample" in text for text in texts)


def test_det_lines_stay_apart_past_ten_systems(tmp_path):
    table, systems = _corpus(speakers=3, contents=4, per=2)
    many = {f"system {k}": systems["speaker system"] + k * systems["content system"] for k in range(12)}
    lines = plot_det(many, make_trials(table), tmp_path / "det.png").axes[0].get_lines()[:12]
    styles = {(line.get_color(), line.get_linestyle()) for line in lines}
    assert len(styles) == 12


def test_write_report_leaves_no_figure_open_and_passes_on_learned(tmp_path, monkeypatch):
    table, systems = _corpus(speakers=3, contents=3, per=3)
    results = evaluate_systems(systems, table, progress=False)
    saved: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), save(self, *a, **k))[1])
    open_before = plt.get_fignums()
    write_report(results, tmp_path, systems=systems, table=table, tsne_systems=("speaker system",),
                 layer_weights={"shared mix": np.array([0.0, 1.0, 0.0])}, layer_weights_learned=True)
    for name in ("det.png", "scores.png", "tsne.png", "layer_weights.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert plt.get_fignums() == open_before
    assert len(saved) == 4 and saved[-1].axes[0].get_title().startswith("Learned")
    alive = [weakref.ref(figure) for figure in saved]
    saved.clear()
    gc.collect()
    assert all(ref() is None for ref in alive), "a saved figure is still referenced somewhere"
