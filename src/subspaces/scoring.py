"""Trial lists, score files and Kaldi tables: the formats verification is scored in.

- Trial lists (`read_trial_list`), one trial a line, in any of three forms, one form a
  file: VoxCeleb's `1 enroll test` (label first, 1 = same speaker), Kaldi's
  `enroll test target` (or `nontarget`), or unlabelled `enroll test` (to score only).
- Score files (`write_scores`): `enroll test score`, plus `target` / `nontarget` when the
  trial was labelled, the form Kaldi's and the NIST scoring tools read.
- `wav.scp` (`read_wav_scp`): `utterance-id path` lines; piped commands (`... |`) are
  refused, since running them would mean running a shell.
- Vectors as Kaldi `ark` + `scp` (`write_kaldi_vectors`, with kaldiio).

`score_trials` embeds every clip a list names once and scores each trial by the
cosine in one subspace.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "kaldi.txt").write_text("a b target\\na c nontarget\\n")
>>> read_trial_list(folder / "kaldi.txt")
  enroll test  label
0      a    b      1
1      a    c      0
>>> _ = (folder / "vox.txt").write_text("1 a b\\n0 a c\\n")
>>> read_trial_list(folder / "vox.txt").equals(read_trial_list(folder / "kaldi.txt"))
True
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_atomic, write_text_atomic
from .errors import SubspacesError
from .metrics import unit_rows

__all__ = [
    "ScoringError",
    "TRIAL_FORMS",
    "read_trial_list",
    "read_wav_scp",
    "score_trials",
    "write_kaldi_vectors",
    "write_scores",
]

TRIAL_FORMS = {
    "voxceleb": "label enroll test, e.g. '1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav'",
    "kaldi": "enroll test target|nontarget, e.g. 'spk1-utt1 spk1-utt2 target'",
    "unlabelled": "enroll test (to score only)",
}
_KALDI_LABELS = {"target": 1, "nontarget": 0}


class ScoringError(SubspacesError, ValueError):
    """A trial list, wav.scp or score file that cannot be used; the message names the line."""


def _form(fields: list[str]) -> str | None:
    if len(fields) == 3 and fields[2] in _KALDI_LABELS:  # before VoxCeleb: Kaldi ids may be "0" or "1"
        return "kaldi"
    if len(fields) == 3 and fields[0] in ("0", "1"):
        return "voxceleb"
    if len(fields) == 2:
        return "unlabelled"
    return None


def read_trial_list(path: str | Path) -> pd.DataFrame:
    """A trial list as columns `enroll`, `test` and `label` (1 target, 0 non-target, -1
    for an unlabelled list), in file order. Every line must have the form of the first."""
    path = Path(path)
    if path.is_dir():
        raise ScoringError(f"{path}: a folder, not a trial list")
    if not path.is_file():
        raise ScoringError(f"{path}: no such trial list")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ScoringError(f"{path}: not a text file ({error})") from error
    rows, form = [], None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        found = _form(fields)
        if found is None or (form is not None and found != form):
            if form == "voxceleb" and len(fields) != 3:
                raise ScoringError(f"{path}:{number}: expected 3 fields 'label enroll test', got {len(fields)}: "
                                   f"{line.strip()!r}")
            if form is None and len(fields) == 3:
                raise ScoringError(f"{path}:{number}: label must be 1 (target) or 0 (non-target) first (VoxCeleb), "
                                   f"or target|nontarget last (Kaldi), got {line.strip()!r}")
            expected = TRIAL_FORMS[form] if form else "; or ".join(TRIAL_FORMS.values())
            raise ScoringError(f"{path}:{number}: not a trial line {line.strip()!r}; expected {expected}")
        form = found
        if form == "voxceleb":
            rows.append((fields[1], fields[2], int(fields[0])))
        elif form == "kaldi":
            rows.append((fields[0], fields[1], _KALDI_LABELS[fields[2]]))
        else:
            rows.append((fields[0], fields[1], -1))
    if not rows:
        raise ScoringError(f"{path}: the trial list is empty")
    return pd.DataFrame(rows, columns=["enroll", "test", "label"])


def read_wav_scp(path: str | Path) -> dict[str, Path]:
    """A Kaldi `wav.scp`: utterance id -> audio file (relative paths are relative to the
    file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"{path}: no such wav.scp" + (" (it is a folder)" if path.is_dir() else ""))
    table: dict[str, Path] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ScoringError(f"{path}:{number}: expected 'utterance-id path', got {line.strip()!r}")
        utt, target = fields[0], fields[1].strip()
        if target.endswith("|"):
            raise ScoringError(f"{path}:{number}: {utt} is a piped command ({target!r}); this tool reads audio files "
                               "only: write the audio out first (e.g. with sox) and list the files")
        if utt in table:
            raise ScoringError(f"{path}:{number}: utterance id {utt} is listed twice")
        file = Path(target)
        table[utt] = file if file.is_absolute() else path.parent / file
    if not table:
        raise ScoringError(f"{path}: the wav.scp is empty")
    return table


