"""Evaluation on real speech: speaker verification, keyword probes, and leakage.

Every system (a subspace of a trained model, a raw backbone layer, a baseline speaker
encoder) is a matrix of utterance embeddings `float[N, D]` aligned with the rows of one
manifest; every system is scored on the same trials and the same probe folds.

- Verification: cosine scores on trials, EER and minDCF over all trials, and separately
  over content-matched trials (both clips say the same thing) and content-mismatched
  ones: a speaker embedding that still carries content looks good on the first and bad
  on the second. When the manifest has a `language` column with at least 2 languages,
  also over same-language trials (both clips in one language spoken by at least 2
  speakers: targets and impostors alike come from such languages, so telling languages
  apart cannot pass for telling people apart) and cross-language trials (the clips are in
  different languages; targets are one person in two languages, where any exist).
  All pairs of the manifest are scored in row blocks into fine score histograms
  (`verification_all_pairs`: memory does not grow with the number of pairs); a seeded
  sample of pairs (`make_trials`) or a trial list (`trials_from_list`) is scored exactly
  (`verification`).
- Keyword probe: logistic regression on standardised embeddings, trained and tested on
  disjoint speakers, rotated over at most `MAX_FOLDS` folds, on the content classes that
  both sides of a fold speak.
- Leakage: speaker EER and a speaker-ID probe from the content subspace, keyword accuracy
  from the speaker subspace, and linear CKA between subspaces.

>>> rng = np.random.default_rng(0)
>>> table = pd.DataFrame({"speaker": list("aabbcc") * 4, "content": list("xyxyxy") * 4})
>>> trials = make_trials(table)
>>> len(trials), int(trials["target"].sum())
(276, 84)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from .errors import SubspacesError
from .metrics import eer, eer_of_curve, min_dcf, min_dcf_of_curve, unit_rows

__all__ = [
    "EvaluationError",
    "MAX_FOLDS",
    "SCORE_BINS",
    "cosine_scores",
    "evaluate_systems",
    "keyword_probe",
    "linear_cka",
    "make_trials",
    "speaker_folds",
    "speaker_probe",
    "summarize_runs",
    "summary_table",
    "trials_from_list",
    "verification",
    "verification_all_pairs",
]


class EvaluationError(SubspacesError, ValueError):
    """An evaluation that cannot run on these inputs (too few clips, a trial list that does not match, ...)."""


# Streamed verification bins cosine scores on this many equal bins over [-1, 1] (width
# 2 / 2**16 = 3.05e-5, far above the float32 rounding of a cosine, about 1e-7), so a
# group's two histograms cost 1 MiB however many pairs there are.
SCORE_BINS = 2**16
# Pairs scored per row block in `verification_all_pairs`: about 30 bytes of temporaries
# per pair, so some 120 MB, and blocks long enough for the matrix product to run at speed.
BLOCK_PAIRS = 2**22
# Trials gathered at once by `cosine_scores` (2 x 16384 x D float64 rows, 128 MB at D=512).
SCORE_CHUNK = 16384
# Speaker-disjoint probe folds: one logistic regression per fold and system, and 5 folds
# already average over which speakers are held out (FSDD's 6 speakers give 3).
MAX_FOLDS = 5

# Trial groups. A trial's language relation: 0 = unknown (no language grouping, or a clip
# without a language), SAME_LANGUAGE, CROSS_LANGUAGE.
SAME_LANGUAGE, CROSS_LANGUAGE = 1, 2
# group -> which trials it holds, from same_content: bool[T] and language: int[T].
GROUPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "all": lambda same_content, language: np.ones(np.shape(same_content), dtype=bool),
    "matched": lambda same_content, language: same_content,
    "mismatched": lambda same_content, language: ~same_content,
    "same_language": lambda same_content, language: language == SAME_LANGUAGE,
    "cross_language": lambda same_content, language: language == CROSS_LANGUAGE,
}
LANGUAGE_GROUPS = ("same_language", "cross_language")


def _labels(values: pd.Series) -> np.ndarray:
    """Row labels as str[N], missing values as ""."""
    return values.fillna("").astype(str).to_numpy()


def _codes(values: pd.Series, empty_is_unknown: bool = True) -> np.ndarray:
    """An integer code per row (int64[N]); an empty label is -1 when `empty_is_unknown`."""
    text = _labels(values)
    _, codes = np.unique(text, return_inverse=True)
    codes = codes.astype(np.int64)
    if empty_is_unknown:
        codes[text == ""] = -1
    return codes


def _language_codes(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(language code per row, -1 = none; contested: bool[N], the row's language is
    spoken by at least 2 speakers), or None when the manifest has no `language` column
    with at least 2 distinct non-empty values (no language groups then).

    Same-language trials are kept to contested languages: a language spoken by one person
    gives same-language targets but no same-language non-targets, and pooling its targets
    with another language's non-targets would again let per-language score offsets pass
    for speaker differences."""
    if "language" not in table.columns:
        return None
    codes = _codes(table["language"])
    if len(np.unique(codes[codes >= 0])) < 2:
        return None
    speakers = pd.Series(_labels(table["speaker"])).groupby(codes).nunique()
    contested_codes = speakers.index[(speakers.index >= 0) & (speakers.to_numpy() >= 2)].to_numpy()
    return codes, np.isin(codes, contested_codes)


