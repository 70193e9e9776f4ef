"""Loading a trained model with its backbone, embedding audio, and verification thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import FSDD, tiny_whisper_encoder

from subspaces.backbones import WhisperBackbone, load_backbone
from subspaces.features import extract_features, load_features
from subspaces.inference import (
    THRESHOLDS_FILE,
    InferenceError,
    SubspaceEncoder,
    calibrate_threshold,
    load_model,
)
from subspaces.model import SubspaceConfig, SubspaceModel
from subspaces.pipeline import embed_features

# Two FSDD speakers, clips of different lengths (0.2-0.8 s at 8 kHz).
CLIPS = ["0_george_0.wav", "1_george_3.wav", "5_george_7.wav", "0_jackson_0.wav", "3_jackson_4.wav",
         "9_jackson_9.wav", "2_theo_1.wav", "7_theo_5.wav"]


def fsdd_paths() -> list[Path]:
    return [FSDD / name for name in CLIPS]


def make_model(folder: Path, backbone: WhisperBackbone, pooling: str = "mean", seed: int = 0) -> Path:
    """A tiny untrained subspace model over every layer of `backbone`, its input
    normalisation fitted on FSDD clips, saved with the backbone's name and revision."""
    torch.manual_seed(seed)
    width = backbone.width * (2 if pooling == "mean+std" else 1)
    config = SubspaceConfig(input_dim=width, num_layers=backbone.num_layers, layer="mix", pooling=pooling,
                            hidden=(16,), subspaces=(("speaker", 4), ("content", 6)))
    model = SubspaceModel(config)
    features = SubspaceEncoder(model, backbone, folder).pooled_features(fsdd_paths())
    model.fit_normalization(features)
    return model.save(folder, metadata={"backbone": backbone.name, "backbone_revision": backbone.revision})


def fsdd_manifest(tmp_path: Path) -> pd.DataFrame:
    from subspaces.audio import load_audio

    rows = []
    for path in fsdd_paths():
        digit, speaker, _index = path.stem.split("_")
        rows.append({"utt_id": path.stem, "path": str(path), "speaker": speaker, "content": digit, "text": digit,
                     "duration_s": len(load_audio(path, 8000)) / 8000, "sample_rate": 8000, "split": "test",
                     "source": "fsdd"})
    table = pd.DataFrame(rows)
    table.attrs["root"] = str(tmp_path)
    return table


def repeated(scores: list[float], labels: list[int], copies: int) -> tuple[np.ndarray, np.ndarray]:
    """`copies` copies of a few trials: the same error rates at every threshold, and enough
    trials of each kind for `calibrate_threshold`."""
    return np.tile(scores, copies), np.tile(labels, copies)


@pytest.mark.parametrize("pooling", ["mean", "mean+std"])
def test_embed_equals_the_stored_feature_path(tmp_path, tiny_whisper, pooling):
    folder = make_model(tmp_path / "model", tiny_whisper, pooling)
    encoder = load_model(folder, backbone=tiny_whisper)
    table = fsdd_manifest(tmp_path)
    extract_features(table, tiny_whisper, tmp_path / "features", pooling=("mean", "std"), progress=False,
                     workers=0)
    stored = embed_features(encoder.model, load_features(tmp_path / "features", table, pooling=pooling))
    ours = encoder.embed(fsdd_paths(), batch_size=3)
    assert list(ours) == ["speaker", "content"]
    for name in ours:
        assert ours[name].shape == (len(CLIPS), encoder.subspaces[name])
        np.testing.assert_allclose(ours[name], stored[name], atol=1e-5, rtol=0)


def test_embed_takes_arrays_and_keeps_the_order_given(tmp_path, tiny_whisper):
    encoder = load_model(make_model(tmp_path / "model", tiny_whisper), backbone=tiny_whisper)
    paths = fsdd_paths()[::-1]
    waves = [encoder.read(p) for p in paths]
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in waves)
    from_paths = encoder.embed(paths, batch_size=2)
    from_arrays = encoder.embed(waves, batch_size=16)
    one = encoder.embed(waves[3])
    np.testing.assert_allclose(from_arrays["speaker"], from_paths["speaker"], atol=1e-6)
    np.testing.assert_allclose(one["content"][0], from_paths["content"][3], atol=1e-6)
    with pytest.raises(InferenceError, match="mono 1-D"):
        encoder.embed([np.zeros((2, 8000), np.float32)])
    with pytest.raises(InferenceError, match="empty"):
        encoder.embed([])


