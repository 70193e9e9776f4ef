"""Evaluation on planted embeddings: a speaker-only system verifies and fails the keyword
probe, a content-only system does the reverse, and content leakage shows up as a gap
between content-matched and content-mismatched EER."""

import numpy as np
import pandas as pd
import pytest

from subspaces.evaluate import evaluate_systems, linear_cka, make_trials, speaker_folds, summary_table, verification


@pytest.fixture
def grid():
    rng = np.random.default_rng(0)
    speakers, contents = [f"s{i}" for i in range(6)], [f"w{j}" for j in range(5)]
    rows = [(s, c) for s in speakers for c in contents for _ in range(4)]
    table = pd.DataFrame(rows, columns=["speaker", "content"])
    speaker_axis = {s: rng.normal(size=16) for s in speakers}
    content_axis = {c: rng.normal(size=16) for c in contents}
    noise = lambda: 0.3 * rng.normal(size=(len(table), 16))  # noqa: E731
    speaker_only = np.stack([speaker_axis[s] for s in table["speaker"]]) + noise()
    content_only = np.stack([content_axis[c] for c in table["content"]]) + noise()
    return table, speaker_only, content_only


def test_trials_cover_all_pairs_or_a_seeded_sample(grid):
    table = grid[0]
    trials = make_trials(table)
    assert len(trials) == len(table) * (len(table) - 1) // 2
    assert trials["target"].sum() == 6 * (20 * 19 // 2)
    sample = make_trials(table, max_trials=500, seed=1)
    assert len(sample) == 500 and sample.equals(make_trials(table, max_trials=500, seed=1))
    assert not sample.equals(make_trials(table, max_trials=500, seed=2))
    with pytest.raises(ValueError, match="at least 2"):
        make_trials(table.iloc[:1])


def test_speaker_and_content_systems_do_opposite_jobs(grid):
    table, speaker_only, content_only = grid
    results = evaluate_systems({"speaker": speaker_only, "content": content_only}, table)
    spk, con = results["systems"]["speaker"], results["systems"]["content"]
    assert spk["verification"]["all"]["eer"] < 0.02
    assert con["verification"]["all"]["eer"] > 0.3
    assert con["keyword"]["accuracy"] > 0.95
    assert spk["keyword"]["accuracy"] < 0.4  # chance is 0.2
    assert spk["speaker_id"]["accuracy"] > 0.95
    assert con["speaker_id"]["accuracy"] < 0.4
    assert results["trials"]["total"] == 120 * 119 // 2
    table_md = summary_table(results)
    assert table_md.count("\n") == 3 and "| speaker |" in table_md


def test_content_leakage_separates_matched_from_mismatched(grid):
    table, speaker_only, content_only = grid
    leaky = np.concatenate([speaker_only, 2.0 * content_only], axis=1)
    result = verification(leaky, make_trials(table))
    assert result["matched"]["eer"] < result["mismatched"]["eer"] - 0.05
    counts = result["matched"]["targets"] + result["mismatched"]["targets"]
    assert counts == result["all"]["targets"]


def test_keyword_probe_is_speaker_disjoint():
    assert [list(f) for f in speaker_folds(np.array(list("abcdefab")))] == [["a", "b"], ["c", "d"], ["e", "f"]]
    with pytest.raises(ValueError, match="more than 2 speakers"):
        speaker_folds(np.array(["a", "b"]))


def test_keyword_probe_on_a_full_grid_uses_every_class_in_every_fold(grid):
    from subspaces.evaluate import keyword_probe

    table, speaker_only, content_only = grid
    result = keyword_probe(content_only, table)
    assert result["classes_used"] == [5, 5, 5] and result["rows_dropped"] == [0, 0, 0]
    assert result["chance"] == 0.2 and "note" not in result
    assert sum(map(sum, result["confusion"])) == len(table)  # every clip tested once


def test_cka_and_input_checks(grid):
    table, speaker_only, content_only = grid
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))[0]
    assert linear_cka(speaker_only, speaker_only @ rotation) == pytest.approx(1.0)
    assert linear_cka(speaker_only, content_only) < 0.3
    with pytest.raises(ValueError, match="3 embeddings for 120 manifest rows"):
        evaluate_systems({"x": speaker_only[:3]}, table)
    zeros = np.zeros_like(speaker_only)
    with pytest.raises(ValueError, match="all-zero or non-finite"):
        verification(zeros, make_trials(table))


def test_trial_list_and_official_split(grid):
    from subspaces.evaluate import keyword_probe, trials_from_list

    table, speaker_only, content_only = grid
    table = table.assign(trial_path=[f"{s}/{i}.wav" for i, s in enumerate(table["speaker"])],
                         split=["train" if s in ("s0", "s1", "s2", "s3") else "test" for s in table["speaker"]])
    listed = pd.DataFrame({"label": [1, 0, 1], "enroll": ["s0/0.wav", "s0/0.wav", "s5/119.wav"],
                           "test": ["s0/1.wav", "s1/20.wav", "s5/100.wav"]})
    trials = trials_from_list(table, listed)
    assert trials[["enroll", "test"]].values.tolist() == [[0, 1], [0, 20], [119, 100]]
    assert trials["target"].tolist() == [True, False, True]
    results = evaluate_systems({"speaker": speaker_only}, table, trial_list=listed, official_split=True)
    assert results["trials"]["total"] == 3
    assert results["systems"]["speaker"]["keyword"]["folds"] and len(results["systems"]["speaker"]["keyword"]["folds"]) == 1
    assert keyword_probe(content_only, table, official_split=True)["accuracy"] > 0.95
    with pytest.raises(ValueError, match="not in the manifest, e.g. nobody/x.wav"):
        trials_from_list(table, listed.assign(test=["nobody/x.wav"] * 3))
    with pytest.raises(ValueError, match="needs rows of split 'train' and 'test'"):
        keyword_probe(content_only, table.assign(split="test"), official_split=True)
