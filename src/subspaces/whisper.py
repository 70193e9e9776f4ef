"""Whisper's encoder run on each clip's own length, and Whisper models stored by CTranslate2.

Stock `transformers.WhisperEncoder` insists on 30 s of (padded) log-mel input, so a 1 s
clip costs as much as a 30 s one and its features depend on 29 s of padding. Here the
encoder runs on the clip's own frames: the positional table is sliced to the frame
count, and clips of different lengths share a batch for every matrix product while the
convolutions and attention see only each clip's own frames, so a clip's features do not
depend on what it was batched with.

Hidden state 0 is the convolutional front end's output *without* the positional table
(transformers adds the table first). The table is the same for every clip, so pooled
over time it encodes nothing but the clip's length, and on short clips it dominates the
pooled vector, because the table's mean tracks the word's duration (the speaker EER
with and without it is measured in benchmarks/RESULTS.md). The table is still added
before the first layer, so layers 1.. are transformers' own.

CTranslate2 model folders (`model.bin` + `config.json`, the faster-whisper format) are
read straight from their binary layout and converted once into a transformers
`WhisperEncoder` (config.json + model.safetensors); nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .errors import SubspacesError

__all__ = [
    "WhisperFileError",
    "WhisperLogMel",
    "convert_ctranslate2_whisper",
    "encode_whisper",
    "load_converted_whisper",
    "read_ctranslate2_model",
]


class WhisperFileError(SubspacesError, ValueError):
    """A Whisper model file that cannot be read (truncated, not Whisper, an unknown format); the message names it."""


# Whisper's front end (openai/whisper audio.py): 16 kHz, 25 ms Hann window, 10 ms hop,
# log10 mel clamped to 8 decades below the clip's peak, then scaled as (x + 4) / 4.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
# Two convolutions, the second with stride 2: 100 mel frames per second become 50.
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH / 2


class WhisperLogMel(torch.nn.Module):
    """Whisper's log-mel spectrogram of one clip, computed on the clip alone (no 30 s pad).

    Matches `transformers.WhisperFeatureExtractor` with `padding="longest"` on a single
    clip. Output shape: [n_mels, n_samples // 160]. `batch` computes the same for a padded
    batch of clips at once (eager extraction and the ONNX export use it).

    >>> WhisperLogMel(80)(torch.zeros(16000)).shape
    torch.Size([80, 100])
    """

    def __init__(self, n_mels: int = 80):
        super().__init__()
        filters = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
            max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
        )
        self.register_buffer("filters", torch.from_numpy(filters.T.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        # Real and imaginary DFT rows of the Hann-windowed frame, bins 0..N_FFT/2, in
        # float64 before rounding once: conv1d(wave, basis, stride=HOP) is the STFT, as one
        # operation for a whole batch (and one a traced ONNX graph can hold).
        n = torch.arange(N_FFT, dtype=torch.float64)
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * n / N_FFT
        window = torch.hann_window(N_FFT, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
        self.register_buffer("dft_basis", basis[:, None, :].float(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=self.window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def batch(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float[B, S] (each row zero past its clip's `lengths` long[B] samples) -> (log-mel
        float[B, n_mels, S // 160] zero past each clip's frames, mel frames long[B]), each
        clip as `forward` computes it alone: the reflection padding at a clip's end is a
        gather that reflects about that clip's own last sample, and the 8-decade floor uses
        the clip's own peak over its own frames. Always float32 (autocast is off here)."""
        with torch.autocast(waveform.device.type, enabled=False):
            waveform = waveform.float()
            half = N_FFT // 2
            samples = waveform.shape[1]
            # torch.stft(center=True) reflects each clip about its own first and last sample.
            position = torch.arange(samples + 2 * half, device=waveform.device)[None, :] - half
            last = (lengths - 1)[:, None]
            source = torch.where(position < 0, -position, position)
            source = torch.where(source > last, 2 * last - source, source)
            inside = (position < lengths[:, None] + half) & (source >= 0)
            source = source.clamp(min=0, max=samples - 1)
            padded = torch.gather(waveform, 1, source) * inside.to(waveform.dtype)
            spectrum = torch.nn.functional.conv1d(padded[:, None, :], self.dft_basis, stride=HOP_LENGTH)
            real, imag = spectrum.split(N_FFT // 2 + 1, dim=1)
            power = (real.square() + imag.square())[:, :, :-1]
            log_spec = torch.clamp(torch.matmul(self.filters, power), min=1e-10).log10()
            mel_frames = torch.div(lengths, HOP_LENGTH, rounding_mode="floor")
            valid = torch.arange(log_spec.shape[2], device=waveform.device)[None, :] < mel_frames[:, None]
            peak = log_spec.masked_fill(~valid[:, None, :], -1e10).amax(dim=(1, 2), keepdim=True)
            log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
            return log_spec * valid[:, None, :].to(log_spec.dtype), mel_frames


def encoder_layer(layer, hidden: torch.Tensor, attend) -> torch.Tensor:
    """One pre-norm Whisper encoder layer: hidden float[..., D] -> float[..., D].

    The projections and the MLP run row by row on whatever layout `hidden` has (a
    padded batch [B, T, D], or the valid frames of several clips packed as [N, D]);
    `attend(query, key, value, heads)` (each float[..., D], the query already scaled)
    returns the attention context float[..., D] and decides how clips are kept apart:
    `packed_attention` (eager runs) or `masked_attention` (a padded batch, for traced
    exports).
    """
    attn = layer.self_attn
    x = layer.self_attn_layer_norm(hidden)
    context = attend(attn.q_proj(x) * attn.scaling, attn.k_proj(x), attn.v_proj(x), attn.num_heads)
    hidden = hidden + attn.out_proj(context)
    x = layer.final_layer_norm(hidden)
    return hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """float[B, T, D] -> float[B, heads, T, D / heads]."""
    batch, frames, width = x.shape
    return x.reshape(batch, frames, heads, width // heads).transpose(1, 2)


# Added to attention logits of padded keys: exp(-1e9 - max) is exactly 0 in float32,
# and unlike -inf it cannot make a NaN.
MASKED = -1e9


def masked_attention(key_mask: torch.Tensor):
    """Attention over a padded batch float[B, T, D] at once, `key_mask` float[B, 1, 1, T]
    (0 for a valid frame, a large negative number for padding) added to the logits."""

    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
        batch, frames, width = query.shape
        query, key, value = (_split_heads(x, heads) for x in (query, key, value))
        weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) + key_mask, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2).reshape(batch, frames, width)

    return attend


def packed_attention(valid: torch.Tensor):
    """Attention for clips packed as rows float[N, D], N = valid.sum(): `valid` bool[B, T]
    says where each clip's frames sit in a padded batch. Each clip attends to its own
    frames only (the padding is masked out of the keys), so a clip gets the same numbers
    batched as alone."""
    key_valid = valid[:, None, None, :]

    def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
        def pad(x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros(*valid.shape, x.shape[-1])
            out[valid] = x
            return _split_heads(out, heads)

        context = torch.nn.functional.scaled_dot_product_attention(
            pad(query), pad(key), pad(value), attn_mask=key_valid, scale=1.0)
        return context.transpose(1, 2).reshape(*valid.shape, -1)[valid]

    return attend


def encoder_states(encoder: WhisperEncoder, embedding: torch.Tensor, valid: torch.Tensor, *, packed: bool = True
                   ) -> torch.Tensor:
    """Every hidden state from the convolutional embedding float[B, T, D] (zero past each
    clip's end): float[L + 1, B, T, D], the embedding before the positional table is
    added, then each layer's output, the last after the final layer norm (transformers'
    order), zero where `valid` bool[B, T] is false.

    `packed`: the layers run on the valid frames only, packed as rows (no time goes into
    padding; eager runs); otherwise on the padded batch with masked attention (a traced
    export cannot pack).
    """
    positions = encoder.embed_positions.weight[: embedding.shape[1]]
    if packed:
        first = embedding[valid]
        hidden = first + positions.expand(len(embedding), -1, -1)[valid]
        attend = packed_attention(valid)
    else:
        first = embedding
        hidden = embedding + positions
        attend = masked_attention(torch.where(valid, 0.0, MASKED).to(hidden.dtype)[:, None, None, :])
    states = [first]  # without the positional table (see the module docstring)
    for layer in encoder.layers:
        hidden = encoder_layer(layer, hidden, attend)
        states.append(hidden)
    states[-1] = encoder.layer_norm(hidden)
    if not packed:
        return torch.stack(states) * valid[None, :, :, None].to(hidden.dtype)
    out = hidden.new_zeros(len(states), *valid.shape, hidden.shape[-1])
    out[:, valid] = torch.stack(states)
    return out


def convolutional_front_end(encoder: WhisperEncoder, mel: torch.Tensor, mel_frames: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's two convolutions over a batch of log-mel spectrograms float[B, n_mels, F]
    (zero past each clip's `mel_frames` long[B]): (float[B, T, D] zero past each clip's
    end, frames long[B]), as each clip alone gives. The first convolution's frames past a
    clip's end are set to zero before the second, which is what a lone clip's zero
    padding gives."""
    hidden = torch.nn.functional.gelu(encoder.conv1(mel))
    mel_valid = torch.arange(hidden.shape[2], device=hidden.device)[None, :] < mel_frames[:, None]
    hidden = hidden * mel_valid[:, None, :].to(hidden.dtype)
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).transpose(1, 2)
    num_frames = torch.div(mel_frames + 1, 2, rounding_mode="floor")
    valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < num_frames[:, None]
    return hidden * valid[:, :, None].to(hidden.dtype), num_frames


def encode_whisper(
    encoder: WhisperEncoder, log_mel: WhisperLogMel, waves: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every hidden state of `encoder` for a batch of 16 kHz clips of any lengths <= 30 s.

    Returns `hidden_states: float[L + 1, B, T, D]` (as `encoder_states` orders them;
    frames past a clip's end are zero) and `num_frames: long[B]`. The whole batch runs at
    once (one padded copy to the device, a batched log-mel and convolutions, the layers
    on the clips' valid frames only), with the numbers each clip gets alone.
    """
    device = encoder.conv1.weight.device
    lengths = torch.tensor([len(w) for w in waves])
    max_positions = encoder.embed_positions.weight.shape[0]
    longest = (int(lengths.max()) // HOP_LENGTH + 1) // 2  # frames after the stride-2 convolution
    if longest > max_positions:
        raise WhisperFileError(
            f"a clip of {float(lengths.max()) / SAMPLE_RATE:.1f} s is longer than Whisper's "
            f"{max_positions / FRAME_RATE:.0f} s window; cut it into shorter utterances"
        )
    waveform = torch.nn.utils.rnn.pad_sequence([w.float().cpu() for w in waves], batch_first=True).to(device)
    mel, mel_frames = log_mel.batch(waveform, lengths.to(device))
    hidden, num_frames = convolutional_front_end(encoder, mel, mel_frames)
    valid = torch.arange(hidden.shape[1], device=device)[None, :] < num_frames[:, None]
    return encoder_states(encoder, hidden, valid), num_frames.cpu()


# ----------------------------------------------------------------------------------
# CTranslate2 model files
# ----------------------------------------------------------------------------------

# DataType enum order of CTranslate2 (include/ctranslate2/types.h).
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16


class _Reader:
    def __init__(self, data: memoryview, source: str):
        self.data, self.offset, self.source = data, 0, source

    def take(self, fmt: str):
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.offset)
        except struct.error as error:
            raise WhisperFileError(f"{self.source}: truncated CTranslate2 model file ({error})") from error
        self.offset += struct.calcsize("<" + fmt)
        return values[0]

    def string(self) -> str:
        length = self.take("H")
        text = bytes(self.data[self.offset : self.offset + length - 1]).decode("utf-8")
        self.offset += length
        return text


def read_ctranslate2_model(parts: Sequence[Path], prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 `model.bin` (given as one file or split parts, in order).

    Returns the spec name (e.g. "WhisperSpec") and the variables whose names start with
    `prefix`, as numpy arrays (bfloat16 is widened to float32; aliases are resolved).

    >>> read_ctranslate2_model([Path("missing.bin")])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: missing.bin
    """
    source = " + ".join(str(p) for p in parts)
    blob = b"".join(Path(p).read_bytes() for p in parts)
    reader = _Reader(memoryview(blob), source)
    version = reader.take("I")
    if version < 4:
        raise WhisperFileError(f"{source}: CTranslate2 binary version {version} is too old (need >= 4)")
    spec = reader.string()
    reader.take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.take("I")):
        name = reader.string()
        shape = [reader.take("I") for _ in range(reader.take("B"))]
        type_id, num_bytes = reader.take("B"), reader.take("I")
        start = reader.offset
        reader.offset += num_bytes
        if reader.offset > len(blob):
            raise WhisperFileError(f"{source}: truncated CTranslate2 model file (variable {name})")
        if not name.startswith(prefix):
            continue
        if type_id >= len(_CT2_DTYPES):
            raise WhisperFileError(f"{source}: variable {name} has unknown CTranslate2 type id {type_id}")
        raw = blob[start : start + num_bytes]
        if _CT2_DTYPES[type_id] is None:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=_CT2_DTYPES[type_id])
        variables[name] = array.reshape(shape)
    for _ in range(reader.take("I")):
        alias, target = reader.string(), reader.string()
        if alias.startswith(prefix) and target in variables:
            variables[alias] = variables[target]
    return spec, variables


def _ct2_to_transformers(variables: dict[str, np.ndarray], source: str) -> tuple[WhisperConfig, dict]:
    """Map CTranslate2 Whisper encoder variables onto transformers' WhisperEncoder names."""
    if any(name.endswith("weight_scale") for name in variables):
        raise WhisperFileError(
            f"{source}: this CTranslate2 model is int8-quantised; convert it again with "
            "`--quantization float16` or `float32` to use it as a frozen backbone"
        )

    def get(name: str) -> torch.Tensor:
        try:
            return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))
        except KeyError:
            raise WhisperFileError(f"{source}: not a Whisper encoder (no variable encoder/{name})") from None

    width, n_mels, _ = variables["encoder/conv1/weight"].shape
    n_layers = len({k.split("/")[1] for k in variables if re.match(r"encoder/layer_\d+/", k)})
    config = WhisperConfig(
        d_model=int(width), num_mel_bins=int(n_mels), encoder_layers=n_layers,
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        decoder_layers=1, decoder_attention_heads=int(variables["encoder/num_heads"]),
    )
    state = {
        "conv1.weight": get("conv1/weight"), "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"), "conv2.bias": get("conv2/bias"),
        "embed_positions.weight": get("position_encodings/encodings"),
        "layer_norm.weight": get("layer_norm/gamma"), "layer_norm.bias": get("layer_norm/beta"),
    }
    for i in range(n_layers):
        ours, theirs = f"layers.{i}.", f"layer_{i}/"
        qkv_w, qkv_b = get(theirs + "self_attention/linear_0/weight"), get(theirs + "self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.chunk(3)
        q_b, k_b, v_b = qkv_b.chunk(3)
        # Whisper's key projection has no bias; CTranslate2 fuses Q, K, V and stores zeros
        # there. A non-zero key bias would mean a different architecture.
        if float(k_b.abs().max()) > 0:
            raise WhisperFileError(f"{source}: layer {i} has a key bias, which Whisper does not")
        state.update({
            ours + "self_attn.q_proj.weight": q_w, ours + "self_attn.q_proj.bias": q_b,
            ours + "self_attn.k_proj.weight": k_w,
            ours + "self_attn.v_proj.weight": v_w, ours + "self_attn.v_proj.bias": v_b,
            ours + "self_attn.out_proj.weight": get(theirs + "self_attention/linear_1/weight"),
            ours + "self_attn.out_proj.bias": get(theirs + "self_attention/linear_1/bias"),
            ours + "self_attn_layer_norm.weight": get(theirs + "self_attention/layer_norm/gamma"),
            ours + "self_attn_layer_norm.bias": get(theirs + "self_attention/layer_norm/beta"),
            ours + "fc1.weight": get(theirs + "ffn/linear_0/weight"), ours + "fc1.bias": get(theirs + "ffn/linear_0/bias"),
            ours + "fc2.weight": get(theirs + "ffn/linear_1/weight"), ours + "fc2.bias": get(theirs + "ffn/linear_1/bias"),
            ours + "final_layer_norm.weight": get(theirs + "ffn/layer_norm/gamma"),
            ours + "final_layer_norm.bias": get(theirs + "ffn/layer_norm/beta"),
        })
    return config, {k: v.contiguous() for k, v in state.items()}


def file_digest(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes in order (a split model hashes like the joined file)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def convert_ctranslate2_whisper(parts: Sequence[Path], out_dir: Path, *, digest: str | None = None) -> Path:
    """Convert a CTranslate2 Whisper model (its `model.bin`, or the parts of a split one)
    into `out_dir` = config.json + model.safetensors (float32 encoder) + source.json.

    Written to a temporary folder and renamed into place, so an interrupted conversion
    leaves nothing half-written. Returns `out_dir`.
    """
    parts = [Path(p) for p in parts]
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"{part}: CTranslate2 model file not found")
    source = " + ".join(str(p) for p in parts)
    spec, variables = read_ctranslate2_model(parts, prefix="encoder/")
    if spec != "WhisperSpec":
        raise WhisperFileError(f"{source}: a CTranslate2 {spec}, not a Whisper model")
    config, state = _ct2_to_transformers(variables, source)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=out_dir.parent))
    try:
        config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "source.json").write_text(json.dumps(
            {"format": "ctranslate2", "files": [str(p) for p in parts],
             "sha256": digest or file_digest(parts)}, indent=2) + "\n")
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "model.safetensors").is_file():
                raise
            # Another process finished the same conversion first; keep theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_converted_whisper(folder: Path) -> WhisperEncoder:
    """Load the encoder that `convert_ctranslate2_whisper` wrote into `folder`."""
    config = WhisperConfig.from_pretrained(folder)
    encoder = WhisperEncoder(config)
    encoder.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
    return encoder.eval()
