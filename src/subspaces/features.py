"""Frozen features: run a backbone over a manifest once, keep every layer, read them back fast.

`extract_features(manifest, backbone, out_dir)` writes a feature store, a folder that
training and evaluation read instead of audio:

    store.json                 what made it: backbone.describe(), layers, pooling, manifest
                               fingerprint, package version; "complete" once finished
    shard-00000.safetensors    float32 `mean` / `std` [n_utts, n_layers, D] (statistics
                               pooling over each clip's valid frames), optionally
                               `frames` [total_frames, n_frame_layers, D] with
                               `frame_offsets` long[n_utts + 1]; the shard's utt_ids,
                               manifest positions and decode failures in its metadata
    index.parquet              utt_id, position (manifest row), shard, row
    failures.csv               utt_id, path, error of every clip that could not be decoded

Utterances are sorted by duration and cut into shards of `shard_size`, so each shard's
batches hold clips of similar length (little padding). Each shard is written atomically
(temporary file + os.replace) and is the unit of resumption and of scale-out: an
interrupted run redoes only the shards that are missing, and `shard=(i, n)` computes the
shards k with k % n == i into a part store that `merge_feature_stores` joins into a store
equal, file for file, to a single-process one.

>>> import tempfile
>>> store = FeatureStore(tempfile.mkdtemp())  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
FeatureStoreError: ...: no store.json; not a feature store (make one with extract_features)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import write_atomic, write_text_atomic
from .audio import AudioError
from .backbones import Backbone, load_backbone, pool_frames
from .devices import resolve_precision
from .errors import SubspacesError
from .folders import folder_lock
from .manifest import audio_paths, read_manifest, validate_manifest
from .progress import progress_bar

__all__ = [
    "FORMAT_VERSION",
    "STATISTICS",
    "FeatureStore",
    "FeatureStoreError",
    "EncodedFiles",
    "encode_files",
    "extract_features",
    "load_features",
    "merge_feature_stores",
    "plan_shards",
]

# 2: Whisper's layer 0 is taken before the positional table is added (subspaces.whisper).
FORMAT_VERSION = 2
STATISTICS = ("mean", "std")
# Fields of store.json that identify what the features are; two stores (or a store and a
# new run) may only be combined when all of them agree.
_IDENTITY = ("format_version", "backbone", "layers", "pooling", "frame_layers", "manifest", "shard_size")


class FeatureStoreError(SubspacesError, ValueError):
    """A feature store that cannot be used as asked; the message names the folder and why."""


# ----------------------------------------------------------------------------------
# Planning: which utterances go in which shard and batch
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One unit of work and of storage: manifest positions, grouped into batches."""

    index: int
    batches: tuple[tuple[int, ...], ...]

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(p for batch in self.batches for p in batch)


def plan_shards(durations: Sequence[float], shard_size: int, batch_seconds: float) -> list[Shard]:
    """Sort utterances by duration, cut them into shards, and each shard into batches.

    A batch grows while its padded length (clips x longest clip) stays within
    `batch_seconds`; a clip longer than that gets a batch of its own. Ties in duration
    keep manifest order, so the plan is a pure function of its inputs.

    >>> [s.batches for s in plan_shards([3.0, 1.0, 1.0, 2.0, 1.0], shard_size=3, batch_seconds=3.0)]
    [((1, 2, 4),), ((3,), (0,))]
    """
    if shard_size < 1:
        raise FeatureStoreError(f"shard_size must be at least 1, got {shard_size}")
    if batch_seconds <= 0:
        raise FeatureStoreError(f"batch_seconds must be positive, got {batch_seconds}")
    order = np.argsort(np.asarray(durations, dtype=np.float64), kind="stable")
    shards = []
    for start in range(0, len(order), shard_size):
        batches, batch, longest = [], [], 0.0
        for position in order[start : start + shard_size]:
            duration = float(durations[position])
            if batch and (len(batch) + 1) * max(longest, duration) > batch_seconds:
                batches.append(tuple(batch))
                batch, longest = [], 0.0
            batch.append(int(position))
            longest = max(longest, duration)
        batches.append(tuple(batch))
        shards.append(Shard(len(shards), tuple(batches)))
    return shards


