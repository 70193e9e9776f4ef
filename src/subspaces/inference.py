"""Using a trained model: load it with its backbone, embed audio, verify pairs.

A model folder (`config.json` + `model.safetensors`, written by `SubspaceModel.save`)
names its backbone in its metadata (`backbone`, `backbone_revision`). `load_model` loads
that backbone, refuses one whose weights differ from those the model was trained on, and
returns a `SubspaceEncoder`, which turns audio into subspace vectors exactly as training
saw them: the backbone's hidden states of every layer, pooled over each clip's valid
frames the way the model's config says ("mean" or "mean+std"), then the subspace model.

A folder that training is still writing (or was, until it was stopped) is marked
UNFINISHED (`folders.mark_unfinished`); `load_model` refuses it unless asked with
`allow_unfinished=True`: its weights are those of a checkpoint midway, not the model.

Speaker verification needs a decision threshold. It is never guessed: calibrate one on
scored trials with `calibrate_threshold`, which stores it in the model folder
(`thresholds.json`) with the number of trials it came from, and `verify` uses it from
then on. Both refuse a threshold from fewer than `MIN_TARGET_TRIALS` target and
`MIN_NONTARGET_TRIALS` non-target trials.

>>> encoder = load_model("runs/demo/model")  # doctest: +SKIP
>>> vectors = encoder.embed(["a.wav", "b.wav"])  # doctest: +SKIP
>>> vectors["speaker"].shape  # doctest: +SKIP
(2, 384)
>>> encoder.verify("a.wav", "b.wav")  # doctest: +SKIP
(0.71, True)
"""

from __future__ import annotations

import json
import math
import numbers
import re
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_text_atomic
from .audio import resample
from .backbones import Backbone, load_backbone, pooled_input
from .devices import check_device
from .errors import SubspacesError
from .folders import unfinished
from .metrics import det_curve, eer_with_threshold, unit_rows
from .model import CONFIG_FILE, WEIGHTS_FILE, SubspaceModel
from .progress import progress_bar

__all__ = [
    "DEFAULT_MODEL",
    "MIN_NONTARGET_TRIALS",
    "MIN_TARGET_TRIALS",
    "OPERATING_POINTS",
    "THRESHOLDS_FILE",
    "InferenceError",
    "SubspaceEncoder",
    "calibrate_threshold",
    "check_trial_counts",
    "clip_name",
    "model_folder",
    "pretrained_models",
    "load_model",
    "read_thresholds",
    "stored_threshold",
]

THRESHOLDS_FILE = "thresholds.json"
# "eer": where misses and false alarms are equally frequent. "min_dcf": the threshold of
# least detection cost with VoxCeleb's costs (p_target 0.01, c_miss = c_fa = 1), the
# same defaults as `metrics.min_dcf`.
OPERATING_POINTS = ("eer", "min_dcf")
_DCF_P_TARGET = 0.01
# The fewest trials of each kind a threshold may be chosen on (issue 17). A miss or
# false-alarm rate measured on n trials is uncertain by up to 0.5 / sqrt(n) (one standard
# error): 7 points at 50 target trials, 2.2 at 500 non-target ones. With fewer, the
# threshold's own error exceeds the differences between the rates it is chosen to balance
# (1 target trial makes p_miss 0 or 1).
MIN_TARGET_TRIALS = 50
MIN_NONTARGET_TRIALS = 500

Audio = str | Path | np.ndarray


class InferenceError(SubspacesError, ValueError):
    """A model folder, backbone or input that cannot be used for inference; the message says why."""


