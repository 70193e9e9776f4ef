"""Evaluation on real speech: speaker verification, keyword probes, and leakage.

Every system (a subspace of a trained model, a raw backbone layer, a baseline speaker
encoder) is a matrix of utterance embeddings `float[N, D]` aligned with the rows of one
manifest; every system is scored on the same trials and the same probe folds.

- Verification: cosine scores on trials (all pairs of the manifest, or a seeded sample),
  EER and minDCF over all trials, and separately over content-matched trials (both clips
  say the same thing) and content-mismatched ones: a speaker embedding that still
  carries content looks good on the first and bad on the second.
- Keyword probe: logistic regression on standardised embeddings, trained and tested on
  disjoint speakers, rotated over folds.
- Leakage: speaker EER and a speaker-ID probe from the content subspace, keyword accuracy
  from the speaker subspace, and linear CKA between subspaces.

>>> rng = np.random.default_rng(0)
>>> table = pd.DataFrame({"speaker": list("aabbcc") * 4, "content": list("xyxyxy") * 4})
>>> trials = make_trials(table)
>>> len(trials), int(trials["target"].sum())
(276, 84)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .metrics import eer, min_dcf

__all__ = [
    "cosine_scores",
    "evaluate_systems",
    "keyword_probe",
    "linear_cka",
    "make_trials",
    "speaker_probe",
    "verification",
]


def make_trials(table: pd.DataFrame, max_trials: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Trials from a manifest: every unordered pair of rows, or a seeded sample of them.

    Returns a DataFrame with `enroll`, `test` (row positions), `target` (same speaker)
    and `same_content` (same content label).
    """
    n = len(table)
    if n < 2:
        raise ValueError(f"need at least 2 utterances to make trials, got {n}")
    enroll, test = np.triu_indices(n, k=1)
    if max_trials is not None and len(enroll) > max_trials:
        keep = np.sort(np.random.default_rng(seed).choice(len(enroll), size=max_trials, replace=False))
        enroll, test = enroll[keep], test[keep]
    speakers = table["speaker"].astype(str).to_numpy()
    contents = table["content"].astype(str).to_numpy()
    return pd.DataFrame({
        "enroll": enroll, "test": test,
        "target": speakers[enroll] == speakers[test],
        "same_content": contents[enroll] == contents[test],
    })


def trials_from_list(table: pd.DataFrame, trial_list: pd.DataFrame, key: str = "trial_path") -> pd.DataFrame:
    """Trials from a verification list (`label, enroll, test`, as `corpora.read_trials`
    returns it), matched to manifest rows through the `key` column (VoxCeleb1's
    `trial_path`). The list's labels are kept as `target`.

    >>> table = pd.DataFrame({"trial_path": ["a/1.wav", "a/2.wav", "b/1.wav"], "speaker": list("aab"),
    ...                       "content": ["", "", ""]})
    >>> trials_from_list(table, pd.DataFrame({"label": [1, 0], "enroll": ["a/1.wav"] * 2,
    ...                                       "test": ["a/2.wav", "b/1.wav"]}))["test"].tolist()
    [1, 2]
    """
    if key not in table.columns:
        raise ValueError(f"the manifest has no {key!r} column to match the trial list's paths against")
    row = {path: i for i, path in enumerate(table[key].astype(str))}
    missing = sorted({p for p in (*trial_list["enroll"], *trial_list["test"]) if p not in row})
    if missing:
        raise ValueError(f"{len(missing)} trial-list path(s) are not in the manifest, e.g. {', '.join(missing[:3])}")
    enroll = trial_list["enroll"].map(row).to_numpy()
    test = trial_list["test"].map(row).to_numpy()
    contents = table["content"].astype(str).to_numpy()
    return pd.DataFrame({"enroll": enroll, "test": test, "target": trial_list["label"].astype(int).to_numpy() == 1,
                         "same_content": (contents[enroll] == contents[test]) & (contents[enroll] != "")})


