"""Evaluation that scales: all pairs streamed into score histograms (checked against the
exact metrics), pair sampling that never lists all pairs, same- and cross-language trial
groups counted by hand, and a keyword probe restricted to the classes both sides of a
fold speak."""

import re
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from subspaces.evaluate import (
    SCORE_BINS,
    cosine_scores,
    evaluate_systems,
    keyword_probe,
    make_trials,
    speaker_folds,
    summarize_runs,
    summary_table,
    verification,
    verification_all_pairs,
)
from subspaces.metrics import eer, min_dcf

@pytest.fixture
def corpus():
    """300 clips of 15 speakers (3 languages; speaker 3 speaks two), 8 words, and
    embeddings with a speaker component and noise (EER around 10 %)."""
    rng = np.random.default_rng(0)
    speaker = rng.integers(0, 15, 300)
    language = [["en", "fr", "de"][s % 3] if s != 3 else ["en", "fr"][i % 2] for i, s in enumerate(speaker)]
    table = pd.DataFrame({"speaker": [f"s{s:02d}" for s in speaker],
                          "content": [f"w{c}" for c in rng.integers(0, 8, 300)], "language": language})
    embeddings = rng.normal(size=(15, 64))[speaker] + 1.5 * rng.normal(size=(300, 64))
    return table, embeddings


def test_streamed_metrics_are_the_exact_metrics_of_scores_rounded_to_the_grid(corpus):
    table, embeddings = corpus
    bins = 64  # coarse, so a wrong bin edge or group would show
    streamed = verification_all_pairs(embeddings, table, bins=bins)
    trials = make_trials(table)
    rounded = -1 + np.floor((cosine_scores(embeddings, trials) + 1) * bins / 2) * 2 / bins
    target = trials["target"].to_numpy()
    groups = {"all": np.ones(len(trials), bool), "matched": trials["same_content"].to_numpy(),
              "mismatched": ~trials["same_content"].to_numpy(), "same_language": trials["same_language"].to_numpy(),
              "cross_language": trials["cross_language"].to_numpy()}
    assert set(streamed) == set(groups)
    for group, mask in groups.items():
        labels = target[mask].astype(int)
        assert streamed[group]["targets"] == labels.sum()
        assert streamed[group]["nontargets"] == len(labels) - labels.sum()
        assert streamed[group]["eer"] == pytest.approx(eer(rounded[mask], labels), abs=1e-12)
        for p in (0.01, 0.05):
            exact = min_dcf(rounded[mask], labels, p_target=p)
            assert streamed[group][f"min_dcf_{p}"] == pytest.approx(exact, abs=1e-12)


def test_streamed_metrics_equal_exact_all_pairs_metrics_within_the_bin_resolution(corpus):
    table, embeddings = corpus
    streamed = verification_all_pairs(embeddings, table)
    trials = make_trials(table)
    exact = verification(embeddings, trials)
    scores = cosine_scores(embeddings, trials)
    assert set(streamed) == set(exact) == {"all", "matched", "mismatched", "same_language", "cross_language"}
    target = trials["target"].to_numpy()
    binned = np.floor((scores + 1) * SCORE_BINS / 2).astype(int)
    for group in exact:
        assert streamed[group]["targets"] == exact[group]["targets"] > 0
        assert streamed[group]["nontargets"] == exact[group]["nontargets"] > 0
        # The rates can only differ through the trials in one bin (the operating point's),
        # plus a trial whose float32 score lands in the neighbouring bin.
        mask = np.ones(len(trials), bool) if group == "all" else {
            "matched": trials["same_content"], "mismatched": ~trials["same_content"],
            "same_language": trials["same_language"], "cross_language": trials["cross_language"]}[group].to_numpy()
        n_target, n_nontarget = exact[group]["targets"], exact[group]["nontargets"]
        in_bin_t = np.bincount(binned[mask & target]).max() / n_target + 1 / n_target
        in_bin_n = np.bincount(binned[mask & ~target]).max() / n_nontarget + 1 / n_nontarget
        assert abs(streamed[group]["eer"] - exact[group]["eer"]) <= 2 * (in_bin_t + in_bin_n)
        for p in (0.01, 0.05):
            bound = (p * in_bin_t + (1 - p) * in_bin_n) / min(p, 1 - p)
            assert abs(streamed[group][f"min_dcf_{p}"] - exact[group][f"min_dcf_{p}"]) <= bound
    assert streamed["all"]["eer"] == pytest.approx(exact["all"]["eer"], abs=1e-3)


