"""Speaker enrollment and identification in one subspace of a trained model.

A `SpeakerDatabase` holds, for each enrolled speaker, the mean of the unit-normalised
subspace vectors of their enrollment clips (the enrollment model, as SpeechBrain's
`SpeakerRecognition` and pyannote build one) and how many clips it came from. A clip is
scored against a speaker by the cosine of its vector with that mean: `identify` ranks
every speaker, `verify` decides for one with the model's calibrated threshold, and
`compare` scores two clips against each other.

A database belongs to one model: its vectors mean nothing in another model's subspace.
`save` records the model's digest (sha256 of its architecture and weights, see
`model_digest`) and its backbone, and `SpeakerDatabase.load` refuses an encoder that
differs in either. A saved database is a folder of two files, never pickled:

    speakers.safetensors   float32 `means` [S speakers, subspace size], rows in the
                           order of speakers.json's "speakers"
    speakers.json          format version, subspace, the speakers (name, clip count),
                           the model (folder, digest, backbone name and revision) and
                           the sha256 of the matrix, which ties the two files together

>>> encoder = load_model("runs/demo/model")  # doctest: +SKIP
>>> database = SpeakerDatabase(encoder)  # doctest: +SKIP
>>> database.register("george", ["0_george_0.wav", "1_george_1.wav"])  # doctest: +SKIP
>>> database.register("theo", ["0_theo_0.wav", "1_theo_1.wav"])  # doctest: +SKIP
>>> database.identify("2_george_2.wav", top_k=2)  # doctest: +SKIP
[('george', 0.83), ('theo', 0.12)]
>>> database.save("runs/demo/speakers")  # doctest: +SKIP
>>> database = SpeakerDatabase.load("runs/demo/speakers", encoder)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .atomic import write_atomic, write_text_atomic
from .errors import SubspacesError
from .inference import Audio, SubspaceEncoder, clip_name
from .metrics import unit_rows
from .model import SubspaceModel

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MATRIX_FILE",
    "SpeakerDatabase",
    "SpeakerDatabaseError",
    "model_digest",
]

MATRIX_FILE = "speakers.safetensors"
INDEX_FILE = "speakers.json"
FORMAT = "speech-subspaces speaker database"
FORMAT_VERSION = 1
_MATRIX_KEY = "means"


class SpeakerDatabaseError(SubspacesError, ValueError):
    """A speaker database, speaker name or enrollment that cannot be used; the message says why."""


def model_digest(model: SubspaceModel) -> str:
    """A fingerprint of a subspace model: sha256 of its config and of every weight tensor
    (names, dtypes, shapes, values), so a copy of the model matches and a retrained one
    with the same config does not. Free-form metadata is left out.

    >>> import torch
    >>> from subspaces.model import SubspaceConfig
    >>> config = SubspaceConfig(input_dim=8, num_layers=2, subspaces=(("speaker", 4),))
    >>> _ = torch.manual_seed(0); a = SubspaceModel(config)
    >>> _ = torch.manual_seed(0); b = SubspaceModel(config)
    >>> model_digest(a) == model_digest(b), model_digest(a).startswith("sha256:")
    (True, True)
    """
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{list(values.shape)}".encode())
        digest.update(values.flatten().view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def _matrix_digest(means: np.ndarray) -> str:
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(means, dtype="<f4").tobytes()).hexdigest()[:16]


class SpeakerDatabase:
    """Enrolled speakers of one encoder, in one of its subspaces (default "speaker").

    Each speaker is the mean of the unit-normalised vectors of their enrollment clips:
    float32[size], in `means` (float32[S, size], rows in `names` order), with the number
    of clips in `counts`. Scores are cosines, in [-1, 1].

    >>> database = SpeakerDatabase(load_model("runs/demo/model"))  # doctest: +SKIP
    >>> database.names  # doctest: +SKIP
    []
    """

    def __init__(self, encoder: SubspaceEncoder, subspace: str = "speaker"):
        if subspace not in encoder.subspaces:
            raise SpeakerDatabaseError(f"no subspace {subspace!r} in the model {encoder.folder}; it has "
                                       f"{', '.join(encoder.subspaces)}")
        self.encoder = encoder
        self.subspace = subspace
        self.size = int(encoder.subspaces[subspace])
        self.model_digest = model_digest(encoder.model)
        self._means: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        """The enrolled speakers, in the order they were first registered."""
        return list(self._means)

    @property
    def means(self) -> np.ndarray:
        """float32[S, size]: each speaker's enrollment mean, rows in `names` order."""
        if not self._means:
            return np.zeros((0, self.size), np.float32)
        return np.stack(list(self._means.values())).astype(np.float32)

    @property
    def counts(self) -> dict[str, int]:
        """Speaker name -> the number of clips their enrollment mean came from."""
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self._means)

    def __contains__(self, name: object) -> bool:
        return name in self._means

    def __repr__(self) -> str:
        return f"SpeakerDatabase({len(self)} speakers, {self.subspace!r} subspace of {self.encoder.folder})"

    def _vectors(self, clips: Sequence[Audio], batch_size: int) -> np.ndarray:
        """float64[N, size] unit vectors of clips in this database's subspace."""
        vectors = self.encoder.embed(list(clips), batch_size=batch_size)[self.subspace]
        return unit_rows(vectors, [clip_name(c, i) for i, c in enumerate(clips)], f"{self.subspace} vector")

    def _one(self, audio: Audio) -> np.ndarray:
        if isinstance(audio, (list, tuple)):
            raise SpeakerDatabaseError(f"expected one clip (a file path or a 1-D array), got a list of {len(audio)}")
        return self._vectors([audio], batch_size=1)[0]

    def _known(self, name: str) -> None:
        if name not in self._means:
            known = ", ".join(map(repr, self._means)) or "none yet: register some with register(name, files)"
            raise SpeakerDatabaseError(f"no speaker {name!r} in the database; enrolled: {known}")

    def register(self, name: str, files: Audio | Sequence[Audio], batch_size: int = 16) -> None:
        """Enroll `name` from clips (file paths, or float arrays at the backbone's rate):
        their vectors are scaled to length 1 and averaged. Registering a name that is
        already enrolled replaces its enrollment (it keeps its place in `names`); to add
        clips, register it again with the old and the new clips together. An unreadable
        file raises the encoder's `AudioError` naming it, and nothing is changed.

        >>> database.register("george", ["0_george_0.wav", "1_george_1.wav"])  # doctest: +SKIP
        >>> database.counts["george"]  # doctest: +SKIP
        2
        """
        if not isinstance(name, str) or not name.strip():
            raise SpeakerDatabaseError(f"a speaker name must be a non-empty string, got {name!r}")
        one_clip = isinstance(files, (str, Path)) or (isinstance(files, np.ndarray) and files.ndim == 1)
        clips = [files] if one_clip else list(files)
        if not clips:
            raise SpeakerDatabaseError(f"no enrollment clips given for speaker {name!r}; pass at least one file")
        mean = self._vectors(clips, batch_size).mean(axis=0)
        if not np.linalg.norm(mean) > 1e-6:
            raise SpeakerDatabaseError(f"the {len(clips)} enrollment clips of {name!r} point in opposite directions "
                                       f"in the {self.subspace} subspace (their mean is zero); enroll other clips")
        self._means[name] = mean.astype(np.float32)
        self._counts[name] = len(clips)

    def remove(self, name: str) -> None:
        """Forget an enrolled speaker; an unknown name raises listing the enrolled ones.

        >>> database.remove("george")  # doctest: +SKIP
        """
        self._known(name)
        del self._means[name], self._counts[name]

    def scores(self, audio: Audio) -> dict[str, float]:
        """Cosine score of one clip against every enrolled speaker: {name: score}, in `names` order.

        >>> database.scores("2_george_2.wav")  # doctest: +SKIP
        {'george': 0.83, 'theo': 0.12}
        """
        if not self._means:
            raise SpeakerDatabaseError("the speaker database is empty: register speakers with "
                                       "register(name, files) before identifying a clip")
        means = unit_rows(self.means, self.names, f"{self.subspace} vector")
        cosines = np.clip(means @ self._one(audio), -1.0, 1.0)
        return {name: float(score) for name, score in zip(self.names, cosines)}

    def identify(self, audio: Audio, top_k: int = 5) -> list[tuple[str, float]]:
        """The `top_k` enrolled speakers closest to one clip (a file path or a 1-D array at
        the backbone's rate): [(name, cosine score)], best first; all of them if fewer
        than `top_k` are enrolled. Ties keep registration order.

        >>> database.identify("2_george_2.wav", top_k=2)  # doctest: +SKIP
        [('george', 0.83), ('theo', 0.12)]
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise SpeakerDatabaseError(f"top_k must be a positive integer, got {top_k!r}")
        scores = self.scores(audio)
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        return ranked[: int(top_k)]

    def compare(self, a: Audio, b: Audio) -> float:
        """Cosine score of two clips in this database's subspace (no enrollment involved).

        >>> database.compare("0_george_0.wav", "1_george_1.wav")  # doctest: +SKIP
        0.77
        """
        vectors = self._vectors([a, b], batch_size=2)
        return float(np.clip(vectors[0] @ vectors[1], -1.0, 1.0))

    def verify(self, name: str, audio: Audio) -> tuple[float, bool]:
        """Is this clip `name`? The cosine score of the clip with `name`'s enrollment mean
        and the decision, score >= the model's calibrated threshold for this subspace
        (`inference.calibrate_threshold`). Raises telling how to calibrate if the model has
        no threshold. The threshold is calibrated on clip-to-clip trials; against a mean of
        several clips a speaker's own clips tend to score higher, so it errs towards
        rejecting impostors.

        >>> database.verify("george", "2_george_2.wav")  # doctest: +SKIP
        (0.83, True)
        """
        self._known(name)
        threshold = self.encoder.threshold(self.subspace)
        mean = self._means[name].astype(np.float64)
        score = float(np.clip(mean @ self._one(audio) / np.linalg.norm(mean), -1.0, 1.0))
        return score, score >= threshold

    def save(self, folder: str | Path) -> Path:
        """Write `speakers.safetensors` and `speakers.json` into `folder` (created if need
        be), each atomically; return the folder. Nothing is pickled.

        >>> database.save("runs/demo/speakers")  # doctest: +SKIP
        PosixPath('runs/demo/speakers')
        """
        from . import __version__

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        means = np.ascontiguousarray(self.means, dtype=np.float32)
        backbone = self.encoder.backbone
        index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "subspace": self.subspace,
            "size": self.size,
            "speakers": [{"name": name, "clips": self._counts[name]} for name in self.names],
            "matrix_sha256": _matrix_digest(means),
            "model": {
                "folder": str(self.encoder.folder.resolve()),
                "digest": self.model_digest,
                "backbone": backbone.name,
                "backbone_revision": backbone.revision,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # The matrix first: a save stopped between the two files leaves an index whose
        # matrix_sha256 the new matrix does not match, which `load` refuses.
        write_atomic(folder / MATRIX_FILE, lambda tmp: save_file({_MATRIX_KEY: means}, tmp,
                                                                 metadata={"format": FORMAT}))
        write_text_atomic(folder / INDEX_FILE, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, encoder: SubspaceEncoder) -> SpeakerDatabase:
        """Read a database written by `save`, for `encoder`, which must be the model it
        was enrolled with (same digest, same backbone name and revision; the model's folder
        may have moved). A missing, damaged or mismatched file raises naming it.

        >>> SpeakerDatabase.load("runs/demo/speakers", encoder)  # doctest: +SKIP
        SpeakerDatabase(2 speakers, 'speaker' subspace of runs/demo/model)
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise SpeakerDatabaseError(f"{folder}: no such speaker database folder (expected {INDEX_FILE} + "
                                       f"{MATRIX_FILE}, written by SpeakerDatabase.save)")
        index_path, matrix_path = folder / INDEX_FILE, folder / MATRIX_FILE
        for path in (index_path, matrix_path):
            if not path.is_file():
                raise SpeakerDatabaseError(f"{folder}: not a speaker database, {path.name} is missing")
        index = _read_index(index_path)
        _check_model(index_path, index["model"], encoder)
        subspace, size = index["subspace"], index["size"]
        if subspace not in encoder.subspaces:
            raise SpeakerDatabaseError(f"{index_path}: enrolled in the {subspace!r} subspace, which the model "
                                       f"{encoder.folder} does not have (it has {', '.join(encoder.subspaces)})")
        database = cls(encoder, subspace)
        if size != database.size:
            raise SpeakerDatabaseError(f"{index_path}: vectors of size {size}, but the model's {subspace!r} "
                                       f"subspace has size {database.size}")
        means = _read_matrix(matrix_path, len(index["speakers"]), size)
        if _matrix_digest(means) != index["matrix_sha256"]:
            raise SpeakerDatabaseError(f"{matrix_path}: does not match {index_path} (matrix_sha256 differs: written "
                                       "by another save, or a save was interrupted); save the database again")
        for speaker, mean in zip(index["speakers"], means):
            database._means[speaker["name"]] = mean.copy()
            database._counts[speaker["name"]] = speaker["clips"]
        return database


