"""Manifests: one table row per utterance, the format every stage after audio reads.

Columns: `utt_id, path, speaker, content, text, duration_s, sample_rate, split, source`,
plus any other factor columns (e.g. `channel`). A manifest is a CSV or Parquet file;
relative `path`s are relative to the manifest's own folder (the dataset folder) and may
not climb out of it; absolute paths are taken as they are (e.g. a corpus elsewhere).

>>> import tempfile, pandas as pd
>>> folder = Path(tempfile.mkdtemp())
>>> rows = pd.DataFrame([dict(utt_id="a", path="a.flac", speaker="s1", content="yes", text="yes",
...                          duration_s=0.5, sample_rate=16000, split="train", source="espeak")])
>>> write_manifest(rows, folder / "manifest.csv")
>>> read_manifest(folder / "manifest.csv").loc[0, "speaker"]
's1'
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .atomic import write_atomic
from .errors import SubspacesError

__all__ = [
    "COLUMNS",
    "ManifestError",
    "audio_paths",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]

COLUMNS = ("utt_id", "path", "speaker", "content", "text", "duration_s", "sample_rate", "split", "source")
_STRING_COLUMNS = ("utt_id", "path", "speaker", "content", "text", "split", "source")


class ManifestError(SubspacesError, ValueError):
    """A manifest that cannot be used; the message names the file and every problem."""


def validate_manifest(table: pd.DataFrame, root: Path, name: str = "manifest") -> None:
    """Raise one `ManifestError` listing every problem: missing columns, empty or
    duplicate utt_ids, empty paths, relative paths that escape `root`, bad numbers."""
    problems = []
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {', '.join(missing)}; a manifest needs {', '.join(COLUMNS)}")
    if not (pd.api.types.is_object_dtype(table["path"]) or pd.api.types.is_string_dtype(table["path"])):
        raise ManifestError(f"{name}: the path column must be text (audio file paths), got {table['path'].dtype}")
    ids = table["utt_id"].astype(str)
    if (ids.str.len() == 0).any() or table["utt_id"].isna().any():
        problems.append("some rows have an empty utt_id")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        problems.append(f"{len(duplicated)} duplicate utt_id(s), e.g. {', '.join(map(str, duplicated[:3]))}")
    root = Path(root).resolve()
    escaping = []
    for utt_id, path in zip(ids, table["path"]):
        if not isinstance(path, str) or not path:
            missing_value = path is None or path is pd.NA or (isinstance(path, float) and math.isnan(path))
            empty = isinstance(path, str) or missing_value
            escaping.append(f"{utt_id} (empty path)" if empty else f"{utt_id} (path {path!r} is not text)")
            continue
        candidate = Path(path)
        if not candidate.is_absolute() and not (root / candidate).resolve().is_relative_to(root):
            escaping.append(f"{utt_id} ({path})")
    if escaping:
        problems.append(f"{len(escaping)} path(s) empty or outside the dataset folder {root}: {', '.join(escaping[:3])}")
    for column in ("duration_s", "sample_rate"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table.loc[values.isna() | (values <= 0), "utt_id"]
        if len(bad):
            problems.append(f"{len(bad)} row(s) with a missing or non-positive {column}, e.g. {', '.join(map(str, bad[:3]))}")
    if problems:
        raise ManifestError(f"{name}: " + "; ".join(problems))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a CSV or Parquet manifest. `table.attrs["root"]` is its folder.

    Factor columns are read as strings (speaker "007" stays "007").
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not a manifest file (.csv or .parquet)")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises many types for malformed files
        raise ManifestError(f"{path}: not a readable manifest ({type(error).__name__}: {error})") from error
    validate_manifest(table, path.parent, name=str(path))
    for column in _STRING_COLUMNS:
        table[column] = table[column].astype(str)
    table["duration_s"] = pd.to_numeric(table["duration_s"])
    table["sample_rate"] = pd.to_numeric(table["sample_rate"]).astype(int)
    table.attrs["root"] = str(path.parent.resolve())
    return table.reset_index(drop=True)


def write_manifest(table: pd.DataFrame, path: str | Path) -> None:
    """Validate and write atomically (temporary file, then rename): a crash never leaves
    a half-written manifest. The format follows the suffix: .parquet or .csv."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    validate_manifest(table, path.parent, name=str(path))
    columns = list(COLUMNS) + [c for c in table.columns if c not in COLUMNS]
    if path.suffix == ".parquet":
        write_atomic(path, lambda tmp: table[columns].to_parquet(tmp, index=False))
    else:
        write_atomic(path, lambda tmp: table[columns].to_csv(tmp, index=False))


def audio_paths(table: pd.DataFrame) -> list[Path]:
    """Absolute audio paths of a manifest's rows (relative ones resolved against its root)."""
    root = Path(table.attrs.get("root", "."))
    return [Path(p) if Path(p).is_absolute() else root / p for p in table["path"]]