def _trial_frame(table: pd.DataFrame, enroll: np.ndarray, test: np.ndarray, target: np.ndarray) -> pd.DataFrame:
    """Trials as a DataFrame: enroll, test, target, same_content (both clips carry the
    same non-empty content label) and, with language groups, same_language (both clips
    in one language that at least 2 speakers speak) and cross_language (both clips carry
    a language, and they differ)."""
    contents = _labels(table["content"])
    columns = {"enroll": enroll, "test": test, "target": target,
               "same_content": (contents[enroll] == contents[test]) & (contents[enroll] != "")}
    languages = _language_codes(table)
    if languages is not None:
        language, contested = languages
        known = (language[enroll] >= 0) & (language[test] >= 0)
        columns["same_language"] = known & (language[enroll] == language[test]) & contested[enroll]
        columns["cross_language"] = known & (language[enroll] != language[test])
    return pd.DataFrame(columns)


def _sample_pairs(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`size` distinct pairs (i < j) of range(n), uniformly at random, in row-major order,
    drawn without listing all n (n - 1) / 2 pairs: the first `size` distinct pairs of an
    i.i.d. stream of uniform pairs are a uniform sample without replacement."""
    keys = np.empty(0, dtype=np.int64)  # i * n + j: one key per pair, ordered like np.triu_indices
    while len(keys) < size:
        draws = 2 * (size - len(keys)) + 16  # the caller keeps size <= half the pairs, so most draws are new
        i, j = rng.integers(0, n, size=draws), rng.integers(0, n, size=draws)
        distinct = i != j
        low, high = np.minimum(i, j)[distinct], np.maximum(i, j)[distinct]
        candidates = np.concatenate([keys, low * n + high])
        _, first = np.unique(candidates, return_index=True)
        keys = candidates[np.sort(first)]  # each pair once, in the order it was first drawn
    keys = np.sort(keys[:size])
    return keys // n, keys % n


def make_trials(table: pd.DataFrame, max_trials: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Trials from a manifest: every unordered pair of rows, or a seeded sample of
    `max_trials` distinct pairs.

    The sample is drawn without listing all pairs (200,000 rows and max_trials=1000 take
    milliseconds); all pairs are listed only when asked for (max_trials None or not below
    the number of pairs), so for a large manifest use `verification_all_pairs` instead.
    Returns a DataFrame with `enroll` < `test` (row positions, sorted), `target` (same
    speaker), `same_content` (the same non-empty content label) and, when the manifest has
    a `language` column with at least 2 languages, `same_language` and `cross_language`.

    >>> table = pd.DataFrame({"speaker": list("aab"), "content": list("xyx")})
    >>> make_trials(table)[["enroll", "test", "target", "same_content"]].values.tolist()
    [[0, 1, True, False], [0, 2, False, True], [1, 2, False, False]]
    >>> len(make_trials(pd.DataFrame({"speaker": ["s"] * 10**5, "content": ["x"] * 10**5}), max_trials=5))
    5
    """
    n = len(table)
    if n < 2:
        raise EvaluationError(f"need at least 2 utterances to make trials, got {n}")
    if max_trials is not None and max_trials < 1:
        raise EvaluationError(f"max_trials must be at least 1 (or None for all pairs), got {max_trials}")
    total = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    if max_trials is None or max_trials >= total:
        enroll, test = np.triu_indices(n, k=1)
    elif 2 * max_trials > total:
        # More than half of all pairs: listing them costs at most twice the sample itself.
        enroll, test = np.triu_indices(n, k=1)
        keep = np.sort(rng.choice(total, size=max_trials, replace=False))
        enroll, test = enroll[keep], test[keep]
    else:
        enroll, test = _sample_pairs(n, max_trials, rng)
    speakers = _labels(table["speaker"])
    return _trial_frame(table, enroll, test, speakers[enroll] == speakers[test])


def trials_from_list(table: pd.DataFrame, trial_list: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """Trials from a verification list (`label, enroll, test`, as `corpora.read_trials`
    returns it), matched to manifest rows through the `key` column: by default the first
    of VoxCeleb1's `trial_path`, `utt_id` and `path` that names every clip of the list
    (so a list of utterance ids or of paths works for any corpus). The list's labels are
    kept as `target`; the other columns are those of `make_trials`.

    >>> table = pd.DataFrame({"trial_path": ["a/1.wav", "a/2.wav", "b/1.wav"], "speaker": list("aab"),
    ...                       "content": ["", "", ""]})
    >>> trials_from_list(table, pd.DataFrame({"label": [1, 0], "enroll": ["a/1.wav"] * 2,
    ...                                       "test": ["a/2.wav", "b/1.wav"]}))["test"].tolist()
    [1, 2]
    """
    if key is None:
        names = set(trial_list["enroll"]) | set(trial_list["test"])
        columns = [c for c in ("trial_path", "utt_id", "path") if c in table.columns]
        key = next((c for c in columns if names <= set(table[c].astype(str))), columns[0] if columns else "trial_path")
    if key not in table.columns:
        raise EvaluationError(f"the manifest has no {key!r} column to match the trial list's paths against")
    row = {path: i for i, path in enumerate(table[key].astype(str))}
    missing = sorted({p for p in (*trial_list["enroll"], *trial_list["test"]) if p not in row})
    if missing:
        raise EvaluationError(f"{len(missing)} trial-list path(s) are not in the manifest, e.g. {', '.join(missing[:3])}")
    enroll = trial_list["enroll"].map(row).to_numpy()
    test = trial_list["test"].map(row).to_numpy()
    return _trial_frame(table, enroll, test, trial_list["label"].astype(int).to_numpy() == 1)


def cosine_scores(embeddings: np.ndarray, trials: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each trial's two embeddings: float64[T] for embeddings
    float[N, D], gathered `SCORE_CHUNK` trials at a time (memory does not grow with T x D).

    >>> trials = pd.DataFrame({"enroll": [0, 0], "test": [1, 2]})
    >>> cosine_scores(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]), trials).tolist()
    [1.0, 0.0]
    """
    unit = unit_rows(embeddings)
    enroll, test = trials["enroll"].to_numpy(), trials["test"].to_numpy()
    scores = np.empty(len(enroll))
    for start in range(0, len(enroll), SCORE_CHUNK):
        chunk = slice(start, start + SCORE_CHUNK)
        scores[chunk] = np.einsum("nd,nd->n", unit[enroll[chunk]], unit[test[chunk]])
    return scores


def _group_entry(n_target: int, n_nontarget: int, rates: Callable[[], dict] | None) -> dict:
    entry = {"targets": n_target, "nontargets": n_nontarget, "eer": None, "min_dcf_0.01": None, "min_dcf_0.05": None}
    if n_target and n_nontarget:
        entry.update(rates())
    return entry


def verification(embeddings: np.ndarray, trials: pd.DataFrame) -> dict:
    """Cosine-scored EER and minDCF (p_target 0.01 and 0.05) of a trial set, exactly
    (`metrics.eer`, `metrics.min_dcf` on every score), overall and per trial group.

    embeddings: float[N, D]; trials as `make_trials` or `trials_from_list` give them.
    Groups: all, matched (same content), mismatched, and same_language / cross_language
    when the trials carry languages. Rates are fractions (0.1 = 10 %). Each group records
    its trial counts; a group with no targets or no non-targets has None for its rates.

    >>> table = pd.DataFrame({"speaker": list("aabb"), "content": list("xyxy")})
    >>> result = verification(np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), make_trials(table))
    >>> result["all"]["eer"], result["matched"]["targets"], result["matched"]["eer"]
    (0.0, 0, None)
    """
    scores = cosine_scores(embeddings, trials)
    target = trials["target"].to_numpy(dtype=bool)
    same_content = trials["same_content"].to_numpy(dtype=bool)
    groups = [g for g in GROUPS if g not in LANGUAGE_GROUPS]
    language = np.zeros(len(trials), dtype=np.int64)
    if "same_language" in trials.columns:
        language = (SAME_LANGUAGE * trials["same_language"].to_numpy(dtype=np.int64)
                    + CROSS_LANGUAGE * trials["cross_language"].to_numpy(dtype=np.int64))
        groups += LANGUAGE_GROUPS
    result = {}
    for group in groups:
        mask = GROUPS[group](same_content, language)
        group_scores, labels = scores[mask], target[mask].astype(int)
        result[group] = _group_entry(int(labels.sum()), int(len(labels) - labels.sum()), lambda: {
            "eer": eer(group_scores, labels),
            "min_dcf_0.01": min_dcf(group_scores, labels, p_target=0.01),
            "min_dcf_0.05": min_dcf(group_scores, labels, p_target=0.05),
        })
    return result


def _histogram_rates(targets_at: np.ndarray, nontargets_at: np.ndarray) -> dict:
    """EER and minDCF from target and non-target counts per score bin (ascending bins).

    The operating points are "accept bin k and above" for every bin k, plus "accept
    nothing": the points `metrics.det_curve` gives for the scores rounded down to their
    bin's lower edge, except that an empty bin repeats its upper neighbour's point, which
    moves neither the EER crossing nor the minimum cost; the EER and cost are then
    `metrics.eer_of_curve` and `metrics.min_dcf_of_curve` of those points.
    """
    p_miss = np.concatenate([[0], np.cumsum(targets_at)]) / targets_at.sum()
    p_fa = np.concatenate([np.cumsum(nontargets_at[::-1])[::-1], [0]]) / nontargets_at.sum()
    return {"eer": eer_of_curve(p_fa, p_miss)[0],
            **{f"min_dcf_{p}": min_dcf_of_curve(p_fa, p_miss, p_target=p) for p in (0.01, 0.05)}}


def verification_all_pairs(
    embeddings: np.ndarray, table: pd.DataFrame, *, bins: int = SCORE_BINS, block_pairs: int = BLOCK_PAIRS,
) -> dict:
    """`verification` on every unordered pair of the manifest's rows, in bounded memory.

    Unit-normalised embeddings (float32) are scored a block of rows at a time against
    the rows after them (the upper triangle only), and each pair is counted in a histogram
    of its cell (same speaker, same content, language relation) on `bins` equal bins over
    [-1, 1]. Memory is the embeddings, one block (`block_pairs` pairs, about 30 bytes
    each) and 12 histograms, whatever the number of pairs; time is one N x N / 2 x D
    matrix product. Resolution: the EER and minDCF are those of the scores rounded down to
    the bins (width 2 / bins, 3.1e-5 by default); they differ from `metrics.eer` and
    `metrics.min_dcf` on the exact scores only through the trials that fall in the bin of
    the operating point. Returns the groups and counts of `verification`.

    embeddings: float[N, D] aligned with `table` (`speaker`, `content`, optional `language`).

    >>> table = pd.DataFrame({"speaker": list("aabb"), "content": list("xyxy")})
    >>> vectors = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    >>> verification_all_pairs(vectors, table)["all"] == verification(vectors, make_trials(table))["all"]
    True
    """
    n = len(table)
    if n < 2:
        raise EvaluationError(f"need at least 2 utterances to make trials, got {n}")
    if len(embeddings) != n:
        raise EvaluationError(f"{len(embeddings)} embeddings for {n} manifest rows")
    if bins < 2:
        raise EvaluationError(f"bins must be at least 2, got {bins}")
    unit = unit_rows(embeddings).astype(np.float32)
    speaker = _codes(table["speaker"], empty_is_unknown=False)
    content = _codes(table["content"])
    languages = _language_codes(table)
    language, contested = languages if languages is not None else (None, None)
    # cell = 6 * same speaker + 3 * same content + language relation (0-2); 12 = not a pair.
    cells, not_a_pair = 12, 12
    counts = np.zeros(cells * bins, dtype=np.int64)
    rows_per_block = max(1, block_pairs // n)
    for start in range(0, n - 1, rows_per_block):
        stop = min(start + rows_per_block, n - 1)  # row n - 1 pairs with no later row
        rows, after = slice(start, stop), slice(start, n)  # column c of the block is row start + c
        scores = unit[rows] @ unit[after].T
        # floor((s + 1) * bins / 2) in float32: the scale is a power of two for the default bins.
        index = ((scores + 1.0) * (bins / 2)).astype(np.int64)
        del scores
        np.clip(index, 0, bins - 1, out=index)
        cell = 6 * (speaker[rows, None] == speaker[None, after]).astype(np.int64)
        cell += 3 * ((content[rows, None] == content[None, after]) & (content[rows, None] >= 0))
        if language is not None:
            known = (language[rows, None] >= 0) & (language[None, after] >= 0)
            same = language[rows, None] == language[None, after]
            cell += known * np.where(same, np.where(contested[rows, None], SAME_LANGUAGE, 0), CROSS_LANGUAGE)
        width = stop - start
        cell[:, :width][np.tril_indices(width)] = not_a_pair  # the row itself and the rows before it
        index += bins * cell
        del cell
        counts += np.bincount(index.ravel(), minlength=(cells + 1) * bins)[: cells * bins]
        del index
    # histogram[same speaker, same content, language relation, score bin]
    histogram = counts.reshape(2, 2, 3, bins)
    same_content = np.array([False, True])[:, None]
    relation = np.arange(3)[None, :]
    groups = [g for g in GROUPS if language is not None or g not in LANGUAGE_GROUPS]
    result = {}
    for group in groups:
        mask = np.broadcast_to(GROUPS[group](same_content, relation), (2, 3))
        nontargets_at, targets_at = histogram[0][mask].sum(axis=0), histogram[1][mask].sum(axis=0)
        result[group] = _group_entry(int(targets_at.sum()), int(nontargets_at.sum()),
                                     lambda: _histogram_rates(targets_at, nontargets_at))
    return result


def _pairs_within(codes: np.ndarray) -> int:
    """Unordered pairs of rows sharing a code (codes -1 = unknown pair with nothing)."""
    sizes = np.bincount(codes[codes >= 0])
    return int((sizes * (sizes - 1) // 2).sum())


def _all_pair_counts(table: pd.DataFrame) -> dict:
    """Trial counts of all pairs, from label counts alone (no pair is listed)."""
    n = len(table)
    counts = {"total": n * (n - 1) // 2, "targets": _pairs_within(_codes(table["speaker"], empty_is_unknown=False)),
              "content_matched": _pairs_within(_codes(table["content"]))}
    languages = _language_codes(table)
    if languages is not None:
        language, contested = languages
        known = int((language >= 0).sum())
        counts["same_language"] = _pairs_within(np.where(contested, language, -1))
        counts["cross_language"] = known * (known - 1) // 2 - _pairs_within(language)
    return counts


def _trial_counts(trials: pd.DataFrame) -> dict:
    counts = {"total": len(trials), "targets": int(trials["target"].sum()),
              "content_matched": int(trials["same_content"].sum())}
    for column in LANGUAGE_GROUPS:
        if column in trials.columns:
            counts[column] = int(trials[column].sum())
    return counts


def _probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on separable toy data
        probe.fit(train_x, train_y)
    return probe.predict(test_x)


def speaker_folds(speakers: np.ndarray, test_speakers: int = 2, max_folds: int = MAX_FOLDS) -> list[np.ndarray]:
    """Test-speaker groups for speaker-disjoint probes.

    The sorted speakers are cut into groups of `test_speakers` (a last, smaller group is
    left out: its speakers are always trained on), one fold per group: FSDD's 6 speakers
    give 3 folds of train-on-4, test-on-2. When that would make more than `max_folds`
    folds, the sorted speakers are instead dealt round-robin into `max_folds` groups of
    near-equal size, so every speaker is tested once (50 speakers: 5 folds of 10), and
    speakers whose labels sort next to each other (KLettres' `Robert Wadley` and
    `klettres-ar`, ..., `klettres-en_GB`) are spread over folds rather than tested together.

    >>> [fold.tolist() for fold in speaker_folds(np.array(list("abcdefa")))]
    [['a', 'b'], ['c', 'd'], ['e', 'f']]
    >>> [len(fold) for fold in speaker_folds(np.array([f"s{i:02d}" for i in range(51)]))]
    [11, 10, 10, 10, 10]
    """
    names = sorted(set(speakers.tolist()))
    if len(names) <= test_speakers:
        raise EvaluationError(f"a speaker-disjoint probe needs more than {test_speakers} speakers, got {len(names)}")
    if max_folds < 1:
        raise EvaluationError(f"max_folds must be at least 1, got {max_folds}")
    groups = len(names) // test_speakers
    if groups <= max_folds:
        return [np.array(names[k * test_speakers : (k + 1) * test_speakers]) for k in range(groups)]
    return [np.array(names[k::max_folds]) for k in range(max_folds)]


def keyword_probe(
    embeddings: np.ndarray, table: pd.DataFrame, test_speakers: int = 2, seed: int = 0, official_split: bool = False,
    max_folds: int = MAX_FOLDS,
) -> dict:
    """Content (keyword) accuracy of a linear probe trained and tested on disjoint speakers.

    By default, speakers are cut into folds (`speaker_folds`) and the accuracy averaged
    over them. `official_split=True` trains on the rows whose split is "train" and tests on
    those whose split is "test" (Speech Commands' own lists, which are speaker-disjoint).
    Each fold uses only the content classes spoken on both its sides (its training and its
    test rows); its rows of other classes, and rows without a content label, are dropped
    from it, and a fold with fewer than 2 such classes is skipped.

    Returns `accuracy` (mean over the folds run; None with a `note` when none could run),
    per fold `folds` (accuracy, None if skipped), `classes_used` and `rows_dropped`; the
    label order and the confusion matrix summed over folds (rows = true, columns =
    predicted); `chance`, the mean over the folds run of 1 / classes_used.

    >>> table = pd.DataFrame({"speaker": list("aabbccdd") * 2, "content": list("xyxyxyxz") * 2})
    >>> vectors = np.array([[1.0, 0.0], [0.0, 1.0]] * 3 + [[1.0, 0.0], [0.5, 0.5]])[[*range(8)] * 2]
    >>> result = keyword_probe(vectors, table)  # only d says z: its z rows are dropped from both folds
    >>> result["accuracy"], result["classes_used"], result["rows_dropped"], result["chance"]
    (1.0, [2, 2], [2, 2], 0.5)
    """
    speakers = _labels(table["speaker"])
    contents = _labels(table["content"])
    labels = sorted(set(contents.tolist()) - {""})
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    if official_split:
        if "split" not in table.columns:
            raise EvaluationError(f"official_split needs a 'split' column; the manifest has {', '.join(table.columns)}")
        split = _labels(table["split"])
        if not ((split == "train").any() and (split == "test").any()):
            raise EvaluationError(f"official_split needs rows of split 'train' and 'test'; "
                             f"splits present: {sorted(set(split))}")
        folds = [(split == "train", split == "test")]
    else:
        folds = [(~np.isin(speakers, held), np.isin(speakers, held))
                 for held in speaker_folds(speakers, test_speakers, max_folds)]
    accuracies, classes_used, rows_dropped = [], [], []
    for train_rows, test_rows in folds:
        shared = sorted((set(contents[train_rows].tolist()) & set(contents[test_rows].tolist())) - {""})
        spoken = np.isin(contents, shared)
        train, test = train_rows & spoken, test_rows & spoken
        classes_used.append(len(shared))
        rows_dropped.append(int((train_rows | test_rows).sum() - (train | test).sum()))
        if len(shared) < 2:
            accuracies.append(None)
            continue
        predicted = _probe(embeddings[train], contents[train], embeddings[test], seed)
        accuracies.append(float(np.mean(predicted == contents[test])))
        for truth, guess in zip(contents[test], predicted):
            confusion[index[truth], index[guess]] += 1
    ran = [k for k, accuracy in enumerate(accuracies) if accuracy is not None]
    accuracy = chance = None
    if ran:
        accuracy = float(np.mean([accuracies[k] for k in ran]))
        per_fold = [1.0 / classes_used[k] for k in ran]
        # Exactly 1 / k when every fold uses k classes (a mean of equal floats can round).
        chance = per_fold[0] if len(set(per_fold)) == 1 else float(np.mean(per_fold))
    result = {"accuracy": accuracy, "folds": accuracies, "classes_used": classes_used, "rows_dropped": rows_dropped,
              "labels": labels, "confusion": confusion.tolist(), "chance": chance}
    shared_per_fold = ", ".join(map(str, classes_used))
    if not ran:
        result["note"] = (f"no fold has at least 2 content classes spoken by both its training and its test "
                          f"speakers (classes shared per fold: {shared_per_fold}), so there is no keyword accuracy")
    elif len(ran) < len(folds):
        skipped = ", ".join(str(k + 1) for k in range(len(folds)) if k not in ran)
        result["note"] = (f"fold(s) {skipped} of {len(folds)} skipped: fewer than 2 content classes spoken by both "
                          f"their training and their test speakers (classes shared per fold: {shared_per_fold})")
    return result


def speaker_probe(embeddings: np.ndarray, table: pd.DataFrame, seed: int = 0) -> dict:
    """Speaker-ID accuracy of a linear probe trained on half the contents and tested on the
    other half (so it cannot succeed by recognising the words).

    >>> table = pd.DataFrame({"speaker": list("abab"), "content": list("xxyy")})
    >>> speaker_probe(np.array([[1.0, 0.0], [0.0, 1.0]] * 2), table)
    {'accuracy': 1.0, 'chance': 0.5}
    """
    contents = np.array(sorted(set(table["content"].astype(str))))
    rng = np.random.default_rng(seed)
    test_contents = rng.permutation(contents)[: len(contents) // 2]
    test = table["content"].astype(str).isin(test_contents).to_numpy()
    speakers = table["speaker"].astype(str).to_numpy()
    predicted = _probe(embeddings[~test], speakers[~test], embeddings[test], seed)
    return {"accuracy": float(np.mean(predicted == speakers[test])), "chance": 1.0 / len(set(speakers))}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same N items
    (1 = same up to rotation and scale, 0 = unrelated).

    >>> a = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(linear_cka(a, 3 * a), 6)
    1.0
    """
    x = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, axis=0)
    cross = np.linalg.norm(x.T @ y) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def evaluate_systems(
    systems: Mapping[str, np.ndarray], table: pd.DataFrame, *, max_trials: int | None = None, seed: int = 0,
    speaker_id_probe: bool = True, trial_list: pd.DataFrame | None = None, official_split: bool = False,
    probes: bool = True, progress: bool = True,
) -> dict:
    """Score every system on the same trials and probe folds.

    systems: name -> float[N, D] aligned with `table` (which needs `speaker` and `content`,
    and may have `language`). Trials are all pairs of rows, streamed
    (`verification_all_pairs`); `max_trials` below that number scores a seeded sample of
    that many pairs instead (`make_trials`), and `trial_list` the trials of a list (`label,
    enroll, test`, see `trials_from_list`), both exactly. official_split: the keyword probe
    uses the corpus' train/test split. probes: False scores verification only (no keyword
    or speaker-ID probe). progress: print one line per system and stage with its time (to
    stdout, flushed, also when it is not a terminal).
    Returns {"trials": counts, "utterances", "speakers", "contents", "systems": {name:
    {"verification": ..., "keyword": ..., "speaker_id": ...}}}.

    >>> table = pd.DataFrame({"speaker": list("aabbcc"), "content": list("xyxyxy")})
    >>> vectors = np.array([[1, .1, 0], [1, -.1, 0], [0, 1, .1], [0, 1, -.1], [.1, 0, 1], [-.1, 0, 1]])
    >>> results = evaluate_systems({"toy": vectors}, table, progress=False)
    >>> results["trials"], results["systems"]["toy"]["verification"]["all"]["eer"]
    ({'total': 15, 'targets': 3, 'content_matched': 6}, 0.0)
    """
    n = len(table)
    for name, embeddings in systems.items():
        if len(embeddings) != n:
            raise EvaluationError(f"system {name!r}: {len(embeddings)} embeddings for {n} manifest rows")
    if n < 2:
        raise EvaluationError(f"need at least 2 utterances to make trials, got {n}")
    all_pairs = n * (n - 1) // 2
    if trial_list is not None:
        trials, kind = trials_from_list(table, trial_list), "trials from the list"
    elif max_trials is not None and max_trials < all_pairs:
        trials, kind = make_trials(table, max_trials=max_trials, seed=seed), f"sampled pairs (seed {seed})"
    else:
        trials, kind = None, "all pairs, streamed"
    counts = _trial_counts(trials) if trials is not None else _all_pair_counts(table)
    has_content = probes and len(set(_labels(table["content"]).tolist()) - {""}) >= 2

    def log(message: str) -> None:
        if progress:
            print(f"[evaluate] {message}", flush=True)

    log(f"{len(systems)} system(s), {n:,} utterances, {counts['total']:,} trials ({kind})")
    results = {}
    for k, (name, embeddings) in enumerate(systems.items(), start=1):
        label = f"system {k}/{len(systems)} {name}"
        started = time.perf_counter()
        entry = {"verification": verification(embeddings, trials) if trials is not None
                 else verification_all_pairs(embeddings, table)}
        log(f"{label}: verification {time.perf_counter() - started:.1f} s")
        # Probes need labelled content (VoxCeleb has none: content is "" throughout).
        if has_content:
            features = np.asarray(embeddings, dtype=np.float64)
            started = time.perf_counter()
            entry["keyword"] = keyword_probe(features, table, seed=seed, official_split=official_split)
            log(f"{label}: keyword probe {time.perf_counter() - started:.1f} s")
            if speaker_id_probe:
                started = time.perf_counter()
                entry["speaker_id"] = speaker_probe(features, table, seed=seed)
                log(f"{label}: speaker-ID probe {time.perf_counter() - started:.1f} s")
        results[name] = entry
    return {"trials": counts, "utterances": n, "speakers": int(table["speaker"].nunique()),
            "contents": int(table["content"].nunique()), "systems": results}