def _unit(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain an all-zero or non-finite vector; cosine scoring is undefined")
    return embeddings / norms


def cosine_scores(embeddings: np.ndarray, trials: pd.DataFrame) -> np.ndarray:
    """Cosine similarity of each trial's two embeddings: float[T] for embeddings float[N, D]."""
    unit = _unit(embeddings)
    return np.einsum("nd,nd->n", unit[trials["enroll"].to_numpy()], unit[trials["test"].to_numpy()])


def verification(embeddings: np.ndarray, trials: pd.DataFrame) -> dict:
    """Cosine-scored EER and minDCF (p_target 0.01 and 0.05), overall and split by content.

    embeddings: float[N, D]. Rates are fractions (0.1 = 10 %). Each group records its
    trial counts; a group with no targets or no non-targets is reported as None.
    """
    scores = cosine_scores(embeddings, trials)
    target = trials["target"].to_numpy()
    same = trials["same_content"].to_numpy()
    result = {}
    for group, mask in (("all", np.ones_like(target)), ("matched", same), ("mismatched", ~same)):
        labels = target[mask].astype(int)
        n_target, n_nontarget = int(labels.sum()), int(len(labels) - labels.sum())
        entry = {"targets": n_target, "nontargets": n_nontarget, "eer": None, "min_dcf_0.01": None, "min_dcf_0.05": None}
        if n_target and n_nontarget:
            entry.update({
                "eer": eer(scores[mask], labels),
                "min_dcf_0.01": min_dcf(scores[mask], labels, p_target=0.01),
                "min_dcf_0.05": min_dcf(scores[mask], labels, p_target=0.05),
            })
        result[group] = entry
    return result


def _probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on separable toy data
        probe.fit(train_x, train_y)
    return probe.predict(test_x)


def speaker_folds(speakers: np.ndarray, test_speakers: int = 2) -> list[np.ndarray]:
    """Test-speaker groups for speaker-disjoint probes: sorted speakers cut into groups of
    `test_speakers` (FSDD's 6 speakers give 3 folds of train-on-4, test-on-2)."""
    names = sorted(set(speakers.tolist()))
    if len(names) <= test_speakers:
        raise ValueError(f"a speaker-disjoint probe needs more than {test_speakers} speakers, got {len(names)}")
    return [np.array(names[i : i + test_speakers]) for i in range(0, len(names), test_speakers)
            if len(names[i : i + test_speakers]) == test_speakers]


def keyword_probe(
    embeddings: np.ndarray, table: pd.DataFrame, test_speakers: int = 2, seed: int = 0, official_split: bool = False,
) -> dict:
    """Content (keyword) accuracy of a linear probe trained and tested on disjoint speakers.

    By default, speakers are cut into folds (`speaker_folds`) and the accuracy averaged
    over them. `official_split=True` trains on the rows whose split is "train" and tests on
    those whose split is "test" (Speech Commands' own lists, which are speaker-disjoint).
    Returns mean accuracy, per-fold accuracies, the label order and the confusion matrix
    summed over folds (rows = true, columns = predicted).
    """
    speakers = table["speaker"].astype(str).to_numpy()
    contents = table["content"].astype(str).to_numpy()
    labels = sorted(set(contents.tolist()))
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    accuracies = []
    if official_split:
        split = table["split"].astype(str).to_numpy()
        if not ((split == "train").any() and (split == "test").any()):
            raise ValueError(f"official_split needs rows of split 'train' and 'test'; splits present: {sorted(set(split))}")
        folds = [(split == "train", split == "test")]
    else:
        folds = [(~np.isin(speakers, held), np.isin(speakers, held)) for held in speaker_folds(speakers, test_speakers)]
    for train_rows, test in folds:
        predicted = _probe(embeddings[train_rows], contents[train_rows], embeddings[test], seed)
        accuracies.append(float(np.mean(predicted == contents[test])))
        for truth, guess in zip(contents[test], predicted):
            confusion[index[truth], index[guess]] += 1
    return {"accuracy": float(np.mean(accuracies)), "folds": accuracies, "labels": labels,
            "confusion": confusion.tolist(), "chance": 1.0 / len(labels)}


def speaker_probe(embeddings: np.ndarray, table: pd.DataFrame, seed: int = 0) -> dict:
    """Speaker-ID accuracy of a linear probe trained on half the contents and tested on the
    other half (so it cannot succeed by recognising the words)."""
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
) -> dict:
    """Score every system on the same trials and probe folds.

    systems: name -> float[N, D] aligned with `table` (which needs `speaker` and `content`).
    trial_list: score these trials (`label, enroll, test`, see `trials_from_list`) instead
    of all pairs. official_split: the keyword probe uses the corpus' train/test split.
    Returns {"trials": counts, "systems": {name: {"verification": ..., "keyword": ...,
    "speaker_id": ...}}}.
    """
    trials = (trials_from_list(table, trial_list) if trial_list is not None
              else make_trials(table, max_trials=max_trials, seed=seed))
    contents = set(table["content"].astype(str)) - {""}
    has_content = len(contents) >= 2
    results = {}
    for name, embeddings in systems.items():
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if len(embeddings) != len(table):
            raise ValueError(f"system {name!r}: {len(embeddings)} embeddings for {len(table)} manifest rows")
        entry = {"verification": verification(embeddings, trials)}
        # Probes need labelled content (VoxCeleb has none: content is "" throughout).
        if has_content:
            entry["keyword"] = keyword_probe(embeddings, table, seed=seed, official_split=official_split)
            if speaker_id_probe:
                entry["speaker_id"] = speaker_probe(embeddings, table, seed=seed)
        results[name] = entry
    return {"trials": {"total": len(trials), "targets": int(trials["target"].sum()),
                       "content_matched": int(trials["same_content"].sum())},
            "utterances": len(table), "speakers": int(table["speaker"].nunique()),
            "contents": int(table["content"].nunique()), "systems": results}


