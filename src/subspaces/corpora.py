"""Real-speech corpora as manifests: FSDD, Speech Commands, VoxCeleb1, LibriSpeech, LibriTTS,
KLettres and KTuberling (Debian's recorded letters and words), a CSV.

Every reader returns a manifest (see `subspaces.manifest`): one row per utterance with
`utt_id, path, speaker, content, text, duration_s, sample_rate, split, source` plus the
corpus's own extra columns. Audio `path`s are absolute (the corpus usually lives outside
the folder a manifest is written to); `table.attrs["root"]` is the corpus folder, and
`relative_paths` turns paths into relative ones for a manifest written next to the data.
`duration_s` and `sample_rate` come from each file's header (`soundfile.info`), which
also proves the file is readable.

`load_corpus("KIND:PATH")` is the single entry point; plain `"fsdd"` is the bundled copy
of the Free Spoken Digit Dataset.

>>> table = load_corpus("fsdd", limit_per_speaker_digit=1)
>>> len(table), table["speaker"].nunique(), sorted(table["content"].unique())[:3]
(60, 6, ['eight', 'five', 'four'])
"""

from __future__ import annotations

import importlib.resources
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from .errors import SubspacesError
from .manifest import COLUMNS, validate_manifest
from .progress import progress_bar

__all__ = [
    "CORPUS_KINDS",
    "CorpusError",
    "DIGIT_WORDS",
    "SPEECH_COMMANDS_KEYWORDS",
    "SILENCE",
    "UNKNOWN",
    "fsdd_root",
    "load_corpus",
    "read_csv_corpus",
    "read_fsdd",
    "read_klettres",
    "read_ktuberling",
    "read_librispeech",
    "read_libritts",
    "read_speech_commands",
    "read_trials",
    "read_voxceleb1",
    "relative_paths",
    "write_silence_clips",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# The ten keywords of the 12-class Speech Commands task (Warden 2018, section 7), plus its
# two extra classes: silence (background noise only) and every other word.
SPEECH_COMMANDS_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
_BACKGROUND_NOISE = "_background_noise_"

# FSDD's own rule (its README): recordings 0-4 of each (digit, speaker) are the test set.
_FSDD_TEST_INDICES = range(5)
_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9]+)_(?P<index>\d+)\.wav$")
_SPEECH_COMMANDS_NAME = re.compile(r"(?P<speaker>[0-9a-f]+)_nohash_(?P<index>\d+)\.wav$")
_LIBRISPEECH_ID = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<utt>\d+)$")
_LIBRITTS_ID = re.compile(r"^(?P<speaker>\d+)_(?P<chapter>\d+)_(?P<rest>[0-9_]+)$")


class CorpusError(SubspacesError, ValueError):
    """A corpus folder, trial list or CSV that cannot be read; the message names the file
    and, where the layout is wrong, what layout was expected."""


def _audio_header(path: Path) -> tuple[float, int]:
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        raise CorpusError(f"{path}: cannot read the audio header ({error})") from error
    if info.frames <= 0 or info.samplerate <= 0:
        raise CorpusError(f"{path}: empty audio file ({info.frames} frames at {info.samplerate} Hz)")
    return info.frames / info.samplerate, int(info.samplerate)


def _to_manifest(rows: list[dict], root: Path, source: str) -> pd.DataFrame:
    """Rows (each with at least utt_id, path, speaker, content, text, split) -> validated manifest,
    reading every file's header for duration and sample rate."""
    if not rows:
        raise CorpusError(f"{root}: no utterances found for {source}")
    table = pd.DataFrame(rows)
    durations, rates = [], []
    for path in progress_bar(table["path"], total=len(table), desc=f"reading {source} headers", unit="file"):
        duration, rate = _audio_header(Path(path))
        durations.append(duration)
        rates.append(rate)
    table["duration_s"] = durations
    table["sample_rate"] = rates
    if "source" not in table.columns:
        table["source"] = source
    columns = list(COLUMNS) + [c for c in table.columns if c not in COLUMNS]
    table = table[columns].reset_index(drop=True)
    try:
        validate_manifest(table, root, name=f"{source} corpus at {root}")
    except ValueError as error:
        raise CorpusError(str(error)) from error
    table.attrs["root"] = str(root)
    return table