def test_streaming_in_many_small_blocks_counts_every_pair_once(corpus):
    table, embeddings = corpus
    one_block = verification_all_pairs(embeddings, table, block_pairs=10**6)
    many = verification_all_pairs(embeddings, table, block_pairs=1000)  # 3 rows a block
    assert many == one_block
    assert many["all"]["targets"] + many["all"]["nontargets"] == 300 * 299 // 2


def test_sampled_trials_are_distinct_ordered_seeded_and_never_list_all_pairs():
    table = pd.DataFrame({"speaker": [f"s{i % 1000}" for i in range(200_000)], "content": "x"})
    tracemalloc.start()
    sample = make_trials(table, max_trials=1000, seed=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20  # all 2e10 pairs would be 320 GB of indices
    pairs = sample[["enroll", "test"]].to_numpy()
    assert len(sample) == 1000 and len(np.unique(pairs, axis=0)) == 1000
    assert (pairs[:, 0] < pairs[:, 1]).all() and (pairs[:, 1] < 200_000).all()
    assert np.array_equal(pairs, np.unique(pairs, axis=0))  # row-major order, like all pairs
    assert sample.equals(make_trials(table, max_trials=1000, seed=3))
    assert not sample.equals(make_trials(table, max_trials=1000, seed=4))
    assert (sample["target"] == (sample["enroll"] % 1000 == sample["test"] % 1000)).all()


def test_sampled_trials_are_uniform_over_pairs():
    table = pd.DataFrame({"speaker": list("abcdefghij"), "content": "x"})
    counts = np.zeros((10, 10))
    for seed in range(1000):
        sample = make_trials(table, max_trials=20, seed=seed)  # 20 of the 45 pairs
        np.add.at(counts, (sample["enroll"], sample["test"]), 1)
    frequency = counts[np.triu_indices(10, k=1)] / 1000
    assert np.abs(frequency - 20 / 45).max() < 0.07  # 4.5 standard deviations
    dense = make_trials(table, max_trials=40, seed=0)  # more than half the pairs
    assert len(dense) == 40 and not dense.duplicated(["enroll", "test"]).any()
    with pytest.raises(ValueError, match="max_trials must be at least 1.*got 0"):
        make_trials(table, max_trials=0)


@pytest.fixture
def eight_rows():
    """A speaks en, en, fr; B en, en; C fr, fr; D has no language label."""
    return pd.DataFrame({"speaker": list("AAABBCCD"), "content": list("xyxyxyxy"),
                         "language": ["en", "en", "fr", "en", "en", "fr", "fr", ""]})


def test_same_and_cross_language_groups_counted_by_hand(eight_rows):
    # Same-language pairs: en rows {0, 1, 3, 4} give 6, fr rows {2, 5, 6} give 3; targets
    # among them (0,1) A, (3,4) B, (5,6) C. The 7 labelled rows make 21 pairs, so 12
    # cross-language ones; targets (0,2) and (1,2), both A. Row 7's pairs are in neither.
    language_only = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0],
                              [0.0, 1.0], [1.0, 1.0]])
    results = evaluate_systems({"language only": language_only}, eight_rows, progress=False)
    assert results["trials"] == {"total": 28, "targets": 5, "content_matched": 12,
                                 "same_language": 9, "cross_language": 12}
    for result in (results["systems"]["language only"]["verification"],
                   verification(language_only, make_trials(eight_rows))):
        assert (result["same_language"]["targets"], result["same_language"]["nontargets"]) == (3, 6)
        assert (result["cross_language"]["targets"], result["cross_language"]["nontargets"]) == (2, 10)
        # Language passes for speaker over all trials: targets score 1 (3) or 0 (A's 2
        # cross-language ones); non-targets 1 (6), 0.707 (row 7's 7) or 0 (10). p_miss is
        # 2/5 from threshold 0.707 to 1, where p_fa falls from 13/23 to 6/23: EER 0.4.
        # Not among same-language trials (every score 1: chance), nor across languages.
        assert result["all"]["eer"] == pytest.approx(0.4)
        assert result["same_language"]["eer"] == pytest.approx(0.5)
        assert result["cross_language"]["eer"] == pytest.approx(0.5)
    table_md = summary_table(results)
    assert "| EER same-lang | EER cross-lang |" in table_md and "| 50.0 | 50.0 |" in table_md


