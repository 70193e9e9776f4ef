"""Verification metrics against values worked out by hand, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from subspaces.metrics import as_norm, det_curve, eer, eer_with_threshold, min_dcf, s_norm


def trials(targets, nontargets):
    scores = np.array(list(targets) + list(nontargets), dtype=float)
    labels = np.array([1] * len(targets) + [0] * len(nontargets))
    return scores, labels


def test_det_curve_by_hand():
    # targets 0.9 0.8 0.7 0.4 | non-targets 0.6 0.3 0.2 0.1
    scores, labels = trials([0.9, 0.8, 0.7, 0.4], [0.6, 0.3, 0.2, 0.1])
    p_fa, p_miss, thresholds = det_curve(scores, labels)
    assert thresholds.tolist() == [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, np.inf]
    assert p_fa.tolist() == [1.0, 0.75, 0.5, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]
    assert p_miss.tolist() == [0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 0.75, 1.0]


def test_eer_exact_crossing():
    # At threshold 0.6 one target (0.4) is missed and one non-target (0.6) accepted: 1/4 each.
    scores, labels = trials([0.9, 0.8, 0.7, 0.4], [0.6, 0.3, 0.2, 0.1])
    assert eer_with_threshold(scores, labels) == (0.25, 0.6)


def test_eer_interpolated_between_points():
    # 2 targets, 4 non-targets. At t=0.5: miss 0, fa 1/4 (gap -1/4); at t=0.6: miss 1/2, fa 1/4
    # (gap +1/4). Half way: miss = fa = 1/4, threshold 0.55.
    scores, labels = trials([0.9, 0.5], [0.6, 0.4, 0.2, 0.1])
    rate, threshold = eer_with_threshold(scores, labels)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.55)


def test_eer_with_ties_is_order_free():
    # Two targets and two non-targets tie at 0.5.  Points (p_miss, p_fa):
    # t=0.3: (1/4, 3/4); t=0.5: (1/4, 1/2), gap -1/4; t=0.9: (3/4, 0), gap +3/4.
    # alpha = 1/4: eer = 1/4 + 1/4 * 1/2 = 0.375; threshold = 0.5 + 1/4 * 0.4 = 0.6.
    scores, labels = trials([0.9, 0.5, 0.5, 0.2], [0.5, 0.5, 0.3, 0.1])
    expected_rate, expected_threshold = 0.375, 0.6
    rng = np.random.default_rng(0)
    for _ in range(10):
        order = rng.permutation(len(scores))
        rate, threshold = eer_with_threshold(scores[order], labels[order])
        assert rate == pytest.approx(expected_rate)
        assert threshold == pytest.approx(expected_threshold)


def test_eer_all_scores_tied_is_chance():
    assert eer([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(0.5)


def test_eer_perfect_and_inverted_systems():
    assert eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0
    assert eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 1.0


def test_min_dcf_by_hand_depends_on_p_target():
    # 4 targets, 100 non-targets: one at 0.6, 99 below 0.3. Operating points (p_miss, p_fa):
    # A: t=0.3 -> (0, 0.01); B: t=0.8 -> (0.5, 0); (0.25, 0.01) at t=0.4; others worse.
    # Normalised DCF = p_miss + (1 - p) / p * p_fa (c_miss = c_fa = 1, p < 0.5).
    # p=0.05: A = 19 * 0.01 = 0.19, B = 0.5       -> 0.19
    # p=0.01: A = 99 * 0.01 = 0.99, B = 0.5       -> 0.5
    nontargets = [0.6] + list(np.linspace(-1.0, 0.2, 99))
    scores, labels = trials([0.9, 0.8, 0.4, 0.3], nontargets)
    assert min_dcf(scores, labels, p_target=0.05) == pytest.approx(0.19)
    assert min_dcf(scores, labels, p_target=0.01) == pytest.approx(0.5)
    # c_miss=10, p=0.01: normaliser min(0.1, 0.99) = 0.1; A costs 0.99 * 0.01 = 0.0099 -> 0.099,
    # B costs 10 * 0.01 * 0.5 = 0.05 -> 0.5.
    assert min_dcf(scores, labels, p_target=0.01, c_miss=10) == pytest.approx(0.099)


def test_min_dcf_small_set():
    # Points include (p_miss 1/4, p_fa 0) -> 0.25 * p / p = 0.25 for any p < 0.5 beating
    # (0, 1/4) -> (1 - p) / p / 4.
    scores, labels = trials([0.9, 0.8, 0.7, 0.4], [0.6, 0.3, 0.2, 0.1])
    assert min_dcf(scores, labels, p_target=0.05) == pytest.approx(0.25)
    assert min_dcf(scores, labels, p_target=0.01) == pytest.approx(0.25)
    # A system whose scores carry no information is no better than accepting or rejecting all.
    assert min_dcf([0.5, 0.5], [1, 0], p_target=0.5) == pytest.approx(1.0)


def _brute_force_min_dcf(scores, labels, p, c_miss, c_fa):
    best = np.inf
    target = scores[labels == 1]
    nontarget = scores[labels == 0]
    for t in list(scores) + [np.inf]:
        cost = c_miss * p * np.mean(target < t) + c_fa * (1 - p) * np.mean(nontarget >= t)
        best = min(best, cost)
    return best / min(c_miss * p, c_fa * (1 - p))


def test_agrees_with_sklearn_roc_curve_and_brute_force():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(1)
    for trial in range(5):
        labels = rng.integers(0, 2, size=400)
        labels[:2] = [0, 1]
        # Rounded so that many scores tie, within and across classes.
        scores = np.round(rng.normal(size=400) + 1.2 * labels, 1 if trial % 2 else 3)
        p_fa, p_miss, thresholds = det_curve(scores, labels)
        fpr, tpr, sk_thresholds = roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(p_fa[::-1], fpr)
        np.testing.assert_allclose(1 - p_miss[::-1], tpr)
        np.testing.assert_array_equal(thresholds[::-1], sk_thresholds)
        # The EER lies on the segment where sklearn's fnr - fpr changes sign.
        fnr = 1 - tpr
        upper = np.argmax(fnr - fpr <= 0)  # sklearn's order is descending threshold
        low, high = sorted([fnr[upper], fnr[upper - 1]])
        assert low - 1e-12 <= eer(scores, labels) <= high + 1e-12
        for p in (0.01, 0.05, 0.5):
            assert min_dcf(scores, labels, p_target=p) == pytest.approx(
                _brute_force_min_dcf(scores, labels, p, 1.0, 1.0)
            )


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([], [], "empty"),
        ([0.1, np.nan], [1, 0], "non-finite"),
        ([0.1, np.inf], [1, 0], "non-finite"),
        ([0.1, 0.2], [1, 1], "non-target"),
        ([0.1, 0.2], [0, 0], "target"),
        ([0.1, 0.2], [1, 2], "1 \\(target\\) or 0"),
        ([0.1, 0.2, 0.3], [1, 0], "differ in length"),
    ],
)
def test_bad_trials_raise(scores, labels, message):
    for function in (eer, min_dcf, det_curve):
        with pytest.raises(ValueError, match=message):
            function(scores, labels)


def test_min_dcf_rejects_bad_costs():
    with pytest.raises(ValueError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], p_target=1.0)
    with pytest.raises(ValueError, match="c_miss"):
        min_dcf([0.1, 0.2], [1, 0], c_miss=0)


def test_s_norm_by_hand():
    # trial 0: enroll cohort [1, 3] -> mean 2, std 1; test cohort [0, 2] -> mean 1, std 1.
    #          s = 2: 0.5 * ((2-2)/1 + (2-1)/1) = 0.5
    # trial 1: enroll cohort [0, 4] -> mean 2, std 2; test cohort [-2, 0] -> mean -1, std 1.
    #          s = -1: 0.5 * ((-1-2)/2 + (-1+1)/1) = -0.75
    normalised = s_norm([2.0, -1.0], [[1.0, 3.0], [0.0, 4.0]], [[0.0, 2.0], [-2.0, 0.0]])
    np.testing.assert_allclose(normalised, [0.5, -0.75])


def test_as_norm_uses_only_top_k():
    # Same top-2 cohort scores as in test_s_norm_by_hand, with lower scores mixed in that AS-norm drops.
    enroll = [[-5.0, 1.0, -7.0, 3.0], [4.0, -10.0, 0.0, -3.0]]
    test = [[0.0, -1.0, 2.0, -9.0], [-4.0, -2.0, -3.0, 0.0]]
    np.testing.assert_allclose(as_norm([2.0, -1.0], enroll, test, top_k=2), [0.5, -0.75])
    # With every cohort score it is plain S-norm, which differs here.
    np.testing.assert_allclose(as_norm([2.0, -1.0], enroll, test, top_k=4), s_norm([2.0, -1.0], enroll, test))
    assert not np.allclose(s_norm([2.0, -1.0], enroll, test), [0.5, -0.75])


def test_score_normalisation_errors():
    with pytest.raises(ValueError, match="top_k"):
        as_norm([1.0], [[0.0, 1.0]], [[0.0, 1.0]], top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        as_norm([1.0], [[0.0, 1.0]], [[0.0, 1.0]], top_k=1)
    with pytest.raises(ValueError, match="enroll_cohort_scores must have shape"):
        s_norm([1.0, 2.0], [[0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="zero spread"):
        s_norm([1.0], [[0.5, 0.5]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="non-finite"):
        s_norm([np.nan], [[0.0, 1.0]], [[0.0, 1.0]])