def _read_index(path: Path) -> dict[str, Any]:
    """speakers.json, checked field by field; anything malformed raises naming the file."""
    def damaged(problem: str) -> SpeakerDatabaseError:
        return SpeakerDatabaseError(f"{path}: {problem}; the file is damaged or was not written by "
                                    "SpeakerDatabase.save: save the database again")

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8 text
        raise damaged(f"not valid JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise damaged(f"not a speaker database index (\"format\" is not {FORMAT!r})")
    if index.get("format_version") != FORMAT_VERSION:
        raise SpeakerDatabaseError(f"{path}: format_version {index.get('format_version')!r}; this version of the "
                                   f"package reads version {FORMAT_VERSION}: register the speakers again")
    if not isinstance(index.get("subspace"), str):
        raise damaged('"subspace" must be a string')
    size = index.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise damaged(f'"size" must be a positive integer, got {size!r}')
    if not isinstance(index.get("matrix_sha256"), str):
        raise damaged('"matrix_sha256" must be a string')
    speakers = index.get("speakers")
    if not isinstance(speakers, list):
        raise damaged('"speakers" must be a list of {"name": ..., "clips": ...}')
    for speaker in speakers:
        if not (isinstance(speaker, dict) and isinstance(speaker.get("name"), str) and speaker["name"].strip()
                and isinstance(speaker.get("clips"), int) and not isinstance(speaker["clips"], bool)
                and speaker["clips"] >= 1):
            raise damaged(f'each of "speakers" must be {{"name": a non-empty string, "clips": a positive count}}, '
                          f"got {speaker!r}")
    names = [speaker["name"] for speaker in speakers]
    if len(set(names)) != len(names):
        raise damaged(f"speaker names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    model = index.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(key), str)
                                              for key in ("folder", "digest", "backbone", "backbone_revision")):
        raise damaged('"model" must give its "folder", "digest", "backbone" and "backbone_revision" as strings')
    return index


def _check_model(path: Path, recorded: dict[str, str], encoder: SubspaceEncoder) -> None:
    """Refuse an encoder other than the one the database at `path` was enrolled with."""
    backbone, digest = encoder.backbone, model_digest(encoder.model)
    again = "load it with that model, or register the speakers again with this one"
    if recorded["digest"] != digest:
        raise SpeakerDatabaseError(
            f"{path}: enrolled with the model at {recorded['folder']} ({recorded['digest']}), but this encoder's "
            f"model {encoder.folder} is another ({digest}): its vectors lie in another "
            f"subspace, so the scores would be meaningless; {again}")
    if (recorded["backbone"], recorded["backbone_revision"]) != (backbone.name, backbone.revision):
        raise SpeakerDatabaseError(
            f"{path}: enrolled on backbone {recorded['backbone']} revision {recorded['backbone_revision']}, but "
            f"this encoder runs {backbone.name} revision {backbone.revision}; {again}")


def _read_matrix(path: Path, num_speakers: int, size: int) -> np.ndarray:
    """float32[num_speakers, size] from speakers.safetensors; a damaged file raises naming it."""
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise SpeakerDatabaseError(f"{path}: not a readable safetensors file ({error}); it is damaged or "
                                   "incomplete (an interrupted copy?): save the database again") from error
    means = tensors.get(_MATRIX_KEY)
    if means is None:
        raise SpeakerDatabaseError(f"{path}: no {_MATRIX_KEY!r} tensor (it holds {sorted(tensors)}); save the "
                                   "database again")
    if means.dtype != np.float32 or means.shape != (num_speakers, size):
        raise SpeakerDatabaseError(f"{path}: {_MATRIX_KEY!r} is {means.dtype}{list(means.shape)}, expected "
                                   f"float32[{num_speakers}, {size}] ({num_speakers} speakers in {INDEX_FILE})")
    if not np.isfinite(means).all():
        raise SpeakerDatabaseError(f"{path}: {_MATRIX_KEY!r} holds NaN or infinite values; save the database again")
    return means
