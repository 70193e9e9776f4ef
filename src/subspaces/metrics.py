"""Speaker-verification metrics: DET curve, EER, minDCF, and cohort score normalisation.

Conventions used throughout: a trial has a `score` (higher means "more likely the same
speaker") and a label, 1 for a target trial (same speaker) and 0 for a non-target trial.
A decision threshold `t` accepts a trial when `score >= t`, so at threshold `t`

    p_miss(t) = fraction of target scores below t
    p_fa(t)   = fraction of non-target scores at or above t

Tied scores move together: the curve has one operating point per distinct score (plus
"accept nothing" at +inf), never one per trial, so the order of the input cannot change
any result.

>>> scores = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1]
>>> labels = [1, 1, 1, 1, 0, 0, 0, 0]
>>> eer(scores, labels)
0.25
>>> round(min_dcf(scores, labels, p_target=0.05), 4)
0.25
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import SubspacesError

__all__ = [
    "MetricsError",
    "as_norm",
    "det_curve",
    "eer",
    "eer_of_curve",
    "eer_with_threshold",
    "min_dcf",
    "min_dcf_of_curve",
    "s_norm",
    "unit_rows",
]


class MetricsError(SubspacesError, ValueError):
    """Scores, labels or costs that no verification metric is defined for; the message says which."""


ArrayLike = Sequence[float] | np.ndarray


def unit_rows(vectors: np.ndarray, names: Sequence[str] | None = None, what: str = "vector") -> np.ndarray:
    """float64 rows of `vectors` (float[N, D]) scaled to length 1, for cosine scores; an
    all-zero or non-finite row has no direction, and raises naming it (by `names`, else
    by index). Every cosine of the package is scored on these rows.

    >>> unit_rows(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise MetricsError(f"embeddings must be a matrix float[N, D], got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = np.flatnonzero(~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)))
    if len(bad):
        where = names[bad[0]] if names is not None else f"row {bad[0]}"
        raise MetricsError(f"{where}: an all-zero or non-finite {what} ({len(bad)} such row(s)); "
                           "cosine scoring is undefined for it")
    return vectors / norms


def _check_trials(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (scores float64[N], is_target bool[N])."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise MetricsError(f"scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}")
    if len(scores) != len(labels):
        raise MetricsError(f"scores and labels differ in length: {len(scores)} scores, {len(labels)} labels")
    if len(scores) == 0:
        raise MetricsError("no trials: scores and labels are empty")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise MetricsError(
            f"{len(bad)} non-finite score(s), first at index {bad[0]} ({scores[bad[0]]}); "
            "a NaN or infinite score usually means a failed embedding upstream"
        )
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1}:
        raise MetricsError(f"labels must be 1 (target) or 0 (non-target), got values {sorted(values, key=str)}")
    is_target = labels.astype(bool)
    if is_target.all() or not is_target.any():
        missing = "non-target (0)" if is_target.all() else "target (1)"
        raise MetricsError(f"no {missing} trials: verification metrics need both targets and non-targets")
    return scores, is_target


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every distinct threshold.

    Args:
        scores: float[N], higher means more likely a target.
        labels: int or bool[N], 1 = target, 0 = non-target.

    Returns:
        `(p_fa, p_miss, thresholds)`, each float64[M + 1] for M distinct scores:
        `thresholds` are the distinct scores in ascending order followed by +inf
        (accept nothing). `p_fa` falls from 1 to 0 and `p_miss` rises from 0 to 1.

    >>> p_fa, p_miss, thresholds = det_curve([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    >>> thresholds.tolist()
    [0.2, 0.5, 0.9, inf]
    >>> p_fa.tolist(), p_miss.tolist()
    ([1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0])
    """
    scores, is_target = _check_trials(scores, labels)
    distinct, group = np.unique(scores, return_inverse=True)
    targets_at = np.bincount(group[is_target], minlength=len(distinct))
    nontargets_at = np.bincount(group[~is_target], minlength=len(distinct))
    # Targets strictly below threshold k: everything in groups 0..k-1.
    misses = np.concatenate([[0], np.cumsum(targets_at)])
    # Non-targets at or above threshold k: everything in groups k..M-1.
    false_alarms = np.concatenate([np.cumsum(nontargets_at[::-1])[::-1], [0]])
    p_miss = misses / is_target.sum()
    p_fa = false_alarms / (~is_target).sum()
    thresholds = np.concatenate([distinct, [np.inf]])
    return p_fa, p_miss, thresholds


def eer_with_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate and the threshold where it is reached.

    The miss and false-alarm curves are joined linearly between neighbouring operating
    points; the EER is where they cross. The threshold is interpolated the same way
    between the two points' thresholds (or is the last finite one if the crossing lies
    on the step to "accept nothing").

    Args:
        scores: float[N]; labels: int or bool[N] (1 = target).

    Returns:
        `(eer, threshold)`, the EER as a fraction in [0, 1].

    >>> eer_with_threshold([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0])
    (0.25, 0.55)
    """
    return eer_of_curve(*det_curve(scores, labels))


def eer_of_curve(p_fa: np.ndarray, p_miss: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[float, float]:
    """`eer_with_threshold` of a DET curve given as its operating points (`p_fa` falling
    from 1 to 0, `p_miss` rising from 0 to 1, as `det_curve` returns them), e.g. one
    built from score histograms. Without `thresholds` the threshold returned is NaN.

    >>> eer_of_curve(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]))
    (0.5, nan)
    """
    gap = p_miss - p_fa  # -1 at the first point, +1 at the last, never decreasing
    upper = int(np.argmax(gap >= 0))
    if gap[upper] == 0:
        return float(p_miss[upper]), float(thresholds[upper]) if thresholds is not None else float("nan")
    lower = upper - 1
    alpha = -gap[lower] / (gap[upper] - gap[lower])
    rate = p_miss[lower] + alpha * (p_miss[upper] - p_miss[lower])
    if thresholds is None:
        threshold = float("nan")
    elif np.isinf(thresholds[upper]):
        threshold = thresholds[lower]
    else:
        threshold = thresholds[lower] + alpha * (thresholds[upper] - thresholds[lower])
    return float(rate), float(threshold)


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate (a fraction, not a percentage); see `eer_with_threshold`.

    >>> eer([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0])
    0.25
    """
    return eer_with_threshold(scores, labels)[0]


def min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Minimum normalised detection cost over all thresholds.

    `DCF(t) = c_miss * p_target * p_miss(t) + c_fa * (1 - p_target) * p_fa(t)`, divided by
    `min(c_miss * p_target, c_fa * (1 - p_target))`, the cost of the better of the two
    trivial systems (accept all, reject all); so 1.0 means no better than those.
    The defaults are those of VoxCeleb (NIST SRE 2008's costs with p_target 0.01).

    >>> round(min_dcf([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0], p_target=0.05), 6)
    0.5
    """
    p_fa, p_miss, _ = det_curve(scores, labels)
    return min_dcf_of_curve(p_fa, p_miss, p_target, c_miss, c_fa)


def min_dcf_of_curve(
    p_fa: np.ndarray, p_miss: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """`min_dcf` of a DET curve given as its operating points (see `eer_of_curve`).

    >>> min_dcf_of_curve(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]), p_target=0.5)
    1.0
    """
    if not 0 < p_target < 1:
        raise MetricsError(f"p_target must lie strictly between 0 and 1, got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise MetricsError(f"c_miss and c_fa must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def _cohort_stats(cohort_scores: np.ndarray, top_k: int | None, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation per row, over all or the top-k columns."""
    if top_k is not None:
        if not 2 <= top_k <= cohort_scores.shape[1]:
            raise MetricsError(
                f"top_k must be between 2 and the cohort size {cohort_scores.shape[1]} ({side} side), got {top_k}"
            )
        # The k largest of each row; their order does not matter for a mean and std.
        cohort_scores = np.partition(cohort_scores, -top_k, axis=1)[:, -top_k:]
    mean = cohort_scores.mean(axis=1)
    std = cohort_scores.std(axis=1)
    flat = np.flatnonzero(std == 0)
    if len(flat):
        raise MetricsError(
            f"{side} cohort scores of trial {flat[0]} have zero spread (all equal to {mean[flat[0]]}); "
            "the cohort is degenerate or top_k too small"
        )
    return mean, std


def _check_cohorts(
    scores: ArrayLike, enroll_cohort_scores: ArrayLike, test_cohort_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    enroll = np.asarray(enroll_cohort_scores, dtype=np.float64)
    test = np.asarray(test_cohort_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise MetricsError(f"scores must be a non-empty 1-D array [N], got shape {scores.shape}")
    for side, cohort in (("enroll", enroll), ("test", test)):
        if cohort.ndim != 2 or cohort.shape[0] != len(scores) or cohort.shape[1] == 0:
            raise MetricsError(
                f"{side}_cohort_scores must have shape [N={len(scores)}, K>0] (one row of cohort scores "
                f"per trial), got {cohort.shape}"
            )
    for name, array in (("scores", scores), ("enroll_cohort_scores", enroll), ("test_cohort_scores", test)):
        if not np.isfinite(array).all():
            raise MetricsError(f"{name} contains non-finite values")
    return scores, enroll, test


def s_norm(scores: ArrayLike, enroll_cohort_scores: ArrayLike, test_cohort_scores: ArrayLike) -> np.ndarray:
    """Symmetric score normalisation (S-norm).

    `0.5 * ((s - mean_e) / std_e + (s - mean_t) / std_t)`, where mean_e, std_e are over the
    scores of the trial's enrolment utterance against the cohort and mean_t, std_t over those
    of its test utterance. Standard deviations are population ones (ddof=0).

    Args:
        scores: float[N], the raw trial scores.
        enroll_cohort_scores: float[N, K_e], each trial's enrolment side scored against the cohort.
        test_cohort_scores: float[N, K_t], each trial's test side scored against the cohort.

    Returns:
        float64[N], the normalised scores.

    >>> s_norm([1.0], [[0.0, 2.0]], [[0.0, 1.0]]).tolist()
    [0.5]
    """
    scores, enroll, test = _check_cohorts(scores, enroll_cohort_scores, test_cohort_scores)
    mean_e, std_e = _cohort_stats(enroll, None, "enroll")
    mean_t, std_t = _cohort_stats(test, None, "test")
    return 0.5 * ((scores - mean_e) / std_e + (scores - mean_t) / std_t)


def as_norm(
    scores: ArrayLike, enroll_cohort_scores: ArrayLike, test_cohort_scores: ArrayLike, top_k: int = 300
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm).

    Like `s_norm`, but each side's mean and standard deviation use only its `top_k`
    highest cohort scores (the cohort members most similar to that utterance).
    The default 300 is a common choice for VoxCeleb with a cohort of a few thousand.

    Args:
        scores: float[N]; enroll_cohort_scores: float[N, K_e]; test_cohort_scores: float[N, K_t];
        top_k: 2 <= top_k <= min(K_e, K_t).

    Returns:
        float64[N], the normalised scores.

    >>> as_norm([1.0], [[0.0, 2.0, -9.0]], [[1.0, 0.0, -9.0]], top_k=2).tolist()
    [0.5]
    """
    scores, enroll, test = _check_cohorts(scores, enroll_cohort_scores, test_cohort_scores)
    mean_e, std_e = _cohort_stats(enroll, top_k, "enroll")
    mean_t, std_t = _cohort_stats(test, top_k, "test")
    return 0.5 * ((scores - mean_e) / std_e + (scores - mean_t) / std_t)