# ----------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FeatureStoreError(f"{path}: not a readable store.json ({error})") from error


def _fingerprint(table: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for utt_id, path, duration in zip(table["utt_id"], table["path"], table["duration_s"]):
        digest.update(f"{utt_id}\t{path}\t{float(duration)!r}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def _as_manifest(manifest: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        validate_manifest(manifest, Path(manifest.attrs.get("root", ".")), name="manifest DataFrame")
        return manifest.reset_index(drop=True)
    return read_manifest(manifest)


def _normalize_layers(layers: Sequence[int] | None, num_layers: int, what: str) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    out = []
    for layer in layers:
        if not -num_layers <= int(layer) < num_layers:
            raise FeatureStoreError(
                f"{what}: layer {layer} does not exist; the backbone has hidden states 0..{num_layers - 1}"
            )
        out.append(int(layer) % num_layers)
    if len(set(out)) != len(out):
        raise FeatureStoreError(f"{what}: layers {list(layers)} name the same layer twice")
    return out


def _normalize_pooling(pooling: str | Sequence[str]) -> list[str]:
    names = pooling.split("+") if isinstance(pooling, str) else list(pooling)
    bad = [p for p in names if p not in STATISTICS]
    if not names or bad or len(set(names)) != len(names):
        raise FeatureStoreError(
            f"pooling must be one or more distinct of {', '.join(STATISTICS)} "
            f"(a sequence or a string like 'mean+std'), got {pooling!r}"
        )
    return names


def _describe_difference(found: dict, wanted: dict) -> str:
    lines = []
    for key in _IDENTITY + ("part",):
        if found.get(key) != wanted.get(key):
            if isinstance(found.get(key), dict) and isinstance(wanted.get(key), dict):
                for sub in sorted(set(found[key]) | set(wanted[key])):
                    if found[key].get(sub) != wanted[key].get(sub):
                        lines.append(f"{key}.{sub}: store has {found[key].get(sub)!r}, asked {wanted[key].get(sub)!r}")
            else:
                lines.append(f"{key}: store has {found.get(key)!r}, asked {wanted.get(key)!r}")
    return "; ".join(lines)


# ----------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------


@dataclass
class _Decoded:
    positions: list[int]
    waves: list[np.ndarray]
    failures: list[tuple[int, str]]  # (position, error)


def _decode_batch(batch: Sequence[int], paths: list[Path], backbone: Backbone) -> _Decoded:
    decoded = _Decoded([], [], [])
    for position in batch:
        try:
            wave = backbone.read(paths[position])
        except AudioError as error:
            decoded.failures.append((position, str(error)))
            continue
        decoded.positions.append(position)
        decoded.waves.append(wave)
    return decoded


def _prefetch(batches: list[tuple[int, ...]], decode: Callable[[tuple[int, ...]], _Decoded], workers: int) -> Iterator[_Decoded]:
    """Decode batches in `workers` threads, up to 2 x workers ahead of the consumer, in order."""
    if workers <= 0:
        yield from map(decode, batches)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        upcoming = iter(batches)
        try:
            for batch in upcoming:
                pending.append(pool.submit(decode, batch))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                decoded = pending.popleft().result()
                for batch in upcoming:
                    pending.append(pool.submit(decode, batch))
                    break
                yield decoded
        finally:
            for future in pending:
                future.cancel()


@dataclass
class EncodedFiles:
    """What `encode_files` returns: `paths` (the files read, in the order given), `pooled`
    float32[files, hidden states, width] (each layer mean-pooled over the clip's frames),
    `failures` (one message per file that could not be read, naming it), `audio_seconds`."""

    paths: list[Path]
    pooled: np.ndarray
    failures: list[str]
    audio_seconds: float


def encode_files(paths: Sequence[str | Path], backbone: Backbone, *, batch_size: int = 16,
                 workers: int = 2) -> EncodedFiles:
    """Every hidden state of `backbone`, mean-pooled, for audio files: the quick look of
    `subspaces encode` (no store; use `extract_features` for a corpus). Files are decoded
    in `workers` threads and run `batch_size` at a time; unreadable ones are listed in
    `failures`, not raised."""
    if batch_size < 1:
        raise FeatureStoreError(f"batch_size must be a positive integer, got {batch_size}")
    files = [Path(p) for p in paths]
    batches = [tuple(range(start, min(start + batch_size, len(files)))) for start in range(0, len(files), batch_size)]
    read, vectors, failures, seconds = [], [], [], 0.0
    decoded_batches = _prefetch(batches, lambda batch: _decode_batch(batch, files, backbone), workers)
    for decoded in progress_bar(decoded_batches, total=len(batches), desc="encode", unit="batch"):
        failures.extend(message for _, message in decoded.failures)
        if not decoded.waves:
            continue
        output = backbone.encode(decoded.waves)
        vectors.append(pool_frames(output.hidden_states, output.num_frames, ["mean"])["mean"].numpy())
        read.extend(files[i] for i in decoded.positions)
        seconds += sum(len(w) for w in decoded.waves) / backbone.sample_rate
    width = (backbone.num_layers, backbone.width)
    pooled = np.concatenate(vectors) if vectors else np.zeros((0, *width), dtype=np.float32)
    return EncodedFiles(read, pooled, failures, seconds)


def _shard_contents(path: Path) -> dict:
    """The utt_ids, manifest positions and failures recorded in a shard file's metadata."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            # One metadata key: safetensors may write several keys in any order, and shard
            # files should be byte-identical however they were made.
            return json.loads((handle.metadata() or {})["contents"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise FeatureStoreError(f"{path}: not a readable feature shard ({type(error).__name__}: {error}); "
                                "delete it and run extract again") from error


def _shard_is_done(path: Path, shard: Shard, utt_ids: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        contents = _shard_contents(path)
        stored = contents["positions"]
        failed = [f["position"] for f in contents["failures"]]
        return sorted(stored + failed) == sorted(shard.positions) and contents["utt_ids"] == [utt_ids[p] for p in stored]
    except Exception:  # an unreadable or foreign shard file is redone, not trusted
        return False


def _write_shard(path: Path, arrays: dict[str, torch.Tensor], positions: list[int], utt_ids: list[str],
                 failures: list[dict]) -> None:
    contents = {"positions": positions, "utt_ids": [utt_ids[p] for p in positions], "failures": failures}
    write_atomic(path, lambda tmp: save_file(arrays, tmp, metadata={"contents": json.dumps(contents)}))


def _finalize(out_dir: Path, config: dict, shard_indices: Sequence[int]) -> dict:
    """Write index.parquet, failures.csv and the completed store.json from the shard files."""
    rows, failures = [], []
    for index in shard_indices:
        contents = _shard_contents(out_dir / _shard_name(index))
        for row, (utt_id, position) in enumerate(zip(contents["utt_ids"], contents["positions"])):
            rows.append((utt_id, position, index, row))
        failures.extend(contents["failures"])
    index_table = pd.DataFrame(rows, columns=["utt_id", "position", "shard", "row"]).sort_values("position")
    index_table = index_table.reset_index(drop=True)
    failure_table = pd.DataFrame(failures, columns=["utt_id", "position", "path", "error"])
    failure_table = failure_table.sort_values("position").reset_index(drop=True)
    write_atomic(out_dir / "index.parquet", lambda tmp: index_table.to_parquet(tmp, index=False))
    write_atomic(out_dir / "failures.csv", lambda tmp: failure_table.to_csv(tmp, index=False))
    config = dict(config, complete=True, num_stored=len(index_table), num_failed=len(failure_table))
    _write_json(out_dir / "store.json", config)
    return config


def _says_complete(out_dir: Path) -> bool:
    """Whether `out_dir` holds a store.json that says the store is finished."""
    try:
        return bool(json.loads((out_dir / "store.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def _refuse_if_all_missing(paths: Sequence[Path], manifest_name: str) -> None:
    """Raise before anything is written when not one of `paths` exists: the manifest's
    paths are wrong (moved data, the wrong root), and a store of 0 rows helps nobody.
    Stops at the first file found, so a good manifest costs one `stat`."""
    if not paths or any(os.path.lexists(p) for p in paths):
        return
    examples = ", ".join(map(str, paths[:3]))
    raise FeatureStoreError(
        f"{manifest_name}: none of its {len(paths)} audio files exists (e.g. {examples}); nothing was written. "
        "Fix the paths (relative ones are read from the manifest's folder) and rerun"
    )


def _refuse_if_nothing_stored(out_dir: Path, shards: Sequence[Shard], manifest_name: str) -> None:
    """Raise, instead of finishing a store of 0 rows, when every clip failed to decode;
    the shard files (failures only) are removed so that a rerun tries every clip again."""
    contents = [_shard_contents(out_dir / _shard_name(s.index)) for s in shards]
    if not shards or any(c["positions"] for c in contents):
        return
    failures = [f["error"] for c in contents for f in c["failures"]]
    for s in shards:
        (out_dir / _shard_name(s.index)).unlink(missing_ok=True)
    raise FeatureStoreError(
        f"{manifest_name}: none of its {len(failures)} clips could be read, e.g. {'; '.join(failures[:2])}; "
        f"nothing was stored in {out_dir}. Fix the files or the paths and rerun"
    )


def _check_identity(out_dir: Path, found: dict, wanted: dict) -> None:
    if any(found.get(k) != wanted.get(k) for k in _IDENTITY + ("part",)):
        stored = (found.get("backbone") or {}).get("precision")
        hint = ""
        if stored and stored != wanted["backbone"]["precision"]:
            hint = (f" To continue this store, run in its precision: --precision {stored} "
                    f"(precision={stored!r}); without one, the machine chooses (devices.default_precision).")
        raise FeatureStoreError(
            f"{out_dir} holds features made differently from this run ({_describe_difference(found, wanted)}). "
            "Features from different backbones, precisions, layers or manifests are never mixed: "
            "write to another out_dir, or delete this one to start over." + hint
        )


def extract_features(
    manifest: pd.DataFrame | str | Path,
    backbone: Backbone | str | Path,
    out_dir: str | Path,
    *,
    layers: Sequence[int] | None = None,
    pooling: str | Sequence[str] = ("mean", "std"),
    frame_layers: Sequence[int] = (),
    batch_seconds: float = 30.0,
    shard_size: int = 1000,
    workers: int = 2,
    shard: tuple[int, int] | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> Path:
    """Run a frozen backbone over every row of a manifest and store pooled features per layer.

    `layers`: hidden-state indices to keep (None: all; 0 is the input embedding).
    `pooling`: "mean" and/or "std" over each clip's valid frames. `frame_layers`: layers
    whose frame sequences are also kept (variable length). `batch_seconds`: padded audio
    per forward pass. `workers`: audio-decoding threads (0: decode in this thread).
    `shard=(i, n)`: compute only the i-th of n parts (merge them with
    `merge_feature_stores`). `precision`: passed to `load_backbone` when `backbone` is
    a name or folder ("auto", the default: bfloat16 where the hardware has it natively,
    else float32; or "float32" or "bfloat16"). The store records it, and a store made in
    one precision is never continued or merged in another.

    Resumable: finished shards are kept and the rest redone; a finished store is left
    untouched. Clips that fail to decode (`AudioError`) are skipped, listed in
    failures.csv and reported in a warning; when not one clip exists, or none decodes,
    the run is refused (`FeatureStoreError`) instead of finishing an empty store. One
    writer at a time: another process writing `out_dir` makes this raise `FolderBusy`.
    Returns `out_dir`.

    >>> extract_features("manifest.csv", "whisper-base", "features/")  # doctest: +SKIP
    PosixPath('features')
    """
    out_dir = Path(out_dir)
    table = _as_manifest(manifest)
    manifest_name = "the manifest DataFrame" if isinstance(manifest, pd.DataFrame) else str(manifest)
    if isinstance(backbone, (str, Path)):
        backbone = load_backbone(backbone, precision=precision or "auto")
    elif precision is not None and resolve_precision(precision, backbone.device) != backbone.precision:
        raise FeatureStoreError(
            f"precision={precision!r} but the given backbone runs in {backbone.precision}; "
            f"load it with load_backbone(..., precision={precision!r}) or pass its name instead"
        )
    layers = _normalize_layers(layers, backbone.num_layers, "layers")
    frame_layers = _normalize_layers(frame_layers, backbone.num_layers, "frame_layers")
    pooling = _normalize_pooling(pooling)
    if shard is not None:
        part, parts = shard
        if not (isinstance(parts, int) and parts >= 1 and isinstance(part, int) and 0 <= part < parts):
            raise FeatureStoreError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    if workers < 0:
        raise FeatureStoreError(f"workers must be 0 or more, got {workers}")

    utt_ids = table["utt_id"].astype(str).tolist()
    paths = audio_paths(table)
    durations = pd.to_numeric(table["duration_s"]).to_numpy(dtype=np.float64)
    plan = plan_shards(durations, shard_size, batch_seconds)
    mine = [s for s in plan if shard is None or s.index % shard[1] == shard[0]]

    from . import __version__

    config = {
        "format": "subspaces-feature-store",
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "backbone": backbone.describe(),
        "layers": layers,
        "pooling": pooling,
        "frame_layers": frame_layers,
        "width": backbone.width,
        "dtype": "float32",
        "manifest": {"num_utterances": len(table), "fingerprint": _fingerprint(table)},
        "shard_size": shard_size,
        "num_shards": len(plan),
        "part": list(shard) if shard is not None else None,
        "shards": [s.index for s in mine],
        "complete": False,
    }

    if out_dir.exists() and not out_dir.is_dir():
        raise FeatureStoreError(f"{out_dir}: is a file, not a feature store folder; give another out_dir")
    if not _says_complete(out_dir):  # a finished store is kept even when its audio has since gone
        _refuse_if_all_missing([paths[p] for s in mine for p in s.positions], manifest_name)
    with folder_lock(out_dir, "a feature extraction"):
        for stale in out_dir.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink()
        store_json = out_dir / "store.json"
        if store_json.is_file():
            found = _read_json(store_json)
            _check_identity(out_dir, found, config)
        else:
            found = None
        todo = [s for s in mine if not _shard_is_done(out_dir / _shard_name(s.index), s, utt_ids)]
        if not todo and found is not None and found.get("complete") and (out_dir / "index.parquet").is_file():
            return out_dir
        if found is None or found.get("complete"):
            _write_json(store_json, config)  # marks the store unfinished until every shard is in

        keep_all = layers == list(range(backbone.num_layers))
        total_utts = sum(len(s.positions) for s in todo)
        bar = progress_bar(total=total_utts, unit="utt", desc=f"extract {backbone.name}", enabled=progress)
        audio_seconds, started = 0.0, time.perf_counter()
        new_failures = 0
        batches = [b for s in todo for b in s.batches]
        decoded_batches = _prefetch(batches, lambda b: _decode_batch(b, paths, backbone), workers)
        try:
            for current in todo:
                pooled: dict[str, list[torch.Tensor]] = {name: [] for name in pooling}
                frames: list[torch.Tensor] = []
                positions: list[int] = []
                failures: list[dict] = []
                for _ in current.batches:
                    decoded = next(decoded_batches)
                    for position, error in decoded.failures:
                        failures.append({"utt_id": utt_ids[position], "position": position,
                                         "path": str(paths[position]), "error": error})
                    if decoded.waves:
                        output = backbone.encode(decoded.waves)
                        kept = output.hidden_states if keep_all else output.hidden_states[layers]
                        for name, values in pool_frames(kept, output.num_frames, pooling).items():
                            pooled[name].append(values.cpu())
                        if frame_layers:
                            states = output.hidden_states[frame_layers].cpu()
                            for b, n in enumerate(output.num_frames.tolist()):
                                frames.append(states[:, b, :n].transpose(0, 1).contiguous())
                        positions.extend(decoded.positions)
                        audio_seconds += sum(len(w) for w in decoded.waves) / backbone.sample_rate
                    bar.update(len(decoded.positions) + len(decoded.failures))
                    bar.set_postfix_str(f"{audio_seconds / max(time.perf_counter() - started, 1e-9):.0f}x real time")
                arrays = {
                    name: torch.cat(values) if values else torch.zeros(0, len(layers), backbone.width)
                    for name, values in pooled.items()
                }
                if frame_layers:
                    arrays["frames"] = (torch.cat(frames) if frames else torch.zeros(0, len(frame_layers), backbone.width))
                    arrays["frame_offsets"] = torch.tensor([0] + [len(f) for f in frames]).cumsum(0)
                _write_shard(out_dir / _shard_name(current.index), arrays, positions, utt_ids, failures)
                new_failures += len(failures)
        finally:
            decoded_batches.close()
            bar.close()

        if shard is None:
            _refuse_if_nothing_stored(out_dir, mine, manifest_name)
        final = _finalize(out_dir, config, [s.index for s in mine])
        if final["num_failed"]:
            warnings.warn(
                f"{final['num_failed']} of {sum(len(s.positions) for s in mine)} clips could not be decoded and "
                f"were skipped ({new_failures} in this run); see {out_dir / 'failures.csv'}",
                stacklevel=2,
            )
        return out_dir


def merge_feature_stores(parts: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Join the part stores of `extract_features(..., shard=(i, n))`, i = 0..n-1, into one store.

    The result equals a single-process store: the same shard files, index in manifest order.

    >>> merge_feature_stores(["part0", "part1"], "features")  # doctest: +SKIP
    PosixPath('features')
    """
    out_dir = Path(out_dir)
    if not parts:
        raise FeatureStoreError("merge_feature_stores needs at least one part store")
    configs = []
    for part in map(Path, parts):
        if not (part / "store.json").is_file():
            raise FeatureStoreError(f"{part}: no store.json; not a feature store")
        config = _read_json(part / "store.json")
        if config.get("part") is None:
            raise FeatureStoreError(f"{part}: a whole store, not a part made with shard=(i, n)")
        if not config.get("complete"):
            raise FeatureStoreError(f"{part}: part {config['part']} is unfinished; rerun its extract_features first")
        configs.append((part, config))
    first_path, first = configs[0]
    count = first["part"][1]
    for path, config in configs[1:]:
        if any(config.get(k) != first.get(k) for k in _IDENTITY) or config["part"][1] != count:
            raise FeatureStoreError(
                f"{path} and {first_path} were made differently "
                f"({_describe_difference(config, dict(first, part=config['part']))}); they cannot be merged"
            )
    seen = sorted(config["part"][0] for _, config in configs)
    if seen != list(range(count)):
        missing = sorted(set(range(count)) - set(seen))
        raise FeatureStoreError(
            f"merging needs each of the {count} parts exactly once; got parts {seen}"
            + (f", missing {missing}" if missing else "")
        )

    merged = dict(first, part=None, shards=sorted(i for _, c in configs for i in c["shards"]), complete=False)
    for key in ("num_stored", "num_failed"):
        merged.pop(key, None)
    with folder_lock(out_dir, "a feature store merge"):
        if (out_dir / "store.json").is_file():
            _check_identity(out_dir, _read_json(out_dir / "store.json"), merged)
        _write_json(out_dir / "store.json", merged)
        for path, config in configs:
            for index in config["shards"]:
                source = path / _shard_name(index)
                write_atomic(out_dir / _shard_name(index), lambda tmp, source=source: shutil.copyfile(source, tmp))
        _finalize(out_dir, merged, merged["shards"])
    return out_dir


# ----------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------


class FeatureStore:
    """A finished feature store, opened for reading.

    `info` is store.json; `utt_ids` the stored utterances in manifest order; `failures`
    the clips that could not be decoded. `utt_id in store` tells whether one is stored.

    >>> store = FeatureStore("features/")  # doctest: +SKIP
    >>> store.load(store.utt_ids[:2], layers=[3], pooling="mean+std").shape  # doctest: +SKIP
    torch.Size([2, 1, 1024])
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        store_json = self.path / "store.json"
        if not store_json.is_file():
            raise FeatureStoreError(f"{self.path}: no store.json; not a feature store (make one with extract_features)")
        self.info = _read_json(store_json)
        if self.info.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(
                f"{self.path}: store format version {self.info.get('format_version')!r}; this package reads "
                f"version {FORMAT_VERSION}. Extract the features again"
            )
        if not self.info.get("complete"):
            raise FeatureStoreError(
                f"{self.path}: the store is unfinished (an interrupted extraction); run extract_features "
                "again with the same arguments to finish it"
            )
        self.index = self._read_index()
        self._where = dict(zip(self.index["utt_id"], zip(self.index["shard"].tolist(), self.index["row"].tolist())))

    def _damaged(self, path: Path, problem: str) -> FeatureStoreError:
        return FeatureStoreError(
            f"{path}: {problem}; the feature store {self.path} is damaged: delete it and run extract again"
        )

    def _read_index(self) -> pd.DataFrame:
        path = self.path / "index.parquet"
        if not path.is_file():
            raise self._damaged(path, "missing (no such file)")
        try:
            index = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError and others for a damaged file
            raise self._damaged(path, f"not a readable Parquet index ({type(error).__name__}: {error})") from error
        absent = [c for c in ("utt_id", "shard", "row") if c not in index.columns]
        if absent:
            raise self._damaged(path, f"lacks column(s) {', '.join(absent)}")
        stored = self.info.get("num_stored")
        if stored is not None and stored != len(index):
            raise self._damaged(path, f"has {len(index)} rows, store.json says {stored}")
        return index

    @contextmanager
    def _open_shard(self, shard: int) -> Iterator:
        """A shard file opened with safetensors; a missing or damaged one raises naming it."""
        path = self.path / _shard_name(shard)
        if not path.is_file():
            raise self._damaged(path, "missing (no such file)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                yield handle
        except SafetensorError as error:
            raise self._damaged(path, f"not a readable safetensors shard ({error})") from error

    @property
    def utt_ids(self) -> list[str]:
        return self.index["utt_id"].tolist()

    @property
    def layers(self) -> list[int]:
        return list(self.info["layers"])

    @property
    def failures(self) -> pd.DataFrame:
        path = self.path / "failures.csv"
        if not path.is_file():
            raise self._damaged(path, "missing (no such file)")
        return pd.read_csv(path, dtype={"utt_id": str, "path": str, "error": str})

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._where

    def check_backbone(self, backbone: Backbone | dict) -> None:
        """Raise `FeatureStoreError` unless the store was made by this backbone (same
        name, revision, family, layers, width, precision)."""
        wanted = backbone.describe() if isinstance(backbone, Backbone) else dict(backbone)
        found = self.info["backbone"]
        if found != wanted:
            differences = [f"{k}: store has {found.get(k)!r}, asked {wanted.get(k)!r}"
                           for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
            raise FeatureStoreError(
                f"{self.path}: made by a different backbone ({'; '.join(differences)}); "
                "features from different backbones cannot be mixed"
            )

    def _layer_slots(self, layers: Sequence[int] | None, stored: list[int], what: str) -> list[int]:
        if layers is None:
            return list(range(len(stored)))
        num_layers = self.info["backbone"]["num_layers"]
        wanted = _normalize_layers(layers, num_layers, what)
        missing = [layer for layer in wanted if layer not in stored]
        if missing:
            raise FeatureStoreError(f"{self.path}: layer(s) {missing} are not stored; {what} stored: {stored}")
        return [stored.index(layer) for layer in wanted]

    def _locate(self, utt_ids: Sequence[str]) -> list[tuple[int, int]]:
        missing = [u for u in utt_ids if u not in self._where]
        if missing:
            failed = set(self.failures["utt_id"]) & set(missing)
            raise FeatureStoreError(
                f"{self.path}: {len(missing)} of {len(utt_ids)} utt_id(s) are not in the store: "
                f"{', '.join(map(str, missing[:10]))}{', ...' if len(missing) > 10 else ''}"
                + (f" ({len(failed)} of them failed to decode; see failures.csv)" if failed else "")
            )
        return [self._where[u] for u in utt_ids]

    def load(self, utt_ids: Sequence[str], layers: Sequence[int] | None = None,
             pooling: str | Sequence[str] = "mean") -> torch.Tensor:
        """Pooled features float32[N, n_layers, D] (or [N, n_layers, 2D] for "mean+std",
        concatenated in the order asked), rows in the order of `utt_ids`."""
        pooling = _normalize_pooling(pooling)
        absent = [p for p in pooling if p not in self.info["pooling"]]
        if absent:
            raise FeatureStoreError(f"{self.path}: pooling {absent} not stored; stored: {self.info['pooling']}")
        slots = self._layer_slots(layers, self.layers, "layers")
        where = self._locate(list(utt_ids))
        width = self.info["width"]
        out = torch.empty(len(where), len(slots), width * len(pooling))
        shards = np.array([s for s, _ in where], dtype=np.int64)
        rows = torch.tensor([r for _, r in where], dtype=torch.long)
        for shard in np.unique(shards):
            take = torch.from_numpy(np.flatnonzero(shards == shard))
            with self._open_shard(int(shard)) as handle:
                for k, name in enumerate(pooling):
                    values = handle.get_tensor(name)[rows[take]][:, slots]
                    out[take, :, k * width : (k + 1) * width] = values
        return out

    def frames(self, utt_id: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Frame sequence of one utterance: float32[T, n_frame_layers, D]."""
        if not self.info["frame_layers"]:
            raise FeatureStoreError(f"{self.path}: no frame-level features stored (extract with frame_layers=...)")
        slots = self._layer_slots(layers, list(self.info["frame_layers"]), "frame_layers")
        ((shard, row),) = self._locate([utt_id])
        with self._open_shard(shard) as handle:
            offsets = handle.get_slice("frame_offsets")[row : row + 2].tolist()
            return handle.get_slice("frames")[offsets[0] : offsets[1]][:, slots]


def load_features(
    store_dir: str | Path,
    manifest_or_utt_ids: pd.DataFrame | Sequence[str],
    layers: Sequence[int] | None = None,
    pooling: str | Sequence[str] = "mean",
) -> torch.Tensor:
    """Pooled features float32[N, n_layers, D] ([N, n_layers, 2D] for "mean+std") aligned
    with the manifest rows (or the utt_ids given); raises listing any utt_id not stored.

    >>> load_features("features/", read_manifest("manifest.csv"), layers=[2]).shape  # doctest: +SKIP
    torch.Size([3000, 1, 512])
    """
    if isinstance(manifest_or_utt_ids, pd.DataFrame):
        utt_ids = manifest_or_utt_ids["utt_id"].astype(str).tolist()
    else:
        utt_ids = [str(u) for u in manifest_or_utt_ids]
    return FeatureStore(store_dir).load(utt_ids, layers=layers, pooling=pooling)
