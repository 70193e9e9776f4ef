"""ONNX export of a trained model: waveform to subspaces, or pooled features to subspaces.

Full export (Whisper backbones): inputs `waveform` float[batch, samples] (16 kHz, each
row zero-padded past its clip's end) and `lengths` int64[batch] (each clip's samples);
one output per subspace, named after it, float[batch, size]. Batch and length axes are
dynamic.

`subspaces.whisper.encode_whisper` computes each clip's log-mel on its own and runs the
layers on packed valid frames, which a graph with a dynamic batch cannot do.
`BatchedWhisperSubspaces` computes the same numbers for the whole padded batch at once:

- log-mel: `WhisperLogMel.batch`, the code eager runs use (the STFT as a convolution
  with a windowed DFT basis, each clip reflected and floored on its own);
- convolutions: `whisper.convolutional_front_end`, the code eager runs use;
- layers: `whisper.encoder_states` with `packed=False`: the padded batch, an additive
  mask (0 for a clip's frames, -1e9 past its end) keeping every clip attending to its
  own frames only (eager runs pack the valid frames instead, which a traced graph with
  dynamic shapes cannot do);
- pooling: mean (and std) over each clip's valid frames, with `backbones.pool_frames`.

Head-only export: input `features` float[batch, layers, dim] (pooled as in training),
the same outputs. It works for every backbone.

>>> export_onnx("runs/demo/model", "model.onnx")  # doctest: +SKIP
PosixPath('model.onnx')
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import write_atomic
from .backbones import WhisperBackbone, pooled_input
from .errors import SubspacesError
from .inference import SubspaceEncoder, load_model
from .model import SubspaceModel
from .whisper import WhisperLogMel, convolutional_front_end, encoder_states

__all__ = ["BatchedWhisperSubspaces", "ExportError", "SubspaceHead", "check_onnx", "export_onnx", "onnx_metadata", "pad_batch"]

class ExportError(SubspacesError, ValueError):
    """A model that cannot be exported as asked; the message says why and what to do instead."""


class SubspaceHead(nn.Module):
    """The subspace model alone, with a tuple output in subspace order (ONNX needs one).

    features float[B, L, D] -> (float[B, size] per subspace).
    """

    def __init__(self, model: SubspaceModel):
        super().__init__()
        self.model = model.eval()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(features).values())


class BatchedWhisperSubspaces(nn.Module):
    """Waveforms to subspaces for a Whisper backbone, the whole padded batch at once.

    waveform: float[B, S] (zero past each clip's end), lengths: long[B] ->
    (float[B, size] per subspace, in `encoder.subspaces` order). Equal to
    `SubspaceEncoder.embed` up to float rounding.
    """

    def __init__(self, encoder: SubspaceEncoder):
        super().__init__()
        if not isinstance(encoder.backbone, WhisperBackbone):
            raise ExportError(
                f"the full waveform export handles Whisper backbones only, not {encoder.backbone.family} "
                f"({encoder.backbone.name}); export the subspace head with head_only=True and run the "
                "backbone yourself"
            )
        self.whisper = encoder.backbone.encoder
        self.head = encoder.model
        self.layers = list(encoder.layers)
        self.pooling = encoder.pooling
        self.log_mel: WhisperLogMel = encoder.backbone.log_mel

    def hidden_states(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float[B, S], long[B] -> (hidden states float[L, B, T, D] zero past each clip's
        end, frames long[B]), as `encode_whisper` gives for the clips one by one."""
        whisper = self.whisper
        mel, mel_frames = self.log_mel.batch(waveform, lengths)
        hidden, num_frames = convolutional_front_end(whisper, mel, mel_frames)
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < num_frames[:, None]
        return encoder_states(whisper, hidden, valid, packed=False), num_frames

    def pooled_features(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """float[B, S], long[B] -> the model's input float[B, L, D], pooled as in training."""
        states, num_frames = self.hidden_states(waveform, lengths)
        return pooled_input(states[self.layers], num_frames, self.pooling)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head(self.pooled_features(waveform, lengths)).values())


def pad_batch(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Clips of any lengths -> (waveform float32[B, max samples] zero-padded, lengths int64[B]),
    the full export's inputs.

    >>> wave, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)])
    >>> wave.shape, lengths.tolist()
    ((2, 5), [3, 5])
    """
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for row, wave in zip(batch, waves):
        row[: len(wave)] = wave
    return batch, lengths


def export_onnx(
    model_dir_or_encoder: str | Path | SubspaceEncoder, out_path: str | Path, *, head_only: bool = False,
    opset: int = 17, allow_unfinished: bool = False,
) -> Path:
    """Write the model as ONNX to `out_path` and return the path.

    Full (default): `waveform` float[batch, samples] + `lengths` int64[batch] in (16 kHz
    clips, zero-padded; see `pad_batch`); needs a Whisper backbone. `head_only=True`:
    `features` float[batch, layers, dim] in (pooled as `SubspaceEncoder.pooled_features`).
    Outputs: one float[batch, size] per subspace, named after it. Dynamic batch and length.
    A model folder whose training did not finish is refused unless `allow_unfinished`.

    >>> export_onnx("runs/demo/model", "speaker.onnx", head_only=True)  # doctest: +SKIP
    PosixPath('speaker.onnx')
    """
    encoder = model_dir_or_encoder
    if not isinstance(encoder, SubspaceEncoder):
        encoder = load_model(encoder, allow_unfinished=allow_unfinished, precision="float32")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    outputs = list(encoder.subspaces)
    dynamic = {name: {0: "batch"} for name in outputs}
    config = encoder.model.config
    if head_only:
        module: nn.Module = SubspaceHead(encoder.model.cpu())
        example = (torch.zeros(2, config.num_layers, config.input_dim),)
        inputs = ["features"]
        dynamic["features"] = {0: "batch"}
    else:
        module = BatchedWhisperSubspaces(encoder).cpu()
        rate = encoder.backbone.sample_rate
        example = (torch.randn(2, rate) * 0.1, torch.tensor([rate, rate // 2]))
        inputs = ["waveform", "lengths"]
        dynamic["waveform"] = {0: "batch", 1: "samples"}
        dynamic["lengths"] = {0: "batch"}
    module.eval()
    # The TorchScript exporter: it writes opset 17 and needs no extra package. torch
    # 2.13's dynamo exporter needs onnxscript and, asked for opset 17, wrote a Split node
    # that onnxruntime 1.32 rejects (the `num_outputs` attribute is opset 18).
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about SubspaceModel's input-shape check; it only reads the
        # fixed layer and width axes, so baking it in as a constant is right.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        def write(tmp: str) -> None:
            torch.onnx.export(module, example, tmp, input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
            _add_metadata(tmp, onnx_metadata(encoder, head_only))

        write_atomic(out_path, write)
    return out_path


def onnx_metadata(encoder: SubspaceEncoder, head_only: bool) -> dict[str, str]:
    """What an exported graph records about itself (ONNX `metadata_props`, all strings):
    the input it expects, its subspaces, the backbone, and the calibrated thresholds."""
    from .inference import read_thresholds

    model = encoder.model
    props = {
        "speech_subspaces.input": "features" if head_only else "waveform",
        "speech_subspaces.sample_rate": str(encoder.backbone.sample_rate),
        "speech_subspaces.subspaces": json.dumps(model.config.sizes),
        "speech_subspaces.pooling": model.config.pooling,
        "speech_subspaces.layers": json.dumps(encoder.layers),
        "speech_subspaces.backbone": str(model.metadata.get("backbone")),
        "speech_subspaces.backbone_revision": str(model.metadata.get("backbone_revision")),
        "speech_subspaces.scoring": "cosine",
    }
    thresholds = read_thresholds(encoder.folder)
    if thresholds:
        props["speech_subspaces.thresholds"] = json.dumps({name: record["threshold"] for name, record in thresholds.items()})
    return props


def _add_metadata(path: str, props: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:  # the graph is complete without them; `pip install onnx` to record them
        warnings.warn(f"{path}: onnx is not installed, so the export records no metadata (pip install onnx)")
        return
    graph = onnx.load(path)
    for key, value in props.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, path)


def check_onnx(
    model_dir_or_encoder: str | Path | SubspaceEncoder, onnx_path: str | Path, clips: Sequence[str | Path | np.ndarray],
    *, head_only: bool = False, allow_unfinished: bool = False,
) -> dict[str, float]:
    """Run an exported model with onnxruntime on `clips` (one batch of mixed lengths) and
    return, per subspace, the max abs difference from the PyTorch model's output.

    >>> check_onnx("runs/demo/model", "model.onnx", ["a.wav", "b.wav"])  # doctest: +SKIP
    {'speaker': 1.9e-07, 'content': 1.6e-07}
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ExportError("checking an export needs onnxruntime: pip install onnxruntime") from error
    encoder = model_dir_or_encoder
    if not isinstance(encoder, SubspaceEncoder):
        encoder = load_model(encoder, allow_unfinished=allow_unfinished, precision="float32")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = encoder.embed(list(clips))
    if head_only:
        feeds = {"features": encoder.pooled_features(list(clips)).numpy()}
    else:
        waveform, lengths = pad_batch([encoder.read(clip) for clip in clips])
        feeds = {"waveform": waveform, "lengths": lengths}
    names = [output.name for output in session.get_outputs()]
    got = dict(zip(names, session.run(names, feeds)))
    return {name: float(np.abs(got[name] - expected[name]).max()) for name in expected}
