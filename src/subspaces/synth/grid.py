"""The interventional grid: voices x texts (x channels), synthesised into a dataset folder.

`plan_grid` decides which voice says which text and which rows are held out;
`synthesize_grid` makes the audio (16 kHz mono FLAC, trimmed and loudness-normalised)
and writes `manifest.csv` (`speaker` = voice id, `content` = text id, `source` =
engine, plus `channel` and `voice_base` columns). The folder holds:

    manifest.csv      one row per finished clip
    voices.json       the voice bank the grid was made with
    grid.json         the settings and what was held out, for provenance
    failures.csv      clips that failed and why (only when some did)
    audio/CHANNEL/SPEAKER/CONTENT.flac

**Split rule.** `val_voices` voices and `val_texts` texts are held out. A row is
`train` when both its voice and its text are training ones, `val` when both are held
out, `val_voice` for a held-out voice saying a training text, and `val_text` for a
training voice saying a held-out text. Only `train` rows may be used for training:
then no held-out voice and no held-out text is ever heard in training, while the
`val_voice` / `val_text` rows measure generalisation to one new factor at a time.
`keep_mixed=False` does not synthesise the mixed rows at all.

**Voices are held out as whole base voices** (`hold_out="base"`, the default). Voices
that share a base (`Voice.base`: one flite voice at several pitches, one espeak-ng
variant at several rates) are variants of one person; holding out one of them while
training on another would validate on a near-copy of a training voice. So the voices'
bases are visited in a seeded random order and each is held out whole until at least
`val_voices` voices are (a fraction: at least `round(fraction x voices)`): the count is
rounded up to whole bases, by at most the size of the last base taken less one, and no
held-out voice shares its base with a training voice. A list names speaker ids or base
keys (`"flite:awb"`); it must cover whole bases. `hold_out="voice"` holds out single
voices regardless of their base (the rule before bases existed).

**Resuming.** Every clip is written to a temporary file and renamed into place, so a
clip that exists is complete. Rerunning with the same arguments after a crash or
`kill -9` skips finished clips and ends with the same manifest as one clean run
(noise and rooms are seeded from each clip's id, not from the run). `grid.json` is
written before the first clip, so a folder always says which grid it holds: asking for
another grid there (other voices, texts, channels, splits, seed, ...) is refused with
what differs, unless `restart=True` deletes the old grid first.

**Finished or not.** `manifest.csv` is written only once every clip has been tried, and
a grid made with other options is never resumed into the folder, so a folder with a
manifest holds a finished grid; a stopped run (crash, `kill -9`, full disk) leaves none
(or the earlier finished one). A full disk stops the run at the first clip that does
not fit (`DiskFull`); such clips are not synthesis failures and are not listed in
`failures.csv`. One run at a time writes a folder (`folders.folder_lock`).

>>> from subspaces.synth import Voice
>>> voices = [Voice("flite", {"voice": v}) for v in ("kal", "slt", "awb")]
>>> plan = plan_grid(voices, ["yes", "no", "left", "right"], val_voices=1, val_texts=1, seed=0)
>>> sorted(plan["split"].value_counts().items())
[('train', 6), ('val', 1), ('val_text', 2), ('val_voice', 3)]
>>> kal = [Voice("flite", {"voice": v, "f0_mean": f}) for v, f in (("kal", 100), ("kal16", 140))]
>>> plan = plan_grid(kal + voices[1:], ["yes", "no"], val_voices=1, val_texts=1, seed=1)
>>> plan.attrs["held_out"]["bases"], plan.attrs["held_out"]["voices"]
(['flite:kal'], ['flite-kal-f100', 'flite-kal16-f140'])
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from ..atomic import check_disk_full, write_text_atomic
from ..audio import normalize_loudness, resample, trim_silence
from ..errors import SubspacesError
from ..folders import folder_lock
from ..manifest import write_manifest
from ..progress import progress_bar
from .bank import load_voices, save_voices
from .base import ENGINES, SynthError, Voice, synthesize
from .channel import apply_channel, parse_channel
from .texts import Text, text_id

__all__ = ["GridError", "HOLD_OUT", "SAMPLE_RATE", "SPLITS", "plan_grid", "synthesize_grid"]

SAMPLE_RATE = 16000
SPLITS = ("train", "val", "val_voice", "val_text")
# How held-out voices are chosen: whole base voices (the default) or single voices.
HOLD_OUT = ("base", "voice")
MANIFEST_NAME = "manifest.csv"
FAILURES_NAME = "failures.csv"
GRID_NAME = "grid.json"
BANK_NAME = "voices.json"
_PARTIAL_SUFFIX = ".partial"
# The grid.json settings that make a grid what it is, and how a difference is shown.
_SETTING_NAMES = {"voices": "num voices", "texts": "num texts", "dense": "dense", "per_voice": "per voice",
                  "min_per_text": "min per text", "val_voices": "val voices", "val_texts": "val texts",
                  "seed": "seed", "channels": "channels", "keep_mixed": "keep mixed", "hold_out": "hold out",
                  "sample_rate": "sample rate"}


class GridError(SubspacesError, ValueError):
    """Grid settings that cannot be met, or a folder that holds a different grid."""


def _as_texts(texts: Sequence[Text | str]) -> list[Text]:
    out = [t if isinstance(t, Text) else Text(text_id(t), t) for t in texts]
    ids = [t.id for t in out]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise GridError(f"texts repeat the content id(s) {', '.join(repeated[:5])}; each text must appear once")
    if not out:
        raise GridError("no texts given; a grid needs at least one")
    return out


def _held_out(ids: list[str], amount: int | float | Sequence[str], rng: np.random.Generator, what: str) -> set[str]:
    """Pick the held-out ids: a count (int), a fraction (float in [0, 1)), or the ids themselves."""
    if isinstance(amount, (list, tuple, set, frozenset)):
        unknown = sorted(set(amount) - set(ids))
        if unknown:
            raise GridError(f"held-out {what} {', '.join(map(str, unknown[:5]))} are not in the grid's {what}")
        chosen = set(amount)
    elif isinstance(amount, float):
        if not 0.0 <= amount < 1.0:
            raise GridError(f"val_{what}={amount} as a fraction must be in [0, 1); give an int for a count")
        count = int(round(amount * len(ids)))
        chosen = {ids[i] for i in rng.permutation(len(ids))[:count]}
    elif isinstance(amount, int):
        if not 0 <= amount < len(ids):
            raise GridError(f"val_{what}={amount}: hold out 0 to {len(ids) - 1} of the {len(ids)} {what}")
        chosen = {ids[i] for i in rng.permutation(len(ids))[:amount]}
    else:
        raise GridError(f"val_{what} must be a count, a fraction or a list of ids, not {amount!r}")
    if len(chosen) == len(ids):
        raise GridError(f"all {len(ids)} {what} are held out; leave at least one for training")
    return chosen


def _held_out_voices(voices: list[Voice], amount: int | float | Sequence[str], hold_out: str,
                     rng: np.random.Generator) -> set[str]:
    """The held-out speaker ids under `hold_out` ("base": whole base voices, see the
    module's rule; "voice": single voices)."""
    speakers = [v.speaker for v in voices]
    if hold_out not in HOLD_OUT:
        raise GridError(f"hold_out={hold_out!r}; choose one of {', '.join(map(repr, HOLD_OUT))}")
    if hold_out == "voice":
        return _held_out(speakers, amount, rng, "voices")
    members: dict[str, list[str]] = {}  # base -> its speakers, bases in the voices' order
    for voice in voices:
        members.setdefault(voice.base, []).append(voice.speaker)
    if isinstance(amount, (list, tuple, set, frozenset)):
        unknown = sorted(set(amount) - set(speakers) - set(members))
        if unknown:
            bases = ", ".join(list(members)[:8]) + (", ..." if len(members) > 8 else "")
            raise GridError(f"held-out voices {', '.join(map(str, unknown[:5]))} are neither speaker ids nor base keys "
                            f"of the grid's voices (bases: {bases})")
        chosen = {s for name in amount for s in members.get(name, [name])}
        for base, names in members.items():
            left = sorted(set(names) - chosen)
            if left and len(left) < len(names):
                raise GridError(
                    f"the held-out voices include {sorted(set(names) & chosen)[0]} but not {', '.join(left[:3])}, of the "
                    f"same base voice {base}: hold out the whole base (name {base!r}) or pass hold_out='voice'")
    else:
        if isinstance(amount, float):
            if not 0.0 <= amount < 1.0:
                raise GridError(f"val_voices={amount} as a fraction must be in [0, 1); give an int for a count")
            count = int(round(amount * len(speakers)))
        elif isinstance(amount, int):
            if not 0 <= amount < len(speakers):
                raise GridError(f"val_voices={amount}: hold out 0 to {len(speakers) - 1} of the {len(speakers)} voices")
            count = amount
        else:
            raise GridError(f"val_voices must be a count, a fraction or a list of ids, not {amount!r}")
        bases = list(members)
        chosen = set()
        for index in rng.permutation(len(bases)):
            if len(chosen) >= count:
                break
            chosen.update(members[bases[index]])
    if chosen and len(chosen) == len(speakers):
        raise GridError(
            f"holding out val_voices={amount!r} as whole base voices takes all {len(members)} bases of the "
            f"{len(speakers)} voices; leave at least one base for training: hold out fewer voices, add voices of "
            f"other bases, try another seed, or pass hold_out='voice'")
    return chosen


def _sparse_pairs(n_voices: int, n_texts: int, per_voice: int, min_per_text: int,
                  rng: np.random.Generator) -> list[tuple[int, int]]:
    """Each voice gets `per_voice` texts; texts are dealt least-used first (ties broken
    at random), so text counts differ by at most one and every text gets at least
    floor(n_voices * per_voice / n_texts) >= min_per_text voices."""
    counts = np.zeros(n_texts, dtype=np.int64)
    pairs = []
    for v in rng.permutation(n_voices):
        order = np.lexsort((rng.random(n_texts), counts))
        chosen = np.sort(order[:per_voice])
        counts[chosen] += 1
        pairs += [(int(v), int(t)) for t in chosen]
    assert counts.min() >= min_per_text, "least-used-first dealing always meets a feasible minimum"
    return sorted(pairs)


def plan_grid(
    voices: Sequence[Voice],
    texts: Sequence[Text | str],
    *,
    dense: bool = True,
    per_voice: int | None = None,
    min_per_text: int = 2,
    val_voices: int | float | Sequence[str] = 0,
    val_texts: int | float | Sequence[str] = 0,
    seed: int = 0,
    channels: Sequence[str] | None = None,
    keep_mixed: bool = True,
    hold_out: str = "base",
) -> pd.DataFrame:
    """The rows of a grid before synthesis: utt_id, path, speaker, content, text, split,
    source, channel, voice_base (in voice, text, channel order).

    Dense: every voice says every text. Sparse (`dense=False`): every voice says exactly
    `per_voice` texts (default: the fewest that give each text `min_per_text` voices)
    and every text is said by at least `min_per_text` voices. `val_voices`/`val_texts`
    are counts (int), fractions (float) or lists of ids; voices are held out as whole
    base voices unless `hold_out="voice"`; see the module's split and hold-out rules.
    `plan.attrs["held_out"]` lists the held-out `voices`, their `bases` and the `texts`.
    `channels` are channel specs (`subspaces.synth.channel`); the default is `["clean"]`.

    >>> from subspaces.synth import Voice
    >>> voices = [Voice("flite", {"voice": v}) for v in ("kal", "slt", "awb", "rms")]
    >>> plan = plan_grid(voices, ["up", "down", "left", "right"], dense=False, per_voice=2)
    >>> plan.groupby("speaker").size().tolist(), int(plan.groupby("content").size().min())
    ([2, 2, 2, 2], 2)
    """
    voices = list(voices)
    texts_ = _as_texts(texts)
    channels = list(channels) if channels is not None else ["clean"]
    if not voices:
        raise GridError("no voices given; a grid needs at least one")
    speakers = [v.speaker for v in voices]
    repeated = sorted({s for s in speakers if speakers.count(s) > 1})
    if repeated:
        raise GridError(f"voices repeat the speaker id(s) {', '.join(repeated[:5])}; each voice must appear once")
    if not channels or len(set(channels)) != len(channels):
        raise GridError(f"channels {channels} must be a non-empty list without repeats")
    for spec in channels:
        parse_channel(spec)
    rng = np.random.default_rng(seed)
    held_voices = _held_out_voices(voices, val_voices, hold_out, rng)
    held_texts = _held_out([t.id for t in texts_], val_texts, rng, "texts")

    n_voices, n_texts = len(voices), len(texts_)
    if dense:
        if per_voice is not None:
            raise GridError("per_voice is for sparse grids; pass dense=False or leave per_voice out")
        pairs = [(v, t) for v in range(n_voices) for t in range(n_texts)]
    else:
        if not 1 <= min_per_text <= n_voices:
            raise GridError(f"min_per_text={min_per_text} must be between 1 and the number of voices ({n_voices})")
        if per_voice is None:
            per_voice = math.ceil(n_texts * min_per_text / n_voices)
        if not 1 <= per_voice <= n_texts:
            raise GridError(f"per_voice={per_voice} must be between 1 and the number of texts ({n_texts})")
        if n_voices * per_voice < n_texts * min_per_text:
            raise GridError(
                f"{n_voices} voices x {per_voice} texts each = {n_voices * per_voice} clips cannot give "
                f"{n_texts} texts {min_per_text} voices each ({n_texts * min_per_text} clips); "
                f"raise per_voice to {math.ceil(n_texts * min_per_text / n_voices)} or lower min_per_text"
            )
        pairs = _sparse_pairs(n_voices, n_texts, per_voice, min_per_text, rng)

    rows = []
    for v, t in pairs:
        voice, text = voices[v], texts_[t]
        held_v, held_t = voice.speaker in held_voices, text.id in held_texts
        split = {(False, False): "train", (True, True): "val", (True, False): "val_voice", (False, True): "val_text"}[
            (held_v, held_t)
        ]
        if split in ("val_voice", "val_text") and not keep_mixed:
            continue
        for channel in channels:
            rows.append({
                "utt_id": f"{voice.speaker}__{text.id}__{channel}",
                "path": f"audio/{channel}/{voice.speaker}/{text.id}.flac",
                "speaker": voice.speaker,
                "content": text.id,
                "text": text.text,
                "split": split,
                "source": voice.engine,
                "channel": channel,
                "voice_base": voice.base,
            })
    plan = pd.DataFrame(rows, columns=["utt_id", "path", "speaker", "content", "text", "split", "source", "channel",
                                       "voice_base"])
    plan.attrs["held_out"] = {
        "voices": sorted(held_voices),
        "bases": sorted({v.base for v in voices if v.speaker in held_voices}),
        "texts": sorted(held_texts),
    }
    return plan


@dataclass
class _Task:
    """One voice saying one text, written out under one or more channels."""

    voice: Voice
    text: str
    utt_ids: list[str]
    channels: list[str]
    paths: list[Path]


def _clip_seed(utt_id: str) -> int:
    return int(hashlib.sha1(utt_id.encode("utf-8")).hexdigest()[:8], 16)


def _finished_frames(path: Path) -> int | None:
    """Frames of a finished clip, or None when it is absent or not a 16 kHz clip."""
    if not path.is_file():
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return info.frames if info.samplerate == SAMPLE_RATE and info.frames > 0 else None


class _NotWritten(Exception):
    """A clip was made but could not be written into the grid folder (a full disk, no
    permission). Unlike a failed synthesis this stops the grid: every clip after it
    would meet the same folder."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _write_flac(path: Path, wave: np.ndarray) -> None:
    """Write a 16-bit FLAC through a temporary file; a failed write raises `_NotWritten`
    (holding a `DiskFull` when the disk is full) and leaves no temporary file."""
    buffer = io.BytesIO()  # encoded in memory, so only writing the file can meet the disk
    sf.write(buffer, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{_PARTIAL_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    except OSError as error:
        try:
            check_disk_full(error, path)
        except OSError as full:
            raise _NotWritten(full) from error
        raise _NotWritten(error) from error
    finally:
        tmp.unlink(missing_ok=True)


def _run_task(task: _Task) -> list[int]:
    """Make the task's missing clips; return every clip's length in samples."""
    frames = [_finished_frames(p) for p in task.paths]
    if all(f is not None for f in frames):
        return [int(f) for f in frames]
    wave, rate = synthesize(task.voice, task.text)
    wave = trim_silence(resample(wave, rate, SAMPLE_RATE), SAMPLE_RATE)
    if not np.any(wave):
        raise SynthError(f"{task.voice.engine} voice {task.voice.speaker} produced only silence for {task.text!r}")
    out = []
    for utt_id, channel, path, done in zip(task.utt_ids, task.channels, task.paths, frames):
        if done is not None:
            out.append(int(done))
            continue
        clip = normalize_loudness(apply_channel(wave, SAMPLE_RATE, channel, seed=_clip_seed(utt_id)))
        if not np.all(np.isfinite(clip)):
            raise SynthError(f"channel {channel} made non-finite samples for {utt_id}")
        _write_flac(path, clip)
        out.append(len(clip))
    return out


def _check_same_voices(out_dir: Path, voices: Sequence[Voice]) -> None:
    bank = out_dir / BANK_NAME
    if not bank.is_file():
        return
    before = {v.speaker: v for v in load_voices(bank)}
    for voice in voices:
        old = before.get(voice.speaker)
        if old is not None and old != voice:
            raise GridError(
                f"{out_dir} already holds clips of a different voice with the speaker id {voice.speaker!r} "
                f"({old.to_dict()} there, {voice.to_dict()} now); use a new folder or another speaker id"
            )


def _show(value: object) -> str:
    if isinstance(value, list):
        shown = ", ".join(map(str, value[:4])) + (f", ... ({len(value)} in all)" if len(value) > 4 else "")
        return f"[{shown}]"
    return str(value)


def _changed_ids(what: str, before: list[str], now: list[str]) -> list[str]:
    """How the ids of `what` (voices, texts) changed: new ones, ones left out, or their order."""
    new = [i for i in now if i not in set(before)]
    gone = [i for i in before if i not in set(now)]
    changes = []
    if new:
        changes.append(f"new {what} {_show(new)}")
    if gone:
        changes.append(f"{what} left out {_show(gone)}")
    if not changes and before != now:
        changes.append(f"the {what} in another order")
    return changes


def _differences(out_dir: Path, settings: dict, voices: Sequence[Voice], plan: pd.DataFrame) -> list[str]:
    """What differs between the grid in `out_dir` and the one asked for: [] when they are
    the same grid, or when the folder holds no grid.

    `grid.json` gives the settings; `voices.json` the voices; the manifest of a finished
    grid (or of one made before grid.json listed its texts) must hold only rows of the plan.
    """
    record = out_dir / GRID_NAME
    old: dict = {}
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise GridError(f"{record}: not a grid record ({error}); pass restart=True (subspaces synth "
                            "--restart) to delete the grid there and start over") from error
        if not isinstance(old, dict):
            raise GridError(f"{record}: not a grid record (a JSON object); pass restart=True (subspaces synth "
                            "--restart) to delete the grid there and start over")
    found = [f"{name} {_show(old[key])} -> {_show(settings[key])}"
             for key, name in _SETTING_NAMES.items() if key in old and old[key] != settings[key]]
    bank = out_dir / BANK_NAME
    if bank.is_file():
        found += _changed_ids("voices", [v.speaker for v in load_voices(bank)], [v.speaker for v in voices])
    if isinstance(old.get("text_ids"), list):
        found += _changed_ids("texts", old["text_ids"], settings["text_ids"])
    if not found and "held_out" in old and old["held_out"] != settings["held_out"]:
        found.append(f"held out {old['held_out']} -> {settings['held_out']}")
    manifest = out_dir / MANIFEST_NAME
    if not found and manifest.is_file():
        try:
            rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise GridError(f"{manifest}: not a grid manifest ({error}); pass restart=True (subspaces synth "
                            "--restart) to delete the grid there and start over") from error
        if not {"utt_id", "split"} <= set(rows.columns):
            found.append(f"{MANIFEST_NAME} has no utt_id and split columns")
        else:
            planned = dict(zip(plan["utt_id"], plan["split"]))
            other = [u for u, split in zip(rows["utt_id"], rows["split"]) if planned.get(u) != split]
            if other:
                found.append(f"{len(other)} of the {len(rows)} clips in {MANIFEST_NAME} are not in the new grid "
                             f"or in another split {_show(other)}")
    return found


def _remove_grid(out_dir: Path) -> None:
    """Delete the grid in `out_dir`: the manifest first, so that a run stopped midway never
    leaves a manifest over missing clips. voices.json stays until the new bank replaces it,
    so leftover clips of an old voice are still caught under its speaker id."""
    for name in (MANIFEST_NAME, FAILURES_NAME, GRID_NAME):
        (out_dir / name).unlink(missing_ok=True)
    if (out_dir / "audio").is_dir():
        shutil.rmtree(out_dir / "audio")


def synthesize_grid(
    voices: Sequence[Voice],
    texts: Sequence[Text | str],
    out_dir: str | Path,
    *,
    dense: bool = True,
    per_voice: int | None = None,
    min_per_text: int = 2,
    val_voices: int | float | Sequence[str] = 0,
    val_texts: int | float | Sequence[str] = 0,
    workers: int = 2,
    seed: int = 0,
    channels: Sequence[str] | None = None,
    keep_mixed: bool = True,
    hold_out: str = "base",
    restart: bool = False,
) -> pd.DataFrame:
    """Synthesise the grid `plan_grid` describes into `out_dir`; return its manifest.

    Clips are made by `workers` threads (the engines run as subprocesses). Finished
    clips are skipped, so rerunning resumes. A clip that fails is left out of the
    manifest, listed with its error in `failures.csv` (and `manifest.attrs["failures"]`)
    and reported with a warning at the end; the other clips go on. `grid.json` records
    the settings, the text ids and the held-out voices, bases and texts (`held_out`).

    A folder that holds a grid made with other options raises `GridError` listing what
    differs, and is left as it was, unless `restart=True`: then that grid is deleted and
    the new one made. A full disk raises `DiskFull` at the first clip that does not fit,
    keeping the clips made before it. A second run into a folder being written raises
    `folders.FolderBusy`.

    >>> import tempfile
    >>> from subspaces.synth import sample_voices
    >>> table = synthesize_grid(sample_voices("espeak-ng", 2), ["yes", "no"], tempfile.mkdtemp())  # doctest: +SKIP
    >>> len(table)  # doctest: +SKIP
    4
    """
    if workers < 1:
        raise GridError(f"workers={workers}; use at least 1")
    out_dir = Path(out_dir)
    plan = plan_grid(voices, texts, dense=dense, per_voice=per_voice, min_per_text=min_per_text,
                     val_voices=val_voices, val_texts=val_texts, seed=seed, channels=channels,
                     keep_mixed=keep_mixed, hold_out=hold_out)
    held_out = plan.attrs.pop("held_out")  # not copied into every per-clip group below
    voices = list(voices)
    # Fail at once, with the install command, when an engine is missing.
    used = {v.engine for v in voices}
    for name, engine in ENGINES.items():
        if name in used:
            engine.check_installed()
    settings = {
        "voices": len(voices), "texts": int(plan["content"].nunique()), "dense": dense, "per_voice": per_voice,
        "min_per_text": min_per_text, "val_voices": val_voices if not isinstance(val_voices, (set, frozenset)) else sorted(val_voices),
        "val_texts": val_texts if not isinstance(val_texts, (set, frozenset)) else sorted(val_texts),
        "seed": seed, "channels": list(channels) if channels is not None else ["clean"], "keep_mixed": keep_mixed,
        "hold_out": hold_out, "held_out": held_out, "sample_rate": SAMPLE_RATE,
        "text_ids": [t.id for t in _as_texts(texts)],
    }
    settings = json.loads(json.dumps(settings, default=list))  # as grid.json holds them, to compare
    with folder_lock(out_dir, "a synthesis run"):
        if restart:
            _remove_grid(out_dir)
        else:
            _check_same_voices(out_dir, voices)
            differences = _differences(out_dir, settings, voices, plan)
            if differences:
                raise GridError(
                    f"{out_dir} already holds a grid made with other options ({'; '.join(differences)}); rerun "
                    "with its options to resume it, use a new folder, or pass restart=True (subspaces synth "
                    "--restart) to delete that grid and make this one")
        save_voices(voices, out_dir / BANK_NAME)
        if not (out_dir / GRID_NAME).is_file():  # the clip counts follow once the grid is done
            write_text_atomic(out_dir / GRID_NAME, json.dumps(settings | {"clips": None, "failed": None},
                                                               indent=2) + "\n")
        # A kill -9 can leave temporary clips behind; they never look finished, so remove them.
        for stale in (out_dir / "audio").rglob(f"*{_PARTIAL_SUFFIX}") if (out_dir / "audio").is_dir() else []:
            stale.unlink(missing_ok=True)
        manifest, failure_table = _synthesize(plan, voices, out_dir, workers)
        settings |= {"clips": len(manifest), "failed": len(failure_table)}
        write_text_atomic(out_dir / GRID_NAME, json.dumps(settings, indent=2) + "\n")
    manifest.attrs["root"] = str(out_dir.resolve())
    manifest.attrs["failures"] = failure_table
    manifest.attrs["held_out"] = held_out
    if len(failure_table):
        warnings.warn(f"{len(failure_table)} of {len(plan)} clips failed and are left out of the manifest; "
                      f"see {out_dir / FAILURES_NAME}", stacklevel=2)
    return manifest


def _synthesize(plan: pd.DataFrame, voices: list[Voice], out_dir: Path,
                workers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make the plan's clips; write failures.csv and the manifest; return both tables."""
    by_speaker = {v.speaker: v for v in voices}
    tasks: list[_Task] = []
    rows_of_task: list[list[int]] = []
    for (speaker, content), group in plan.groupby(["speaker", "content"], sort=False):
        tasks.append(_Task(by_speaker[speaker], group["text"].iloc[0], group["utt_id"].tolist(),
                           group["channel"].tolist(), [out_dir / p for p in group["path"]]))
        rows_of_task.append(group.index.tolist())

    frames = np.zeros(len(plan), dtype=np.int64)
    failures = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_run_task, task): i for i, task in enumerate(tasks)}
        try:
            for future in progress_bar(as_completed(futures), total=len(futures), desc="synthesising", unit="text"):
                i = futures[future]
                try:
                    frames[rows_of_task[i]] = future.result()
                except _NotWritten as stop:
                    # The folder takes no more clips: drop the queued work, let the running
                    # clips end (their temporary files removed), and keep what is finished.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise stop.error
                except Exception as error:  # any engine or channel failure is recorded, not fatal
                    for row in rows_of_task[i]:
                        failures.append({**plan.loc[row, ["utt_id", "speaker", "content", "channel", "source", "text"]],
                                         "error": f"{type(error).__name__}: {error}"})
        except KeyboardInterrupt:
            # Ctrl-C: drop the queued texts at once; only those already running finish (finished
            # clips are kept, and a rerun resumes from them).
            pool.shutdown(wait=True, cancel_futures=True)
            raise

    manifest = plan.loc[frames > 0].copy()
    manifest["duration_s"] = frames[frames > 0] / SAMPLE_RATE
    manifest["sample_rate"] = SAMPLE_RATE
    manifest = manifest.reset_index(drop=True)
    failure_table = pd.DataFrame(failures, columns=["utt_id", "speaker", "content", "channel", "source", "text", "error"])
    failure_path = out_dir / FAILURES_NAME
    if failures:
        order = {u: i for i, u in enumerate(plan["utt_id"])}
        failure_table = failure_table.sort_values("utt_id", key=lambda s: s.map(order)).reset_index(drop=True)
        write_text_atomic(failure_path, failure_table.to_csv(index=False))
    elif failure_path.exists():
        failure_path.unlink()
    if manifest.empty:
        raise GridError(
            f"every one of the {len(plan)} clips failed; the first error: {failure_table.loc[0, 'error']} "
            f"(all are in {failure_path})"
        )
    write_manifest(manifest, out_dir / MANIFEST_NAME)
    return manifest, failure_table