SUMMARY_METRICS = {
    "EER all": lambda e: e["verification"]["all"]["eer"],
    "EER matched": lambda e: e["verification"]["matched"]["eer"],
    "EER mismatched": lambda e: e["verification"]["mismatched"]["eer"],
    "EER same-lang": lambda e: e["verification"].get("same_language", {}).get("eer"),
    "EER cross-lang": lambda e: e["verification"].get("cross_language", {}).get("eer"),
    "keyword acc": lambda e: (e.get("keyword") or {}).get("accuracy"),
    "speaker-ID acc": lambda e: (e.get("speaker_id") or {}).get("accuracy"),
}
# Columns shown only when some system has them (corpora without languages keep their table).
LANGUAGE_METRICS = ("EER same-lang", "EER cross-lang")


def summarize_runs(runs: list[dict]) -> tuple[dict, str]:
    """Mean and standard deviation over several runs (e.g. seeds) of `evaluate_systems`
    results: ({system: {metric: [mean, std]}}, a Markdown table in %), systems in the
    first run's order; a metric missing from any run is left out, and the language
    columns appear only when some system has them.

    >>> one = {"systems": {"x": {"verification": {g: {"eer": e} for g, e in
    ...        (("all", .1), ("matched", .1), ("mismatched", .1))}, "keyword": {"accuracy": .5}}}}
    >>> two = {"systems": {"x": {"verification": {g: {"eer": e} for g, e in
    ...        (("all", .3), ("matched", .3), ("mismatched", .3))}, "keyword": {"accuracy": .5}}}}
    >>> summarize_runs([one, two])[0]["x"]["EER all"]
    [0.2, 0.1]
    """
    summary: dict[str, dict[str, list[float]]] = {}
    for name in runs[0]["systems"]:
        summary[name] = {}
        for metric, get in SUMMARY_METRICS.items():
            values = [get(run["systems"][name]) for run in runs if name in run["systems"]]
            if len(values) == len(runs) and all(v is not None for v in values):
                summary[name][metric] = [round(float(np.mean(values)), 6), round(float(np.std(values)), 6)]
    columns = [m for m in SUMMARY_METRICS
               if m not in LANGUAGE_METRICS or any(m in metrics for metrics in summary.values())]
    header = "| system | " + " | ".join(columns) + " |"
    lines = [f"Mean +- std over {len(runs)} runs, in %.", "", header, "|---|" + "---:|" * len(columns)]
    for name, metrics in summary.items():
        cells = [f"{100 * metrics[m][0]:.1f} +- {100 * metrics[m][1]:.1f}" if m in metrics else "-" for m in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def summary_table(results: dict) -> str:
    """A Markdown table: one row per system, EER all/matched/mismatched (%), EER
    same-language and cross-language (%, only when some system has those groups),
    minDCF(0.01), keyword probe accuracy (%) and speaker-ID probe accuracy (%); "-" where
    a value is missing or undefined.

    >>> results = {"systems": {"x": {"verification": {"all": {"eer": 0.1, "min_dcf_0.01": 0.5},
    ...            "matched": {"eer": 0.05}, "mismatched": {"eer": None}}, "keyword": {"accuracy": None}}}}
    >>> print(summary_table(results))
    | system | EER all | EER matched | EER mismatched | minDCF 0.01 | keyword acc | speaker-ID acc |
    |---|---:|---:|---:|---:|---:|---:|
    | x | 10.0 | 5.0 | - | 0.500 | - | - |
    """
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    def dcf(value):
        return "-" if value is None else f"{value:.3f}"

    columns = [("EER all", SUMMARY_METRICS["EER all"], pct), ("EER matched", SUMMARY_METRICS["EER matched"], pct),
               ("EER mismatched", SUMMARY_METRICS["EER mismatched"], pct)]
    if any(group in entry["verification"] for entry in results["systems"].values() for group in LANGUAGE_GROUPS):
        columns += [(m, SUMMARY_METRICS[m], pct) for m in LANGUAGE_METRICS]
    columns += [("minDCF 0.01", lambda e: e["verification"]["all"]["min_dcf_0.01"], dcf),
                ("keyword acc", SUMMARY_METRICS["keyword acc"], pct),
                ("speaker-ID acc", SUMMARY_METRICS["speaker-ID acc"], pct)]
    lines = ["| system | " + " | ".join(title for title, _, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, entry in results["systems"].items():
        lines.append(f"| {name} | " + " | ".join(show(get(entry)) for _, get, show in columns) + " |")
    return "\n".join(lines)