def test_verify_refuses_without_a_threshold_and_uses_the_calibrated_one(tmp_path, tiny_whisper):
    folder = make_model(tmp_path / "model", tiny_whisper)
    encoder = load_model(folder, backbone=tiny_whisper)
    a, b = fsdd_paths()[0], fsdd_paths()[3]
    with pytest.raises(InferenceError, match="calibrate_threshold"):
        encoder.verify(a, b)

    vectors = encoder.embed([a, b])["speaker"].astype(np.float64)
    expected = vectors[0] @ vectors[1] / np.linalg.norm(vectors[0]) / np.linalg.norm(vectors[1])
    # Copies of a toy set of trials, enough of them (250 target, 500 non-target) to calibrate on.
    record = calibrate_threshold(folder, *repeated([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0], 125),
                                 data="toy trials")
    assert record["threshold"] == pytest.approx(0.55)
    assert (record["p_miss"], record["p_fa"]) == (0.5, 0.25)  # 0.5 missed; 0.6 accepted
    stored = json.loads((folder / THRESHOLDS_FILE).read_text())
    assert stored["speaker"]["operating_point"] == "eer" and stored["speaker"]["data"] == "toy trials"
    assert (stored["speaker"]["num_target_trials"], stored["speaker"]["num_nontarget_trials"]) == (250, 500)

    score, same = encoder.verify(a, b)
    assert score == pytest.approx(expected, abs=1e-6)
    assert same == (score >= 0.55)
    assert encoder.verify(a, a)[0] == pytest.approx(1.0, abs=1e-6)
    # A threshold above every score rejects the pair; the content subspace still has none.
    calibrate_threshold(folder, *repeated([1.5, 1.4, -1.0], [1, 1, 0], 500), operating_point="min_dcf")
    assert encoder.verify(a, a) == (pytest.approx(1.0, abs=1e-6), False)
    with pytest.raises(InferenceError, match="'content'"):
        encoder.verify(a, b, subspace="content")
    with pytest.raises(InferenceError, match="no subspace 'pitch'"):
        encoder.verify(a, b, subspace="pitch")
    with pytest.raises(InferenceError, match="operating_point must be one of eer, min_dcf"):
        calibrate_threshold(folder, [0.1, 0.2], [0, 1], operating_point="best")


def test_min_dcf_threshold_is_the_cheapest_operating_point(tmp_path):
    scores, labels = repeated([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0], 125)
    # With p_target 0.01 a false alarm costs 99x a miss: accept only above every non-target.
    record = calibrate_threshold(tmp_path, scores, labels, operating_point="min_dcf")
    assert record["threshold"] == pytest.approx(0.7)
    assert (record["p_miss"], record["p_fa"]) == (0.25, 0.0)


def test_backbone_of_other_weights_is_refused(tmp_path, tiny_whisper):
    folder = make_model(tmp_path / "model", tiny_whisper)
    other = WhisperBackbone(tiny_whisper_encoder(seed=1), name="tiny-whisper", revision="random-seed-1")
    with pytest.raises(InferenceError, match="revision random-seed-0.*revision random-seed-1"):
        load_model(folder, backbone=other)


def test_model_trained_on_the_old_whisper_readout_is_refused(tmp_path, tiny_whisper):
    # Before feature format 2, Whisper's layer 0 carried the positional table and the
    # revision had no read-out tag: such a model must not be fed today's features.
    folder = make_model(tmp_path / "model", tiny_whisper)
    config = json.loads((folder / "config.json").read_text())
    config["metadata"]["backbone_revision"] = "random-seed-0"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InferenceError, match="earlier version of this package.*retrain"):
        load_model(folder, backbone=tiny_whisper)