def _check_model_folder(folder: Path) -> None:
    if not folder.exists():
        raise InferenceError(f"{folder}: no such model folder (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    if not folder.is_dir():
        raise InferenceError(f"{folder}: a file, not a model folder (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise InferenceError(f"{folder}: not a subspace model folder, {name} is missing")


# The longest file `SubspaceEncoder.read` decodes (longer than the backbone's window is
# encoded in windows); a guard against decoding an hour of audio by mistake.
LONGEST_CLIP_S = 600.0
# Embedding more clips than this at once shows progress (calibrate, score, enroll do).
PROGRESS_FROM = 64
# Models shipped in the package, loadable by name (`load_model("whisper-base-subspaces")`);
# each folder's README.md is its model card (what it scored, on what, and how it was made).
PRETRAINED_FOLDER = Path(__file__).parent / "data" / "pretrained"
DEFAULT_MODEL = "whisper-base-subspaces"


def pretrained_models() -> list[str]:
    """The names of the models shipped with the package."""
    return sorted(p.parent.name for p in PRETRAINED_FOLDER.glob(f"*/{CONFIG_FILE}"))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_MODEL_FILES = [CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE, "README.md"]


def model_folder(name_or_dir: str | Path, *, allow_download: bool = False) -> Path:
    """The folder of a model given as a folder, a shipped model's name, or a Hugging Face
    hub id (`owner/name`, found in the local hub cache, downloaded only if
    `allow_download`); a local folder wins."""
    folder = Path(name_or_dir).expanduser()
    if folder.exists():
        return folder
    if str(name_or_dir) in pretrained_models():
        return PRETRAINED_FOLDER / str(name_or_dir)
    if _HUB_ID.fullmatch(str(name_or_dir)):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(str(name_or_dir), allow_patterns=_MODEL_FILES,
                                          local_files_only=not allow_download))
        except LocalEntryNotFoundError:
            raise InferenceError(
                f"{name_or_dir}: not a local folder, a shipped model ({', '.join(pretrained_models())}) or a hub id "
                "in the local Hugging Face cache; pass allow_download=True (--allow-download) to fetch it"
            ) from None
    return folder


def load_model(
    name_or_dir: str | Path = DEFAULT_MODEL, *, device: str = "cpu", allow_download: bool = False,
    backbone: Backbone | None = None, allow_unfinished: bool = False, precision: str = "auto",
) -> SubspaceEncoder:
    """Load a trained model (a folder, or a shipped model by name: `pretrained_models()`;
    default the demo's, "whisper-base-subspaces") and the backbone it names, ready to embed audio.

    The backbone is loaded with `load_backbone(metadata["backbone"])` unless given as
    `backbone`; either way its revision must equal the model's `backbone_revision`.
    A local folder never touches the network (`allow_download` only matters when the
    backbone is a hub id that is not cached). Nothing is unpickled. A folder whose
    training has not finished (marked UNFINISHED) is refused unless `allow_unfinished`.
    `precision`: the backbone's, as `load_backbone` takes it (ignored for a given `backbone`).

    >>> load_model("no/such/model")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InferenceError: no/such/model: no such model folder (expected config.json + model.safetensors)
    """
    check_device(device, "device")
    folder = model_folder(name_or_dir, allow_download=allow_download)
    _check_model_folder(folder)
    stopped_at = unfinished(folder)
    if stopped_at is not None and not allow_unfinished:
        raise InferenceError(
            f"{folder}: an unfinished model ({stopped_at}, then stopped: rerun the same train command to "
            "finish it), or pass allow_unfinished=True / --allow-unfinished to use it anyway"
        )
    model = SubspaceModel.load(folder, map_location=device)
    recorded_name = model.metadata.get("backbone")
    recorded_revision = model.metadata.get("backbone_revision")
    if backbone is None:
        if not recorded_name:
            raise InferenceError(
                f"{folder / CONFIG_FILE}: the model's metadata does not name its backbone "
                "(metadata.backbone); pass the backbone explicitly: load_model(..., backbone=load_backbone(NAME))"
            )
        backbone = load_backbone(recorded_name, allow_download=allow_download, device=device, precision=precision)
    else:
        backbone = backbone.to(device)
    if not recorded_revision:
        raise InferenceError(
            f"{folder / CONFIG_FILE}: the model's metadata does not record its backbone's revision "
            "(metadata.backbone_revision), so features from other weights could not be told apart; "
            "save the model with metadata={'backbone': ..., 'backbone_revision': backbone.revision}"
        )
    if backbone.revision.startswith(recorded_revision) and recorded_revision != backbone.revision:
        raise InferenceError(
            f"{folder} was trained on {recorded_name or 'a backbone'} features as an earlier version of this "
            f"package read them out (revision {recorded_revision}; now {backbone.revision}: Whisper's layer 0 "
            "no longer includes the positional table). Extract the features again and retrain the model"
        )
    if recorded_revision != backbone.revision:
        raise InferenceError(
            f"{folder} was trained on {recorded_name or 'a backbone'} revision {recorded_revision}, but the "
            f"backbone loaded ({backbone.name}) is revision {backbone.revision}; embeddings from other "
            "weights would be meaningless. Load the backbone the model was trained on"
        )
    return SubspaceEncoder(model, backbone, folder)


def read_thresholds(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The calibrated thresholds stored in a model folder: {subspace: record} ({} if none).

    >>> import tempfile
    >>> read_thresholds(tempfile.mkdtemp())
    {}
    """
    path = model_folder(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InferenceError(f"{path}: not valid JSON ({error}); calibrate again with calibrate_threshold") from error
    if not isinstance(data, dict) or not all(isinstance(v, dict) and _is_number(v.get("threshold"))
                                             for v in data.values()):
        raise InferenceError(f"{path}: expected {{subspace: {{'threshold': NUMBER, ...}}}}; "
                             "calibrate again with calibrate_threshold")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_trial_counts(num_target: int, num_nontarget: int, where: str) -> None:
    """Refuse to choose a threshold from fewer than `MIN_TARGET_TRIALS` target or
    `MIN_NONTARGET_TRIALS` non-target trials; `where` (a file, a corpus) starts the message.

    >>> check_trial_counts(1, 9, "few.csv")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InferenceError: few.csv: 1 target and 9 non-target trials; a threshold needs at least 50 and 500 ...
    """
    if num_target >= MIN_TARGET_TRIALS and num_nontarget >= MIN_NONTARGET_TRIALS:
        return

    def spread(n: int) -> str:
        return f"+-{0.5 / math.sqrt(n):.0%}" if n else "undefined"

    raise InferenceError(
        f"{where}: {num_target} target and {num_nontarget} non-target trials; a threshold needs at least "
        f"{MIN_TARGET_TRIALS} target and {MIN_NONTARGET_TRIALS} non-target trials: from fewer, the miss and "
        f"false-alarm rates it is chosen on are uncertain by up to {spread(num_target)} and "
        f"{spread(num_nontarget)} (one standard error), more than the differences the threshold decides. "
        "Calibrate on more utterances (more speakers, more clips per speaker)"
    )


def calibrate_threshold(
    model_dir: str | Path, scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
    operating_point: str = "eer", *, subspace: str = "speaker", data: str = "",
) -> dict[str, Any]:
    """Choose a decision threshold from scored trials and store it in the model folder.

    `scores`: float[N] cosine scores of trials in `subspace`; `labels`: 1 for a target
    (same-speaker) trial, 0 otherwise. `operating_point`: "eer" (misses = false alarms)
    or "min_dcf" (least detection cost, p_target 0.01). `data` describes the trials
    (e.g. "FSDD, 5000 trials"); it is stored with the threshold, with the error rates
    reached there, and the number of trials of each kind. At least `MIN_TARGET_TRIALS`
    target and `MIN_NONTARGET_TRIALS` non-target trials are needed. Written atomically to
    `model_dir/thresholds.json`, one record per subspace (other subspaces' records are
    kept). Returns the record.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> trials = 125  # copies of 2 target and 4 non-target trials: 250 and 500
    >>> calibrate_threshold(folder, [0.9, 0.5, 0.6, 0.4, 0.2, 0.1] * trials, [1, 1, 0, 0, 0, 0] * trials)["threshold"]
    0.55
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InferenceError(f"{folder}: no such model folder")
    if operating_point not in OPERATING_POINTS:
        raise InferenceError(f"operating_point must be one of {', '.join(OPERATING_POINTS)}, got {operating_point!r}")
    targets = np.asarray(labels)
    if targets.ndim != 1 or len(targets) != len(np.asarray(scores)) or not np.isin(targets, (0, 1)).all():
        raise InferenceError(f"labels must be one 0 (non-target) or 1 (target) per score, got {len(targets)} "
                             f"label(s) for {len(np.asarray(scores))} score(s)")
    check_trial_counts(int((targets == 1).sum()), int((targets == 0).sum()), str(folder))
    p_fa, p_miss, thresholds = det_curve(scores, labels)
    if operating_point == "eer":
        _, threshold = eer_with_threshold(scores, labels)
    else:
        cost = _DCF_P_TARGET * p_miss + (1 - _DCF_P_TARGET) * p_fa
        threshold = float(thresholds[int(np.argmin(cost))])
        if not np.isfinite(threshold):  # rejecting everything is cheapest: use the top score
            threshold = float(np.nextafter(thresholds[-2], np.inf))
    scores_array, targets = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    accepted = scores_array >= threshold
    record = {
        "threshold": float(threshold),
        "operating_point": operating_point,
        "data": data,
        "num_target_trials": int(targets.sum()),
        "num_nontarget_trials": int((~targets).sum()),
        "p_miss": float((~accepted & targets).sum() / targets.sum()),
        "p_fa": float((accepted & ~targets).sum() / (~targets).sum()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    stored = read_thresholds(folder)
    stored[subspace] = record
    write_text_atomic(folder / THRESHOLDS_FILE, json.dumps(stored, indent=2) + "\n")
    return record


def clip_name(audio: Audio, index: int) -> str:
    """How messages name a clip: its path, or its place in the list for an array."""
    return str(audio) if isinstance(audio, (str, Path)) else f"clip {index} (an array)"


def stored_threshold(model_dir: str | Path, subspace: str = "speaker") -> float:
    """The calibrated decision threshold of `subspace` in a model folder (or shipped name);
    raises saying how to calibrate if none, or if it was chosen on too few trials; warns if
    its record does not say on how many. Reads no weights, so a CLI can check it first."""
    folder = model_folder(model_dir)
    record = read_thresholds(folder).get(subspace)
    calibrate = (f"`subspaces calibrate {folder} --corpus dev`, or calibrate_threshold("
                 f"{str(folder)!r}, scores, labels, operating_point='eer', subspace={subspace!r})")
    if record is None:
        raise InferenceError(
            f"{folder}: no decision threshold calibrated for the {subspace!r} subspace. Score labelled "
            f"trials (the dev suite, never the test set) and store one: {calibrate}"
        )
    path = folder / THRESHOLDS_FILE
    counts = record.get("num_target_trials"), record.get("num_nontarget_trials")
    if counts == (None, None):
        # Records written before the counts were kept: they may be sound, so warn only.
        warnings.warn(f"{path}: the {subspace!r} threshold does not record how many trials it was calibrated "
                      f"on, so it may rest on too few; calibrate again to be sure: {calibrate}", stacklevel=2)
    elif not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise InferenceError(f"{path}: the {subspace!r} record's num_target_trials and num_nontarget_trials "
                             f"must be counts, got {counts[0]!r} and {counts[1]!r}; calibrate again: {calibrate}")
    else:
        try:
            check_trial_counts(*counts, f"{path} (the {subspace!r} threshold)")
        except InferenceError as error:
            raise InferenceError(f"{error}, e.g. {calibrate}") from None
    return float(record["threshold"])


class SubspaceEncoder:
    """A trained subspace model and its frozen backbone: audio in, subspace vectors out.

    `model` maps pooled features float[N, L, D] to {subspace: float[N, size]};
    `backbone` makes those features; `folder` is where the model (and its thresholds)
    live. Build one with `load_model`.
    """

    def __init__(self, model: SubspaceModel, backbone: Backbone, folder: str | Path):
        layers = model.metadata.get("layers")
        self.layers: list[int] = list(range(backbone.num_layers)) if layers is None else [int(x) for x in layers]
        width = backbone.width * (2 if model.config.pooling == "mean+std" else 1)
        if len(self.layers) != model.config.num_layers or width != model.config.input_dim:
            raise InferenceError(
                f"{folder}: the model takes features [{model.config.num_layers} layers, {model.config.input_dim}] "
                f"but {backbone.name} gives [{len(self.layers)} layers, {width}] with {model.config.pooling!r} pooling; "
                "the backbone is not the one the model was trained on"
            )
        self.model = model.eval()
        self.backbone = backbone
        self.folder = Path(folder)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = DEFAULT_MODEL, **options: Any) -> SubspaceEncoder:
        """`load_model` under the Hugging Face name: a folder, a shipped name or a hub id."""
        return load_model(name_or_dir, **options)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model folder to `folder`: config.json, model.safetensors, and the
        calibrated thresholds and model card (README.md) when the model has them."""
        folder = Path(folder)
        self.model.save(folder)
        for name in (THRESHOLDS_FILE, "README.md"):
            source = self.folder / name
            if source.is_file() and source.resolve() != (folder / name).resolve():
                text = source.read_text(encoding="utf-8")
                write_text_atomic(folder / name, text)
        return folder

    @property
    def subspaces(self) -> dict[str, int]:
        """Subspace name -> size, in output order."""
        return self.model.config.sizes

    @property
    def pooling(self) -> list[str]:
        """The statistics pooled over time, in the order they are concatenated."""
        return self.model.config.pooling.split("+")

    def read(self, audio: Audio, sample_rate: int | None = None) -> np.ndarray:
        """One clip as float32[samples] at the backbone's rate: a file path is decoded and
        resampled (`Backbone.read`, up to `LONGEST_CLIP_S`); an array is mono, at
        `sample_rate` Hz (resampled if that is not the backbone's; default: already at it)."""
        if isinstance(audio, (str, Path)):
            return self.backbone.read(audio, max_duration_s=LONGEST_CLIP_S)
        wave = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio, dtype=np.float32)
        if wave.ndim != 1:
            raise InferenceError(
                f"an audio array must be a mono 1-D waveform, got shape {wave.shape}; pass file paths to have "
                "them decoded, mixed to mono and resampled"
            )
        if sample_rate is not None and sample_rate != self.backbone.sample_rate:
            if sample_rate < 1:
                raise InferenceError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
            wave = resample(wave, int(sample_rate), self.backbone.sample_rate)
        return wave

    def _as_clips(self, audio_or_paths: Audio | Sequence[Audio], sample_rate: int | None) -> list[np.ndarray]:
        if isinstance(audio_or_paths, (str, Path)) or (
                isinstance(audio_or_paths, np.ndarray) and audio_or_paths.ndim == 1):
            audio_or_paths = [audio_or_paths]
        clips = [self.read(item, sample_rate) for item in audio_or_paths]
        if not clips:
            raise InferenceError("nothing to embed: the list of clips is empty")
        return clips

    def _windows(self, clip: np.ndarray) -> list[np.ndarray]:
        """A clip longer than the backbone takes in one pass (Whisper: 30 s), cut into the
        fewest windows of equal length that fit, without overlap; else the clip itself."""
        longest = self.backbone.max_samples
        if longest is None or len(clip) <= longest:
            return [clip]
        count = -(-len(clip) // longest)
        return np.array_split(clip, count)

    def pooled_features(self, audio_or_paths: Audio | Sequence[Audio], batch_size: int = 16, *,
                        sample_rate: int | None = None) -> torch.Tensor:
        """The model's input for these clips: float[N, L, D], pooled as in training.

        Clips are sorted by length and run `batch_size` at a time (less padding); the
        rows come back in the order given. A clip longer than the backbone's window is
        encoded in windows (`_windows`) and the frames of all its windows are pooled
        together, as one clip's frames are.
        """
        if batch_size < 1:
            raise InferenceError(f"batch_size must be a positive integer, got {batch_size}")
        clips = self._as_clips(audio_or_paths, sample_rate)
        pieces = [(index, piece) for index, clip in enumerate(clips) for piece in self._windows(clip)]
        order = np.argsort([len(piece) for _, piece in pieces], kind="stable")
        frames: list[list[torch.Tensor]] = [[] for _ in clips]  # per clip: float[L, T, D] of each window
        # Progress (a bar in a terminal, a line every few seconds in a log) for long lists only.
        bar = progress_bar(total=len(pieces), desc="embed", unit="clip", enabled=len(pieces) > PROGRESS_FROM)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            output = self.backbone.encode([pieces[i][1] for i in chosen])
            states = output.hidden_states[self.layers]
            for column, position in enumerate(chosen):
                frames[pieces[position][0]].append(states[:, column, : int(output.num_frames[column])].cpu())
            bar.update(len(chosen))
        bar.close()
        rows = []
        for windows in frames:
            joined = torch.cat(windows, dim=1)[:, None]  # float[L, 1, T, D]
            rows.append(pooled_input(joined, torch.tensor([joined.shape[2]]), self.pooling)[0])
        return torch.stack(rows)

    @torch.inference_mode()
    def embed(self, audio_or_paths: Audio | Sequence[Audio], batch_size: int = 16, *,
              sample_rate: int | None = None) -> dict[str, np.ndarray]:
        """Subspace vectors of clips: {subspace: float32[N, size]}, rows in the order given.
        A clip is a file path (decoded and resampled) or a float array at `sample_rate` Hz
        (default: the backbone's, 16 kHz; an 8 kHz array says `sample_rate=8000`).

        >>> encoder.embed(["a.wav"])["speaker"].shape  # doctest: +SKIP
        (1, 384)
        """
        features = self.pooled_features(audio_or_paths, batch_size=batch_size, sample_rate=sample_rate)
        device = self.model.input_mean.device
        return {name: vectors.float().cpu().numpy() for name, vectors in self.model(features.to(device)).items()}

    def threshold(self, subspace: str = "speaker") -> float:
        """The calibrated decision threshold of `subspace` (see `stored_threshold`)."""
        return stored_threshold(self.folder, subspace)

    def verify(self, a: Audio, b: Audio, subspace: str = "speaker", *,
               sample_rate: int | None = None) -> tuple[float, bool]:
        """Cosine score of two clips (as `embed` takes them) in `subspace` and the decision
        (score >= the calibrated threshold means "same"). Raises if no threshold is
        calibrated for `subspace`.

        >>> encoder.verify("a.wav", "b.wav")  # doctest: +SKIP
        (0.71, True)
        """
        if subspace not in self.subspaces:
            raise InferenceError(f"no subspace {subspace!r} in this model; it has {', '.join(self.subspaces)}")
        threshold = self.threshold(subspace)
        names = [clip_name(clip, i) for i, clip in enumerate((a, b))]
        vectors = unit_rows(self.embed([a, b], sample_rate=sample_rate)[subspace], names, f"{subspace} vector")
        score = float(vectors[0] @ vectors[1])
        return score, score >= threshold