def resolver(*, root: str | Path | None = None, wav_scp: Mapping[str, Path] | None = None,
             manifest: pd.DataFrame | None = None) -> Callable[[str], Path]:
    """How a trial list's names become files: an id of `wav_scp`, then a manifest row's
    `utt_id`, `trial_path` or `path`, then a path under `root` (default: as written)."""
    by_name: dict[str, Path] = {}
    if manifest is not None:
        for column in ("path", "trial_path", "utt_id"):  # later columns win
            if column in manifest.columns:
                by_name.update(zip(manifest[column].astype(str), map(Path, manifest["path"].astype(str))))
    if wav_scp:
        by_name.update(wav_scp)
    base = Path(root) if root is not None else None

    def resolve(name: str) -> Path:
        if name in by_name:
            return by_name[name]
        return base / name if base is not None else Path(name)

    return resolve


def score_trials(encoder, trials: pd.DataFrame, resolve: Callable[[str], Path], *, subspace: str = "speaker",
                 batch_size: int = 16) -> pd.DataFrame:
    """`trials` (from `read_trial_list`) with a `score` column: the cosine of the two
    clips in `subspace` of `encoder` (a `SubspaceEncoder`). Every clip is embedded once."""
    if subspace not in encoder.subspaces:
        raise ScoringError(f"no subspace {subspace!r}; the model has {', '.join(encoder.subspaces)}")
    names = list(dict.fromkeys([*trials["enroll"], *trials["test"]]))
    files = [resolve(name) for name in names]
    missing = [str(f) for f in files if not Path(f).exists()]
    if missing:
        raise ScoringError(f"{len(missing)} of the {len(files)} clips the trial list names are missing, e.g. "
                           f"{', '.join(missing[:3])}; give --root, --wav-scp or --corpus to say where they are")
    vectors = unit_rows(encoder.embed(files, batch_size=batch_size)[subspace], [str(f) for f in files],
                        f"{subspace} vector")
    row = {name: i for i, name in enumerate(names)}
    enroll, test = trials["enroll"].map(row).to_numpy(), trials["test"].map(row).to_numpy()
    scored = trials.copy()
    scored["score"] = np.einsum("ij,ij->i", vectors[enroll], vectors[test])
    return scored


def write_scores(path: str | Path, scored: pd.DataFrame) -> Path:
    """Write `enroll test score [target|nontarget]` lines (the label where it is known),
    atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for enroll, test, score, label in zip(scored["enroll"], scored["test"], scored["score"],
                                          scored.get("label", pd.Series(-1, index=scored.index))):
        tail = {1: " target", 0: " nontarget"}.get(int(label), "")
        lines.append(f"{enroll} {test} {score:.6f}{tail}\n")
    write_text_atomic(path, "".join(lines))
    return path


def write_kaldi_vectors(ark: str | Path, ids: Sequence[str], vectors: np.ndarray) -> tuple[Path, Path]:
    """Write vectors (float32[N, D], one per id) as a Kaldi `ark` with its `scp` index beside it
    (`x.ark` -> `x.scp`), the form Kaldi's `ivector-*` and `copy-vector` tools read."""
    import kaldiio

    ark = Path(ark)
    if ark.suffix != ".ark":
        raise ScoringError(f"{ark}: a Kaldi archive must end in .ark")
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise ScoringError(f"{ark}: need one distinct id per vector, got {len(set(ids))} distinct ids for {len(vectors)}")
    if any(not name or any(c.isspace() for c in name) for name in ids):
        raise ScoringError(f"{ark}: Kaldi ids may not be empty or hold white space")
    scp = ark.with_suffix(".scp")
    ark.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: vector for name, vector in zip(ids, np.asarray(vectors, dtype=np.float32))}
    index, written = io.StringIO(), []

    def write(tmp: str) -> None:
        kaldiio.save_ark(tmp, arrays, scp=index)
        written.append(tmp)

    write_atomic(ark, write)
    # kaldiio indexed the file it wrote, the temporary one: point the index at the final name.
    write_text_atomic(scp, index.getvalue().replace(f" {written[0]}:", f" {ark.resolve()}:"))
    return ark, scp