def test_a_language_group_without_targets_is_none_but_counted(eight_rows):
    table = eight_rows.drop(index=2).reset_index(drop=True)  # A no longer speaks French
    vectors = np.random.default_rng(0).normal(size=(len(table), 4))
    result = evaluate_systems({"x": vectors}, table, progress=False)
    cross = result["systems"]["x"]["verification"]["cross_language"]
    assert cross == {"targets": 0, "nontargets": 8, "eer": None, "min_dcf_0.01": None, "min_dcf_0.05": None}
    assert result["trials"]["cross_language"] == 8
    assert "| - |" in summary_table(result)


def test_one_language_or_none_keeps_the_old_groups_and_table(eight_rows):
    vectors = np.random.default_rng(0).normal(size=(8, 4))
    for table in (eight_rows.drop(columns="language"), eight_rows.assign(language="en")):
        result = evaluate_systems({"x": vectors}, table, progress=False)
        assert set(result["systems"]["x"]["verification"]) == {"all", "matched", "mismatched"}
        assert "same_language" not in result["trials"]
        assert "same-lang" not in summary_table(result)
        assert "same-lang" not in summarize_runs([result])[1]


def test_summarize_runs_includes_language_metrics_only_when_every_run_has_them(eight_rows):
    vectors = np.random.default_rng(0).normal(size=(8, 4))
    with_languages = evaluate_systems({"x": vectors}, eight_rows, progress=False)
    without = evaluate_systems({"x": vectors}, eight_rows.drop(columns="language"), progress=False)
    summary, markdown = summarize_runs([with_languages, with_languages])
    assert summary["x"]["EER same-lang"][1] == 0.0 and "EER cross-lang" in markdown
    summary, markdown = summarize_runs([with_languages, without])
    assert "EER same-lang" not in summary["x"] and "same-lang" not in markdown


def test_clips_without_content_are_never_content_matched():
    table = pd.DataFrame({"speaker": list("abab"), "content": ["x", "x", "", ""]})  # only (0, 1) is matched
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    streamed = verification_all_pairs(vectors, table)
    assert streamed["matched"]["targets"] + streamed["matched"]["nontargets"] == 1
    assert streamed == verification(vectors, make_trials(table))
    assert make_trials(table)["same_content"].tolist() == [True, False, False, False, False, False]
    assert evaluate_systems({"v": vectors}, table, progress=False)["trials"]["content_matched"] == 1


@pytest.fixture
def words():
    """Six speakers a-f say "one" and "two" twice each; only e and f also say "three"."""
    rows = [(s, w) for s in "abcdef" for w in ("one", "two", "three") if w != "three" or s in "ef" for _ in range(2)]
    table = pd.DataFrame(rows, columns=["speaker", "content"])
    axis = {"one": [1.0, 0, 0], "two": [0, 1.0, 0], "three": [0, 0, 1.0]}
    vectors = np.array([axis[w] for w in table["content"]]) + 0.05 * np.random.default_rng(0).normal(size=(28, 3))
    return table, vectors


def test_keyword_probe_uses_only_classes_both_sides_of_a_fold_speak(words):
    table, vectors = words
    result = keyword_probe(vectors, table)
    # Folds test on {a, b}, {c, d}, {e, f}. In the first two, "three" is spoken only by
    # training speakers (e, f: 4 rows dropped); in the last only by test speakers.
    assert result["classes_used"] == [2, 2, 2]
    assert result["rows_dropped"] == [4, 4, 4]
    assert result["accuracy"] == 1.0 and result["folds"] == [1.0, 1.0, 1.0]
    assert result["chance"] == 0.5 and "note" not in result
    confusion = pd.DataFrame(result["confusion"], index=result["labels"], columns=result["labels"])
    assert confusion.loc["three"].sum() == 0 and confusion["three"].sum() == 0  # never trained on, never tested
    assert np.trace(confusion.to_numpy()) == 8 + 8 + 8  # a-d's 4 rows per pair of speakers, e-f's one/two rows