def test_missing_folder_and_files_are_named(tmp_path, tiny_whisper):
    with pytest.raises(InferenceError, match=f"{tmp_path / 'nowhere'}: no such model folder"):
        load_model(tmp_path / "nowhere")
    folder = make_model(tmp_path / "model", tiny_whisper)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InferenceError, match="model.safetensors is missing"):
        load_model(folder, backbone=tiny_whisper)
    bare = make_model(tmp_path / "bare", tiny_whisper)
    config = json.loads((bare / "config.json").read_text())
    config["metadata"] = {}
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(InferenceError, match="does not name its backbone"):
        load_model(bare)


def test_backbone_named_by_a_local_folder_is_loaded_offline(tmp_path, monkeypatch):
    import transformers as tf

    torch.manual_seed(0)
    whisper = tf.WhisperModel(tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64))
    whisper.save_pretrained(tmp_path / "whisper")
    backbone = load_backbone(tmp_path / "whisper")
    folder = make_model(tmp_path / "model", backbone)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = load_model(folder)
    assert encoder.backbone.revision == backbone.revision
    np.testing.assert_allclose(encoder.embed(fsdd_paths()[:2])["speaker"],
                               load_model(folder, backbone=backbone).embed(fsdd_paths()[:2])["speaker"], atol=1e-6)
    # Other weights in the same folder: the recorded revision no longer matches.
    torch.manual_seed(1)
    tf.WhisperModel(whisper.config).save_pretrained(tmp_path / "whisper")
    with pytest.raises(InferenceError, match="trained on .* revision"):
        load_model(folder)


def test_calibration_refuses_too_few_trials_and_verify_distrusts_them(tmp_path, tiny_whisper):
    folder = make_model(tmp_path / "model", tiny_whisper)
    scores, labels = repeated([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0], 124)  # 248 and 496
    with pytest.raises(InferenceError, match="248 target and 496 non-target trials; .* at least 50 target and 500"):
        calibrate_threshold(folder, scores, labels)
    assert not (folder / THRESHOLDS_FILE).exists()
    with pytest.raises(InferenceError, match="one 0 .* or 1 .* per score"):
        calibrate_threshold(folder, scores, labels[:-1])

    encoder = load_model(folder, backbone=tiny_whisper)
    a, b = fsdd_paths()[0], fsdd_paths()[3]
    record = {"threshold": 0.2, "operating_point": "eer", "data": "5 utterances, 10 trials",
              "num_target_trials": 1, "num_nontarget_trials": 9}
    (folder / THRESHOLDS_FILE).write_text(json.dumps({"speaker": record}))
    with pytest.raises(InferenceError, match=r"thresholds.json \(the 'speaker' threshold\): 1 target and 9 non-target"):
        encoder.verify(a, b)
    # An older record that does not say how many trials it came from: used, with a warning.
    del record["num_target_trials"], record["num_nontarget_trials"]
    (folder / THRESHOLDS_FILE).write_text(json.dumps({"speaker": record}))
    with pytest.warns(UserWarning, match="thresholds.json: the 'speaker' threshold does not record how many trials"):
        score, same = encoder.verify(a, b)
    assert same == (score >= 0.2)
    (folder / THRESHOLDS_FILE).write_text(json.dumps({"speaker": {"threshold": "high"}}))
    with pytest.raises(InferenceError, match="thresholds.json: expected"):
        encoder.verify(a, b)


def test_an_unfinished_model_is_refused_unless_allowed(tmp_path, tiny_whisper):
    from subspaces.folders import mark_finished, mark_unfinished

    folder = make_model(tmp_path / "model", tiny_whisper)
    mark_unfinished(folder, "step 100 of 300")
    with pytest.raises(InferenceError, match=f"{folder}: an unfinished model .*step 100 of 300.*allow_unfinished=True"):
        load_model(folder, backbone=tiny_whisper)
    assert load_model(folder, backbone=tiny_whisper, allow_unfinished=True).subspaces == {"speaker": 4, "content": 6}
    mark_finished(folder)
    assert load_model(folder, backbone=tiny_whisper).subspaces == {"speaker": 4, "content": 6}