def _require_folder(path: str | Path, expected: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CorpusError(f"{path}: no such folder; expected {expected}")
    return path


def relative_paths(table: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """A copy whose audio paths inside `folder` are relative to it (others stay absolute),
    for a manifest written into `folder`, next to the data; `attrs["root"]` becomes `folder`.

    >>> table = load_corpus("fsdd", limit_per_speaker_digit=1)
    >>> relative_paths(table, fsdd_root())["path"].iloc[0].startswith("recordings/")
    True
    """
    folder = Path(folder).expanduser().resolve()
    current_root = Path(table.attrs.get("root", "."))
    out = table.copy()
    paths = []
    for path in table["path"]:
        absolute = (Path(path) if Path(path).is_absolute() else current_root / path).resolve()
        paths.append(absolute.relative_to(folder).as_posix() if absolute.is_relative_to(folder) else str(absolute))
    out["path"] = paths
    out.attrs["root"] = str(folder)
    return out


# ---------------------------------------------------------------------------------------
# FSDD


def fsdd_root() -> Path:
    """The bundled Free Spoken Digit Dataset (its `recordings/` folder, `speakers.csv`, license).

    >>> (fsdd_root() / "recordings").is_dir()
    True
    """
    root = Path(str(importlib.resources.files("subspaces").joinpath("data", "fsdd")))
    if not (root / "recordings").is_dir():
        raise CorpusError(f"{root}: the bundled FSDD recordings are missing; reinstall speech-subspaces")
    return root


def _named_files(files: list[Path], folder: Path, match, corpus: str, pattern: str, example: str):
    """(file, match) for each of `files`, refusing an empty list and any file whose name
    `match(name)` does not match, with the corpus' naming `pattern` in the message."""
    if not files:
        raise CorpusError(f"{folder}: no .wav files; expected {corpus}'s {pattern} recordings")
    for file in files:
        found = match(file.name)
        if found is None:
            raise CorpusError(f"{file}: not a file name of {corpus}; expected {pattern.split('/')[-1]}, e.g. {example}")
        yield file, found


def read_fsdd(
    root: str | Path | None = None, *, limit_per_speaker_digit: int | None = None, seed: int | None = 0
) -> pd.DataFrame:
    """The Free Spoken Digit Dataset: `{digit}_{speaker}_{index}.wav` files.

    `root` is the folder holding `recordings/` (or the recordings folder itself); None
    means the bundled copy. content and text are the digit as a word ("zero"); speaker is
    the speaker's name; split follows upstream: indices 0-4 are `test`, the rest `train`.
    If `speakers.csv` is present its other columns (gender, accent, ...) are added.

    `limit_per_speaker_digit` keeps that many clips of each (speaker, digit): drawn at
    random with `seed`, or the lowest indices when `seed` is None.

    >>> table = read_fsdd()
    >>> len(table), table["speaker"].nunique(), int((table["split"] == "test").sum())
    (3000, 6, 300)
    """
    root = fsdd_root() if root is None else _require_folder(root, "an FSDD folder with recordings/*.wav")
    recordings = root / "recordings" if (root / "recordings").is_dir() else root
    rows = []
    for file, match in _named_files(sorted(recordings.glob("*.wav")), recordings, _FSDD_NAME.match,
                                    "FSDD", "{digit}_{speaker}_{index}.wav", "3_theo_12.wav"):
        index = int(match["index"])
        word = DIGIT_WORDS[int(match["digit"])]
        rows.append(dict(
            utt_id=file.stem, path=str(file), speaker=match["speaker"], content=word, text=word,
            split="test" if index in _FSDD_TEST_INDICES else "train", source="fsdd", index=index,
        ))
    if limit_per_speaker_digit is not None:
        rows = _limit_per_group(rows, limit_per_speaker_digit, seed)
    table = _to_manifest(rows, root, "fsdd")
    speakers_csv = root / "speakers.csv"
    if speakers_csv.is_file():
        speakers = pd.read_csv(speakers_csv, dtype=str, keep_default_na=False)
        if "speaker" not in speakers.columns:
            raise CorpusError(f"{speakers_csv}: needs a 'speaker' column, has {', '.join(speakers.columns)}")
        extra = speakers.drop(columns=[c for c in speakers.columns if c in COLUMNS and c != "speaker"])
        attrs = table.attrs
        table = table.merge(extra, on="speaker", how="left").fillna("")
        table.attrs = attrs
    return table


def _limit_per_group(rows: list[dict], limit: int, seed: int | None) -> list[dict]:
    if limit < 1:
        raise CorpusError(f"limit_per_speaker_digit must be at least 1, got {limit}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["speaker"], row["content"]), []).append(row)
    rng = np.random.default_rng(seed)
    kept = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda row: row["index"])
        if seed is None:
            kept.extend(members[:limit])
        else:
            chosen = rng.permutation(len(members))[:limit]
            kept.extend(members[i] for i in sorted(chosen))
    return sorted(kept, key=lambda row: row["path"])


# ---------------------------------------------------------------------------------------
# Speech Commands


def _read_split_list(path: Path, root: Path) -> set[str]:
    names = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not (root / line).is_file():
            raise CorpusError(f"{path}:{number}: lists {line}, which is not in {root}")
        names.add(line)
    return names


def read_speech_commands(
    root: str | Path, *, label_set: str = "all", default_split: str | None = None
) -> pd.DataFrame:
    """Speech Commands v0.01 or v0.02: one folder per word of `{speaker}_nohash_{i}.wav`.

    speaker is the hash prefix of the file name; text is the spoken word (the folder).
    split: files named in `validation_list.txt` are `validation`, in `testing_list.txt`
    `test`, the rest `train`. A folder without those lists (the separate test-set archive)
    needs `default_split` (e.g. "test"), which is then given to every clip.

    `label_set` picks content: "all" (every word: 30 in v0.01, 35 in v0.02) or "12" (the ten
    keywords, `_unknown_` for every other word, `_silence_` for clips in a `_silence_` folder,
    as the test-set archive has; speaker "" there). `_background_noise_` holds no utterances
    and is skipped; `write_silence_clips` cuts silence clips from it.

    >>> read_speech_commands("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected ...
    """
    if label_set not in ("all", "12"):
        raise CorpusError(f"label_set must be 'all' or '12', got {label_set!r}")
    root = _require_folder(
        root, "a Speech Commands folder with one subfolder per word and validation_list.txt, testing_list.txt"
    )
    lists = {"validation": root / "validation_list.txt", "test": root / "testing_list.txt"}
    present = {split: path for split, path in lists.items() if path.is_file()}
    if len(present) == 1:
        missing = next(path for split, path in lists.items() if split not in present)
        other = next(iter(present.values())).name
        raise CorpusError(f"{missing}: missing, while {other} is present; a Speech Commands release has both")
    if not present and default_split is None:
        raise CorpusError(
            f"{root}: no validation_list.txt or testing_list.txt; a Speech Commands release has them at "
            "its top level. For a folder without them (the test-set archive) pass default_split='test'."
        )
    split_of = {name: split for split, path in present.items() for name in _read_split_list(path, root)}
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and p.name != _BACKGROUND_NOISE and not p.name.startswith(".")
    )
    if label_set == "all":
        folders = [p for p in folders if p.name not in (SILENCE, UNKNOWN)]
    rows = []
    for folder in folders:
        for file in sorted(folder.glob("*.wav")):
            relative = f"{folder.name}/{file.name}"
            if folder.name == SILENCE:
                speaker, word = "", ""
            else:
                match = _SPEECH_COMMANDS_NAME.search(file.name)
                if match is None:
                    raise CorpusError(f"{file}: not a Speech Commands file name; expected {{speaker}}_nohash_{{i}}.wav")
                speaker, word = match["speaker"], "" if folder.name == UNKNOWN else folder.name
            if label_set == "all" or folder.name in SPEECH_COMMANDS_KEYWORDS + (SILENCE,):
                content = folder.name
            else:
                content = UNKNOWN
            split = split_of.get(relative, "train") if present else default_split
            rows.append(dict(utt_id=f"{folder.name}-{file.stem}", path=str(file), speaker=speaker,
                             content=content, text=word, split=split, source="speech-commands"))
    if not rows:
        raise CorpusError(f"{root}: no word folders with .wav files; expected e.g. {root}/yes/0a7c2a8d_nohash_0.wav")
    return _to_manifest(rows, root, "speech-commands")


def write_silence_clips(
    root: str | Path, out_dir: str | Path, count: int, *, split: str = "test", seconds: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Cut `count` clips of `seconds` from the recordings in `root/_background_noise_` into
    `out_dir/_silence_/`, and return their manifest rows (content `_silence_`, speaker "").

    This is how the 12-class task gets its silence class from a full release, which has no
    silence clips of its own (Warden 2018 draws them from these noise files the same way).
    The noise files are shared by every split, so silence clips of different splits may
    overlap in source audio. Each clip is written to a temporary file and renamed.

    >>> write_silence_clips("/no/such/folder", "/tmp/out", 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder/_background_noise_: no such folder; expected ...
    """
    if count < 1 or seconds <= 0:
        raise CorpusError(f"count must be at least 1 and seconds positive, got count={count}, seconds={seconds}")
    noise_dir = _require_folder(Path(root) / _BACKGROUND_NOISE, "Speech Commands' _background_noise_/*.wav")
    noise_files = sorted(noise_dir.glob("*.wav"))
    if not noise_files:
        raise CorpusError(f"{noise_dir}: no .wav files")
    out = Path(out_dir).expanduser().resolve() / SILENCE
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in tqdm(range(count), desc="cutting silence clips", unit="clip", disable=None):
        source = noise_files[rng.integers(len(noise_files))]
        info = sf.info(str(source))
        length = int(round(seconds * info.samplerate))
        if info.frames < length:
            raise CorpusError(f"{source}: {info.frames / info.samplerate:.2f} s long, shorter than one {seconds} s clip")
        start = int(rng.integers(info.frames - length + 1))
        wave, rate = sf.read(str(source), start=start, frames=length, dtype="float32", always_2d=True)
        target = out / f"{split}_silence_{i:05d}.wav"
        temporary = target.with_name(f".{target.name}.tmp")
        sf.write(str(temporary), wave.mean(axis=1), rate, format="WAV")
        temporary.replace(target)
        rows.append(dict(utt_id=f"{SILENCE}-{split}-{i:05d}", path=str(target), speaker="", content=SILENCE,
                         text="", split=split, source="speech-commands", noise_file=source.name))
    return _to_manifest(rows, out.parent, "speech-commands")


# ---------------------------------------------------------------------------------------
# VoxCeleb1


def read_trials(path: str | Path) -> pd.DataFrame:
    """A labelled verification trial list, VoxCeleb's `label enroll test` (veri_test2.txt)
    or Kaldi's `enroll test target|nontarget` (`scoring.read_trial_list` reads both).

    Returns columns `label` (int, 1 = same speaker, 0 = different), `enroll`, `test`
    (names as written: paths relative to the corpus's wav/ folder for VoxCeleb1, or the
    manifest's utt_id or path for any other corpus).

    >>> import tempfile
    >>> trials = Path(tempfile.mkdtemp()) / "trials.txt"
    >>> _ = trials.write_text("1 id1/a/00001.wav id1/b/00002.wav\\n0 id1/a/00001.wav id2/c/00001.wav\\n")
    >>> read_trials(trials)["label"].tolist()
    [1, 0]
    """
    from .scoring import ScoringError, read_trial_list

    try:
        table = read_trial_list(path)
    except ScoringError as error:
        raise CorpusError(str(error)) from None
    if (table["label"] < 0).any():
        raise CorpusError(f"{path}: an unlabelled trial list (enroll test); evaluation needs labels: "
                          "'1 enroll test' (VoxCeleb) or 'enroll test target|nontarget' (Kaldi); "
                          "`subspaces score` scores unlabelled lists")
    return table[["label", "enroll", "test"]]


def read_voxceleb1(root: str | Path, *, trials: str | Path | None = None) -> pd.DataFrame:
    """VoxCeleb1: `wav/{speaker_id}/{video_id}/{utt}.wav` under `root` (or `root` is wav/ itself).

    speaker is the speaker id; content is "" because VoxCeleb has no content label (a video
    id is a recording session, not what was said); text is "". Extra columns: `video`, and
    `trial_path` (`{speaker}/{video}/{utt}.wav`, the form trial lists use). split is `test`.
    With `trials`, only the utterances a trial list names are read, and a trial naming a
    missing file is an error.

    >>> read_voxceleb1("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected ...
    """
    root = _require_folder(root, "a VoxCeleb1 folder with wav/{speaker_id}/{video_id}/{utt}.wav")
    wav = root / "wav" if (root / "wav").is_dir() else root
    if trials is not None:
        trial_table = read_trials(trials)
        names = sorted(set(trial_table["enroll"]) | set(trial_table["test"]))
        relatives = [Path(name) for name in names]
        odd = [name for name, relative in zip(names, relatives) if len(relative.parts) != 3 or ".." in relative.parts]
        if odd:
            raise CorpusError(f"{trials}: trial paths must be {{speaker_id}}/{{video_id}}/{{utt}}.wav, got {odd[0]!r}")
        missing = [name for name in names if not (wav / name).is_file()]
        if missing:
            raise CorpusError(
                f"{trials}: {len(missing)} of {len(names)} utterance(s) are not under {wav}, "
                f"e.g. {', '.join(missing[:3])}"
            )
    else:
        relatives = [file.relative_to(wav) for file in sorted(wav.glob("*/*/*.wav"))]
        if not relatives:
            raise CorpusError(
                f"{wav}: no .wav files; expected wav/{{speaker_id}}/{{video_id}}/{{utt}}.wav, "
                "e.g. wav/id10270/5r0dWxy17C8/00001.wav"
            )
    rows = []
    for relative in relatives:
        file = wav / relative
        speaker, video, _ = relative.parts
        rows.append(dict(utt_id=f"{speaker}-{video}-{file.stem}", path=str(file), speaker=speaker, content="",
                         text="", split="test", source="voxceleb1", video=video, trial_path=relative.as_posix()))
    return _to_manifest(rows, root, "voxceleb1")


# ---------------------------------------------------------------------------------------
# LibriSpeech and LibriTTS


def _split_of_subset(subset: str) -> str:
    """train-clean-100 -> train, dev-* -> validation, test-* (and anything else) -> test."""
    if subset.startswith("train"):
        return "train"
    if subset.startswith("dev"):
        return "validation"
    return "test"


def read_librispeech(root: str | Path) -> pd.DataFrame:
    """LibriSpeech: `{speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac` with one
    `{speaker}-{chapter}.trans.txt` per chapter, anywhere under `root` (a subset such as
    test-clean, or the LibriSpeech folder holding several).

    content and text are the transcript; extra columns `chapter` and `subset` (the folder
    above the speakers); split from the subset name: train-* train, dev-* validation, else test.

    >>> read_librispeech("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected ...
    """
    root = _require_folder(
        root, "a LibriSpeech folder with {speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac and *.trans.txt"
    )
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise CorpusError(
            f"{root}: no *.trans.txt files; expected LibriSpeech's {{speaker}}/{{chapter}}/{{speaker}}-{{chapter}}.trans.txt"
        )
    rows = []
    for transcript in transcripts:
        subset = transcript.parent.parent.parent.name
        for number, line in enumerate(transcript.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            match = _LIBRISPEECH_ID.match(utt_id)
            if match is None or not text:
                raise CorpusError(
                    f"{transcript}:{number}: expected '{{speaker}}-{{chapter}}-{{utt}} TRANSCRIPT', got {line!r}"
                )
            audio = transcript.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise CorpusError(f"{transcript}:{number}: no audio file {audio}")
            rows.append(dict(
                utt_id=utt_id, path=str(audio), speaker=match["speaker"], content=text, text=text,
                split=_split_of_subset(subset), source="librispeech", chapter=match["chapter"], subset=subset,
            ))
    return _to_manifest(rows, root, "librispeech")


def read_libritts(root: str | Path, *, transcript: str = "normalized") -> pd.DataFrame:
    """LibriTTS: `{speaker}/{chapter}/{speaker}_{chapter}_{...}.wav`, each with a
    `.normalized.txt` and/or `.original.txt` beside it, anywhere under `root`.

    `transcript` picks which text to use ("normalized" or "original"); a clip without it is
    an error. content and text are that transcript; extra columns and split as for
    `read_librispeech`.

    >>> read_libritts("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected ...
    """
    if transcript not in ("normalized", "original"):
        raise CorpusError(f"transcript must be 'normalized' or 'original', got {transcript!r}")
    root = _require_folder(
        root, "a LibriTTS folder with {speaker}/{chapter}/{speaker}_{chapter}_*.wav and .normalized.txt"
    )
    rows = []
    for file, match in _named_files(sorted(root.rglob("*.wav")), root, lambda name: _LIBRITTS_ID.match(Path(name).stem),
                                    "LibriTTS", "{speaker}/{chapter}/{speaker}_{chapter}_{...}.wav",
                                    "84_121123_000007_000001.wav"):
        text_file = file.with_name(f"{file.stem}.{transcript}.txt")
        if not text_file.is_file():
            raise CorpusError(f"{file}: no transcript {text_file.name} beside it")
        text = " ".join(text_file.read_text().split())
        if not text:
            raise CorpusError(f"{text_file}: empty transcript")
        subset = file.parent.parent.parent.name
        rows.append(dict(utt_id=file.stem, path=str(file), speaker=match["speaker"], content=text, text=text,
                         split=_split_of_subset(subset), source="libritts", chapter=match["chapter"], subset=subset))
    return _to_manifest(rows, root, "libritts")


# ---------------------------------------------------------------------------------------
# Any CSV


def read_csv_corpus(path: str | Path) -> pd.DataFrame:
    """Any CSV with at least `path, speaker, content` columns, one row per clip.

    Relative paths are taken relative to the CSV's folder. Missing columns are filled:
    utt_id from the file stem, text = content, split "test", source = the CSV's name;
    duration_s and sample_rate always come from the audio header. Other columns are kept.

    >>> read_csv_corpus("/no/such.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such.csv: no such CSV file; expected columns path, speaker, content ...
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory, not a CSV file; give the CSV that lists the clips "
                          "(columns path, speaker, content)")
    if not path.is_file():
        raise CorpusError(
            f"{path}: no such CSV file; expected columns path, speaker, content "
            "(and optionally utt_id, text, split, source)"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises several types for malformed CSVs
        raise CorpusError(f"{path}: not a readable CSV ({type(error).__name__}: {error})") from error
    missing = [c for c in ("path", "speaker", "content") if c not in table.columns]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(table.columns)}")
    for column in ("path", "speaker", "content"):
        empty = np.flatnonzero(table[column].str.strip() == "")
        if len(empty):
            lines = ", ".join(str(i + 2) for i in empty[:5])  # +2: header line, 1-based
            raise CorpusError(f"{path}: empty {column} on line(s) {lines}")
    folder = path.parent.resolve()
    audio = [Path(p).expanduser() if Path(p).expanduser().is_absolute() else folder / p for p in table["path"]]
    absent = [(i, p) for i, p in enumerate(audio) if not p.is_file()]
    if absent:
        examples = ", ".join(f"line {i + 2}: {p}" for i, p in absent[:3])
        raise CorpusError(f"{path}: {len(absent)} audio file(s) not found, e.g. {examples}")
    table["path"] = [str(p.resolve()) for p in audio]
    if "utt_id" not in table.columns:
        table["utt_id"] = [p.stem for p in audio]
    duplicated = table["utt_id"][table["utt_id"].duplicated()].unique()
    if len(duplicated):
        raise CorpusError(
            f"{path}: utt_id {', '.join(duplicated[:3])} repeated; add a unique utt_id column "
            "(file stems repeat when files in different folders share a name)"
        )
    if "text" not in table.columns:
        table["text"] = table["content"]
    if "split" not in table.columns:
        table["split"] = "test"
    if "source" not in table.columns:
        table["source"] = path.stem
    table = table.drop(columns=[c for c in ("duration_s", "sample_rate") if c in table.columns])
    return _to_manifest(table.to_dict("records"), folder, path.stem)


# ---------------------------------------------------------------------------------------
# KDE's educational recordings in Debian main: KLettres and KTuberling (development data)
#
# Both are recordings of real people, one language folder each, installed by Debian's
# `klettres-data` and `ktuberling-data` packages (GPL-2+; never bundled here). One
# language is mostly one person and each person is one recording session, so speaker,
# language and channel are confounded: evaluate.py's same-language trials exist for that.

KLETTRES_ROOT = Path("/usr/share/klettres")
KTUBERLING_ROOT = Path("/usr/share/ktuberling")

# Who recorded each KLettres folder, from the KLettres handbook's "Credits and License"
# chapter (doc/index.docbook in KDE's klettres repository), or from the files' own Vorbis
# ARTIST tags (lt, ru, nb). A folder credited to two people is "mixed": its label is the
# folder, and some of its same-speaker trials may pair two people. Folders not named here
# are "assumed" to be one person each.
_KLETTRES_CREDITS = {
    "cs": ("Eva Mikulčíková", "credited"),
    "da": ("Erik Kjaer Pedersen", "credited"),
    "de": ("Helmut Kriege", "credited"),
    "en": ("Robert Wadley", "credited"),
    "es": ("Ana Belén Caballero and Juan Pedro Paredes", "mixed"),
    "fr": ("Ludovic Grossard", "credited"),
    "it": ("Pietro Pasotti", "credited"),
    "nl": ("Geert Stams", "credited"),
    "lt": ("Liudas Ališauskas", "tagged"),
    "ru": ("Dashk0", "tagged"),
    "nb": ("Johnstad/Gabor", "mixed"),
}
# KTuberling: the handbook credits John Calhoun with the original English sounds; the
# other names come from each file's ARTIST tag. Short forms of one name are merged.
_KTUBERLING_CREDITS = {"en": ("John Calhoun", "credited")}
_ARTIST_ALIASES = {"Bernat": "Bernat Mas"}
# A tag naming two people ("A and B", "A / B") cannot say which of them speaks a file.
_SEVERAL_PEOPLE = re.compile(r"\band\b|/|&|,")
SPEAKER_CONFIDENCE = ("tagged", "credited", "mixed", "assumed")


def _install_hint(package: str) -> str:
    return f"install it with `apt-get install {package}` (Debian main, GPL), or pass the folder it was copied to"


def _artist(path: Path) -> str:
    """The file's ARTIST tag (Vorbis comment or WAV INFO), "" when it has none."""
    try:
        with sf.SoundFile(str(path)) as handle:
            return (handle.artist or "").strip()
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        raise CorpusError(f"{path}: cannot read the audio header ({error})") from error


def _sound_entries(xml_file: Path, sections: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(section, name, file) for every <sound name= file=> in the given sections
    ("" means anywhere) of a KLettres sounds.xml or a KTuberling .soundtheme."""
    import xml.etree.ElementTree as ElementTree

    try:
        tree = ElementTree.parse(xml_file)
    except (ElementTree.ParseError, OSError) as error:
        raise CorpusError(f"{xml_file}: not a readable sound list ({error})") from error
    entries = []
    for section in sections:
        parents = [tree.getroot()] if not section else tree.getroot().iter(section)
        for parent in parents:
            for sound in parent.iter("sound"):
                name, file = sound.get("name"), sound.get("file")
                if not name or not file:
                    raise CorpusError(f"{xml_file}: a <sound> without name= or file= ({ElementTree.tostring(sound)[:80]!r})")
                entries.append((section, name.strip(), file.strip()))
    return entries


def _shipped(entries: list[tuple], folder: Path, listing: Path) -> list[tuple]:
    """The entries (tuples ending in a file path relative to `folder`) whose file exists.
    Debian ships some locales' lists without any of their sounds (KLettres id and nn,
    KTuberling id): those give nothing, silently; a list missing only some of its files
    (KLettres ml: 3) warns, naming `listing`."""
    kept = [entry for entry in entries if (folder / entry[-1]).is_file()]
    if kept and len(kept) < len(entries):
        missing = next(entry[-1] for entry in entries if entry not in kept)
        warnings.warn(f"{listing}: {len(entries) - len(kept)} listed file(s) are not in {folder} and are skipped, "
                      f"e.g. {missing}", stacklevel=3)
    return kept


def _language(locale: str) -> str:
    """'en_GB' -> 'en', 'sr@latin' -> 'sr', 'pt_BR' -> 'pt'."""
    return re.split(r"[_@]", locale)[0]


def _drop_duplicate_audio(rows: list[dict]) -> tuple[list[dict], int]:
    """Keep the first row of every byte-identical audio file (rows in sorted locale order,
    so 'sr' is kept and its 'sr@latin' copy dropped)."""
    import hashlib

    seen, kept = set(), []
    for row in rows:
        digest = hashlib.sha1(Path(row["path"]).read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(row)
    return kept, len(rows) - len(kept)


def _finish_kde(rows: list[dict], root: Path, source: str) -> pd.DataFrame:
    rows, duplicates = _drop_duplicate_audio(rows)
    table = _to_manifest(rows, root, source)
    table.attrs["dropped_duplicates"] = duplicates
    return table


def read_klettres(root: str | Path | None = None) -> pd.DataFrame:
    """KLettres' recorded letters and syllables (Debian `klettres-data`), about 20 languages.

    `root` is the folder with one `<locale>/sounds.xml` per language (default
    /usr/share/klettres). content is `<language>:<NAME>` (en and en_GB share "en:A"), text
    the letter or syllable, `kind` "alphabet" or "syllable". speaker is the credited person
    (see `_KLETTRES_CREDITS`) or `klettres-<locale>`; `confidence` says how sure that label
    is (one of SPEAKER_CONFIDENCE) and `credit` whom the credits name. split is "dev":
    this is development data, for choosing settings. Byte-identical copies are dropped.

    >>> read_klettres("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected KLettres' ...
    """
    root = _require_folder(root if root is not None else KLETTRES_ROOT,
                           f"KLettres' <locale>/sounds.xml folders; {_install_hint('klettres-data')}")
    rows = []
    for xml_file in sorted(root.glob("*/sounds.xml")):
        locale = xml_file.parent.name
        entries = _shipped(_sound_entries(xml_file, ("alphabet", "syllables")), root, xml_file)
        credit, confidence = _KLETTRES_CREDITS.get(locale, ("", "assumed"))
        speaker = credit if confidence in ("credited", "tagged") else f"klettres-{locale}"
        for section, name, file in entries:
            path = root / file
            language = _language(locale)
            rows.append(dict(
                utt_id=f"klettres-{locale}-{section}-{Path(file).stem}", path=str(path), speaker=speaker,
                content=f"{language}:{name}", text=name, split="dev", source="klettres", language=language,
                locale=locale, kind="alphabet" if section == "alphabet" else "syllable",
                confidence=confidence, credit=credit,
            ))
    if not rows:
        raise CorpusError(f"{root}: no <locale>/sounds.xml with sounds; {_install_hint('klettres-data')}")
    return _finish_kde(rows, root, "klettres")


def read_ktuberling(root: str | Path | None = None) -> pd.DataFrame:
    """KTuberling's recorded object words (Debian `ktuberling-data`), 20-odd languages.

    `root` is the folder holding `sounds/<locale>.soundtheme` (default /usr/share/ktuberling;
    the `sounds` folder itself also works). `concept` is the theme's sound name, the same
    in every language ("ball", "egypt_camel"); content is `<language>:<concept>`. speaker
    is the file's ARTIST tag when it names one person ("tagged"; Catalan has six people),
    the handbook's credit (English: John Calhoun), or else `ktuberling-<locale>`
    ("assumed"; a tag naming two people is "mixed"). A file listed under several names is
    one row (its first name); byte-identical copies (the Serbian script variants) are
    dropped. split is "dev".

    >>> read_ktuberling("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: /no/such/folder: no such folder; expected KTuberling's ...
    """
    root = _require_folder(root if root is not None else KTUBERLING_ROOT,
                           f"KTuberling's sounds/<locale>.soundtheme files; {_install_hint('ktuberling-data')}")
    sounds = root / "sounds" if (root / "sounds").is_dir() else root
    rows, listed = [], set()
    for theme in sorted(sounds.glob("*.soundtheme")):
        locale = theme.stem
        language = _language(locale)
        entries = []
        for _, concept, file in _sound_entries(theme, ("",)):
            if sounds / file not in listed:
                listed.add(sounds / file)
                entries.append((concept, file))
        entries = _shipped(entries, sounds, theme)
        artists = [_ARTIST_ALIASES.get(a, a) for a in (_artist(sounds / file) for _, file in entries)]
        # A folder tagged by one person except for a few files (Walloon: 1 of 71) is taken
        # to be that person throughout; a larger untagged part (Danish: 126 of 166) is
        # another, unnamed person.
        named = {a for a in artists if a and not _SEVERAL_PEOPLE.search(a)}
        majority = next(iter(named)) if len(named) == 1 and artists.count("") <= 0.1 * len(artists) else ""
        for (concept, file), artist in zip(entries, artists):
            if artist:
                credit, confidence = artist, "mixed" if _SEVERAL_PEOPLE.search(artist) else "tagged"
            elif majority:
                credit, confidence = majority, "assumed"
            else:
                credit, confidence = _KTUBERLING_CREDITS.get(locale, ("", "assumed"))
            speaker = credit if credit and confidence != "mixed" else f"ktuberling-{locale}"
            rows.append(dict(
                utt_id=f"ktuberling-{locale}-{Path(file).stem}", path=str(sounds / file), speaker=speaker,
                content=f"{language}:{concept}", text=concept, split="dev", source="ktuberling",
                language=language, locale=locale, concept=concept, confidence=confidence, credit=credit,
            ))
    if not rows:
        raise CorpusError(f"{sounds}: no <locale>.soundtheme files with sounds; {_install_hint('ktuberling-data')}")
    return _finish_kde(rows, root, "ktuberling")


# ---------------------------------------------------------------------------------------
# The entry point

_READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "fsdd": read_fsdd,
    "speech-commands": lambda path, **options: read_speech_commands(path, label_set="all", **options),
    "speech-commands-12": lambda path, **options: read_speech_commands(path, label_set="12", **options),
    "voxceleb1": read_voxceleb1,
    "librispeech": read_librispeech,
    "libritts": read_libritts,
    "csv": read_csv_corpus,
    "klettres": read_klettres,
    "ktuberling": read_ktuberling,
}
# Kinds whose data sit at a default place, so that a plain "KIND" (no path) reads them.
_DEFAULT_PLACE = {"fsdd": read_fsdd, "klettres": read_klettres, "ktuberling": read_ktuberling}
CORPUS_KINDS = tuple(_READERS)


def load_corpus(spec: str, **options) -> pd.DataFrame:
    """Read a corpus named `KIND:PATH` (plain `fsdd` is the bundled FSDD) into a manifest.

    Kinds: fsdd, speech-commands, speech-commands-12, voxceleb1, librispeech, libritts, csv,
    klettres, ktuberling. Plain `fsdd`, `klettres` and `ktuberling` (no path) read the
    bundled FSDD and the Debian packages' folders.
    `options` go to the kind's reader (e.g. `limit_per_speaker_digit` for fsdd, `trials` for
    voxceleb1, `default_split` for speech-commands).

    >>> load_corpus("timit:/data/timit")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    subspaces.corpora.CorpusError: unknown corpus kind 'timit' in 'timit:/data/timit'; valid kinds: fsdd, ...
    """
    kind, separator, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _READERS:
        raise CorpusError(f"unknown corpus kind {kind!r} in {spec!r}; valid kinds: {', '.join(CORPUS_KINDS)}")
    if not separator:
        if kind in _DEFAULT_PLACE:
            return _DEFAULT_PLACE[kind](None, **options)
        raise CorpusError(f"{spec!r} needs a path: write it as {kind}:PATH")
    if not path.strip():
        raise CorpusError(f"{spec!r} has an empty path: write it as {kind}:PATH")
    return _READERS[kind](path.strip(), **options)