def test_keyword_probe_without_shared_classes_has_no_accuracy():
    # One language per speaker, as in KLettres: no word is said on both sides of a fold.
    rows = [(s, f"{s}:{w}") for s in "abcdef" for w in ("A", "B", "C") for _ in range(2)]
    table = pd.DataFrame(rows, columns=["speaker", "content"])
    vectors = np.random.default_rng(0).normal(size=(len(table), 6))
    result = keyword_probe(vectors, table)
    assert result["accuracy"] is None and result["chance"] is None
    assert result["folds"] == [None, None, None] and result["classes_used"] == [0, 0, 0]
    assert "no fold has at least 2 content classes" in result["note"] and "0, 0, 0" in result["note"]
    results = evaluate_systems({"x": vectors}, table, progress=False)
    assert results["systems"]["x"]["keyword"]["accuracy"] is None
    row = [line for line in summary_table(results).splitlines() if line.startswith("| x |")][0]
    assert row.split(" | ")[-2] == "-"  # keyword acc
    assert "keyword acc" not in summarize_runs([results])[0]["x"]


def test_many_speakers_give_at_most_five_folds_that_test_everyone_once():
    names = np.array([f"spk{i:02d}" for i in range(50)])
    folds = speaker_folds(names)
    assert [len(fold) for fold in folds] == [10] * 5
    assert sorted(np.concatenate(folds).tolist()) == sorted(names.tolist())
    assert [fold.tolist() for fold in speaker_folds(names[:6])] == [["spk00", "spk01"], ["spk02", "spk03"],
                                                                     ["spk04", "spk05"]]
    assert len(speaker_folds(names[:10])) == 5 and len(speaker_folds(names[:12])) == 5
    assert [len(fold) for fold in speaker_folds(names[:12])] == [3, 3, 2, 2, 2]


def test_each_stage_prints_a_timed_progress_line(words, capsys):
    table, vectors = words
    evaluate_systems({"first": vectors, "second": 2 * vectors}, table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[evaluate] 2 system(s), 28 utterances, 378 trials (all pairs, streamed)"
    pattern = r"\[evaluate\] system (\d)/2 (first|second): (verification|keyword probe|speaker-ID probe) \d+\.\d s"
    systems = [re.fullmatch(pattern, line).groups()[:2] for line in lines[1:]]
    assert systems == [("1", "first")] * 3 + [("2", "second")] * 3
    evaluate_systems({"first": vectors}, table, progress=False)
    assert capsys.readouterr().out == ""


def test_a_sample_of_pairs_is_scored_exactly_and_reported_as_such(corpus, capsys):
    table, embeddings = corpus
    results = evaluate_systems({"x": embeddings}, table, max_trials=5000, seed=1, probes=False)
    trials = make_trials(table, max_trials=5000, seed=1)
    assert results["trials"]["total"] == 5000 and "keyword" not in results["systems"]["x"]
    assert results["systems"]["x"]["verification"] == verification(embeddings, trials)
    assert "5,000 trials (sampled pairs (seed 1))" in capsys.readouterr().out


def test_report_plots_a_bounded_sample_and_names_language_groups(corpus, tmp_path):
    from subspaces.report import write_report

    table, embeddings = corpus
    results = evaluate_systems({"x": embeddings}, table, probes=False, progress=False)
    report = write_report(results, tmp_path, systems={"x": embeddings}, table=table, max_plot_trials=2000)
    text = report.read_text()
    assert "same-language" in text and "| EER same-lang |" in text and "a sample of 2,000" in text
    assert (tmp_path / "det.png").stat().st_size > 1000 and (tmp_path / "scores.png").stat().st_size > 1000


def test_same_language_trials_keep_only_languages_of_two_or_more_speakers():
    # en: speakers a, b (contested); de: speaker c alone; fr: speaker d alone. c's and d's
    # own pairs are same-speaker pairs within one language, but no impostor speaks their
    # language: they are in no language group (pooling them would compare de targets with
    # en impostors). Cross-language pairs are unchanged.
    table = pd.DataFrame({"speaker": list("aabbccdd"), "content": list("xyxyxyxy"),
                          "language": ["en"] * 4 + ["de"] * 2 + ["fr"] * 2})
    vectors = np.random.default_rng(1).normal(size=(8, 3))
    for result in (verification_all_pairs(vectors, table), verification(vectors, make_trials(table))):
        assert (result["same_language"]["targets"], result["same_language"]["nontargets"]) == (2, 4)
        assert (result["cross_language"]["targets"], result["cross_language"]["nontargets"]) == (0, 20)
    counts = evaluate_systems({"x": vectors}, table, progress=False, probes=False)["trials"]
    assert counts["same_language"] == 6 and counts["cross_language"] == 20 and counts["total"] == 28