def test_cli_verify_warns_in_one_line_on_a_threshold_of_unknown_trials(tmp_path, capsys):
    import transformers as tf

    from subspaces.cli import main

    torch.manual_seed(0)
    whisper = tf.WhisperModel(tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64))
    whisper.save_pretrained(tmp_path / "whisper")
    folder = make_model(tmp_path / "model", load_backbone(tmp_path / "whisper"))
    (folder / THRESHOLDS_FILE).write_text(json.dumps({"speaker": {"threshold": 0.5, "operating_point": "eer",
                                                                  "data": "an older record"}}))
    a, b = fsdd_paths()[0], fsdd_paths()[3]
    capsys.readouterr()
    assert main(["verify", str(folder), str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {folder / THRESHOLDS_FILE}: ")
    assert "score" in out
    from subspaces.folders import mark_unfinished

    mark_unfinished(folder, "training, step 1 of 2")
    assert main(["verify", str(folder), str(a), str(b)]) == 1
    assert "an unfinished model" in capsys.readouterr().err
    assert main(["verify", str(folder), str(a), str(b), "--allow-unfinished"]) == 0


def test_arrays_at_another_rate_are_resampled_and_long_clips_pooled_over_windows(tmp_path, tiny_whisper):
    from subspaces.audio import load_audio, resample

    encoder = load_model(make_model(tmp_path / "model", tiny_whisper), backbone=tiny_whisper)
    path = fsdd_paths()[0]
    native = load_audio(path, 8000)  # FSDD is recorded at 8 kHz
    from_array = encoder.embed(native, sample_rate=8000)["speaker"]
    np.testing.assert_allclose(from_array, encoder.embed(path)["speaker"], atol=1e-5)
    np.testing.assert_allclose(from_array, encoder.embed(resample(native, 8000, 16000))["speaker"], atol=1e-6)
    # 70 s: past Whisper's 30 s window, so three windows of 23.3 s, pooled as one clip.
    rng = np.random.default_rng(0)
    long = (0.1 * rng.standard_normal(70 * 16000)).astype(np.float32)
    windows = encoder._windows(long)
    assert [len(w) for w in windows] == [373334, 373333, 373333]
    output = tiny_whisper.encode(windows)
    frames = torch.cat([output.hidden_states[:, i, : int(n)] for i, n in enumerate(output.num_frames)], dim=1)
    expected = frames.mean(dim=1)  # every window's frames, pooled together
    torch.testing.assert_close(encoder.pooled_features(long)[0], expected, atol=1e-5, rtol=1e-5)
    long_file = tmp_path / "long.wav"
    sf.write(long_file, long, 16000)
    np.testing.assert_allclose(encoder.embed(long_file)["speaker"], encoder.embed(long)["speaker"], atol=1e-5)


def test_a_model_on_the_hub_loads_from_the_local_cache_and_is_never_fetched_unasked(tmp_path, tiny_whisper,
                                                                                      monkeypatch):
    import huggingface_hub.constants

    from subspaces.inference import InferenceError, model_folder

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-subspaces" / "snapshots" / ("a" * 40)
    make_model(snapshot, tiny_whisper)
    (cache / "models--someone--tiny-subspaces" / "refs").mkdir()
    (cache / "models--someone--tiny-subspaces" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a fetch would fail loudly, not hang
    assert model_folder("someone/tiny-subspaces") == snapshot
    encoder = load_model("someone/tiny-subspaces", backbone=tiny_whisper)
    assert encoder.folder == snapshot and set(encoder.subspaces) == {"speaker", "content"}
    with pytest.raises(InferenceError, match="not in the local Hugging Face cache|allow_download"):
        model_folder("someone/not-cached")


def test_verify_without_a_threshold_fails_before_loading_the_backbone(tmp_path, tiny_whisper, monkeypatch, capsys):
    from subspaces import inference
    from subspaces.cli import main

    folder = make_model(tmp_path / "model", tiny_whisper)
    loads = []
    monkeypatch.setattr(inference, "load_backbone", lambda *a, **k: loads.append(a) or tiny_whisper)
    path = str(fsdd_paths()[0])
    assert main(["verify", str(folder), path, path]) == 1
    err = capsys.readouterr().err
    assert "no decision threshold calibrated for the 'speaker' subspace" in err and "--corpus dev" in err
    assert loads == []  # refused from thresholds.json alone, before seconds of backbone loading