SUMMARY_METRICS = {
    "EER all": lambda e: e["verification"]["all"]["eer"],
    "EER matched": lambda e: e["verification"]["matched"]["eer"],
    "EER mismatched": lambda e: e["verification"]["mismatched"]["eer"],
    "keyword acc": lambda e: e.get("keyword", {}).get("accuracy"),
    "speaker-ID acc": lambda e: e.get("speaker_id", {}).get("accuracy"),
}


def summarize_runs(runs: list[dict]) -> tuple[dict, str]:
    """Mean and standard deviation over several runs (e.g. seeds) of `evaluate_systems`
    results: ({system: {metric: [mean, std]}}, a Markdown table in %), systems in the
    first run's order; a metric missing from any run is left out.

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
    header = "| system | " + " | ".join(SUMMARY_METRICS) + " |"
    lines = [f"Mean +- std over {len(runs)} runs, in %.", "", header, "|---|" + "---:|" * len(SUMMARY_METRICS)]
    for name, metrics in summary.items():
        cells = [f"{100 * metrics[m][0]:.1f} +- {100 * metrics[m][1]:.1f}" if m in metrics else "-" for m in SUMMARY_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def summary_table(results: dict) -> str:
    """A Markdown table: one row per system, EER all/matched/mismatched (%), minDCF(0.01),
    keyword probe accuracy (%) and speaker-ID probe accuracy (%)."""
    lines = ["| system | EER all | EER matched | EER mismatched | minDCF 0.01 | keyword acc | speaker-ID acc |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    for name, entry in results["systems"].items():
        v = entry["verification"]
        dcf = v["all"]["min_dcf_0.01"]
        lines.append(
            f"| {name} | {pct(v['all']['eer'])} | {pct(v['matched']['eer'])} | {pct(v['mismatched']['eer'])} | "
            f"{'-' if dcf is None else f'{dcf:.3f}'} | {pct(entry.get('keyword', {}).get('accuracy'))} | "
            f"{pct(entry.get('speaker_id', {}).get('accuracy'))} |")
    return "\n".join(lines)
