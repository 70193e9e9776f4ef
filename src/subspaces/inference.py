"""Using a trained model: load it with its backbone, embed audio, verify pairs.

A model folder (`config.json` + `model.safetensors`, written by `SubspaceModel.save`)
names its backbone in its metadata (`backbone`, `backbone_revision`). `load_model` loads
that backbone, refuses one whose weights differ from those the model was trained on, and
returns a `SubspaceEncoder`, which turns audio into subspace vectors exactly as training
saw them: the backbone's hidden states of every layer, pooled over each clip's valid
frames the way the model's config says ("mean" or "mean+std"), then the subspace model.

Speaker verification needs a decision threshold. It is never guessed: calibrate one on
scored trials with `calibrate_threshold`, which stores it in the model folder
(`thresholds.json`), and `verify` uses it from then on.

>>> encoder = load_model("runs/demo/model")  # doctest: +SKIP
>>> vectors = encoder.embed(["a.wav", "b.wav"])  # doctest: +SKIP
>>> vectors["speaker"].shape  # doctest: +SKIP
(2, 384)
>>> encoder.verify("a.wav", "b.wav")  # doctest: +SKIP
(0.71, True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import write_text_atomic
from .backbones import Backbone, load_backbone, pooled_input
from .errors import SubspacesError
from .metrics import det_curve, eer_with_threshold
from .model import CONFIG_FILE, WEIGHTS_FILE, SubspaceModel

__all__ = [
    "OPERATING_POINTS",
    "THRESHOLDS_FILE",
    "InferenceError",
    "SubspaceEncoder",
    "calibrate_threshold",
    "load_model",
    "read_thresholds",
]

THRESHOLDS_FILE = "thresholds.json"
# "eer": where misses and false alarms are equally frequent. "min_dcf": the threshold of
# least detection cost with VoxCeleb's costs (p_target 0.01, c_miss = c_fa = 1), the
# same defaults as `metrics.min_dcf`.
OPERATING_POINTS = ("eer", "min_dcf")
_DCF_P_TARGET = 0.01

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


def load_model(
    name_or_dir: str | Path, *, device: str = "cpu", allow_download: bool = False,
    backbone: Backbone | None = None,
) -> SubspaceEncoder:
    """Load a trained model folder and the backbone it names, ready to embed audio.

    The backbone is loaded with `load_backbone(metadata["backbone"])` unless given as
    `backbone`; either way its revision must equal the model's `backbone_revision`.
    A local folder never touches the network (`allow_download` only matters when the
    backbone is a hub id that is not cached). Nothing is unpickled.

    >>> load_model("no/such/model")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    InferenceError: no/such/model: no such model folder (expected config.json + model.safetensors)
    """
    folder = Path(name_or_dir).expanduser()
    _check_model_folder(folder)
    model = SubspaceModel.load(folder, map_location=device)
    recorded_name = model.metadata.get("backbone")
    recorded_revision = model.metadata.get("backbone_revision")
    if backbone is None:
        if not recorded_name:
            raise InferenceError(
                f"{folder / CONFIG_FILE}: the model's metadata does not name its backbone "
                "(metadata.backbone); pass the backbone explicitly: load_model(..., backbone=load_backbone(NAME))"
            )
        backbone = load_backbone(recorded_name, allow_download=allow_download, device=device)
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
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InferenceError(f"{path}: not valid JSON ({error}); calibrate again with calibrate_threshold") from error
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "threshold" in v for v in data.values()):
        raise InferenceError(f"{path}: expected {{subspace: {{'threshold': ...}}}}; calibrate again with calibrate_threshold")
    return data


def calibrate_threshold(
    model_dir: str | Path, scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
    operating_point: str = "eer", *, subspace: str = "speaker", data: str = "",
) -> dict[str, Any]:
    """Choose a decision threshold from scored trials and store it in the model folder.

    `scores`: float[N] cosine scores of trials in `subspace`; `labels`: 1 for a target
    (same-speaker) trial, 0 otherwise. `operating_point`: "eer" (misses = false alarms)
    or "min_dcf" (least detection cost, p_target 0.01). `data` describes the trials
    (e.g. "FSDD, 5000 trials"); it is stored with the threshold, with the error rates
    reached there. Written atomically to `model_dir/thresholds.json`, one record per
    subspace (other subspaces' records are kept). Returns the record.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> calibrate_threshold(folder, [0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0])["threshold"]
    0.55
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InferenceError(f"{folder}: no such model folder")
    if operating_point not in OPERATING_POINTS:
        raise InferenceError(f"operating_point must be one of {', '.join(OPERATING_POINTS)}, got {operating_point!r}")
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

    @property
    def subspaces(self) -> dict[str, int]:
        """Subspace name -> size, in output order."""
        return self.model.config.sizes

    @property
    def pooling(self) -> list[str]:
        """The statistics pooled over time, in the order they are concatenated."""
        return self.model.config.pooling.split("+")

    def read(self, audio: Audio) -> np.ndarray:
        """One clip as float32[samples] at the backbone's rate: a file path is decoded
        (and resampled) with `Backbone.read`; an array must already be mono at that rate."""
        if isinstance(audio, (str, Path)):
            return self.backbone.read(audio)
        wave = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio, dtype=np.float32)
        if wave.ndim != 1:
            raise InferenceError(
                f"an audio array must be a mono 1-D waveform at {self.backbone.sample_rate} Hz, "
                f"got shape {wave.shape}; pass file paths to have them decoded and resampled"
            )
        return wave

    def _as_clips(self, audio_or_paths: Audio | Sequence[Audio]) -> list[np.ndarray]:
        if isinstance(audio_or_paths, (str, Path)) or (
                isinstance(audio_or_paths, np.ndarray) and audio_or_paths.ndim == 1):
            audio_or_paths = [audio_or_paths]
        clips = [self.read(item) for item in audio_or_paths]
        if not clips:
            raise InferenceError("nothing to embed: the list of clips is empty")
        return clips

    def pooled_features(self, audio_or_paths: Audio | Sequence[Audio], batch_size: int = 16) -> torch.Tensor:
        """The model's input for these clips: float[N, L, D], pooled as in training.

        Clips are sorted by length and run `batch_size` at a time (less padding); the
        rows come back in the order given.
        """
        if batch_size < 1:
            raise InferenceError(f"batch_size must be a positive integer, got {batch_size}")
        clips = self._as_clips(audio_or_paths)
        order = np.argsort([len(c) for c in clips], kind="stable")
        rows: list[torch.Tensor | None] = [None] * len(clips)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            output = self.backbone.encode([clips[i] for i in chosen])
            features = pooled_input(output.hidden_states[self.layers], output.num_frames, self.pooling).cpu()
            for row, index in zip(features, chosen):
                rows[index] = row
        return torch.stack(rows)

    @torch.inference_mode()
    def embed(self, audio_or_paths: Audio | Sequence[Audio], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Subspace vectors of clips (file paths or float arrays at the backbone's rate):
        {subspace: float32[N, size]}, rows in the order given.

        >>> encoder.embed(["a.wav"])["speaker"].shape  # doctest: +SKIP
        (1, 384)
        """
        features = self.pooled_features(audio_or_paths, batch_size=batch_size)
        device = self.model.input_mean.device
        return {name: vectors.float().cpu().numpy() for name, vectors in self.model(features.to(device)).items()}

    def threshold(self, subspace: str = "speaker") -> float:
        """The calibrated decision threshold of `subspace`; raises saying how to calibrate if none."""
        record = read_thresholds(self.folder).get(subspace)
        if record is None:
            raise InferenceError(
                f"{self.folder}: no decision threshold calibrated for the {subspace!r} subspace. Score labelled "
                f"trials (e.g. FSDD) and store one: `subspaces calibrate {self.folder} --corpus fsdd --split test`, "
                f"or calibrate_threshold({str(self.folder)!r}, scores, labels, operating_point='eer', subspace={subspace!r})"
            )
        return float(record["threshold"])

    def verify(self, a: Audio, b: Audio, subspace: str = "speaker") -> tuple[float, bool]:
        """Cosine score of two clips in `subspace` and the decision (score >= the calibrated
        threshold means "same"). Raises if no threshold is calibrated for `subspace`.

        >>> encoder.verify("a.wav", "b.wav")  # doctest: +SKIP
        (0.71, True)
        """
        if subspace not in self.subspaces:
            raise InferenceError(f"no subspace {subspace!r} in this model; it has {', '.join(self.subspaces)}")
        threshold = self.threshold(subspace)
        vectors = self.embed([a, b])[subspace].astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        if np.any(norms == 0):
            raise InferenceError(f"a clip has a zero {subspace} vector; its cosine score is undefined")
        score = float(vectors[0] @ vectors[1] / (norms[0] * norms[1]))
        return score, score >= threshold
