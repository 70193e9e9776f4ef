"""ONNX export: the batched Whisper formulation and onnxruntime against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_inference import fsdd_paths, make_model

from subspaces.export import BatchedWhisperSubspaces, export_onnx, pad_batch
from subspaces.inference import load_model


@pytest.fixture
def encoder(tmp_path, tiny_whisper):
    return load_model(make_model(tmp_path / "model", tiny_whisper, pooling="mean+std"), backbone=tiny_whisper)


def test_batched_whisper_equals_clip_by_clip_encoding(encoder):
    paths = fsdd_paths()
    waves = [encoder.read(p) for p in paths]
    assert len({len(w) for w in waves}) == len(waves)
    wave, lengths = pad_batch(waves)
    module = BatchedWhisperSubspaces(encoder).eval()
    with torch.no_grad():
        states, frames = module.hidden_states(torch.from_numpy(wave), torch.from_numpy(lengths))
        batched = module.pooled_features(torch.from_numpy(wave), torch.from_numpy(lengths))
    reference = encoder.backbone.encode(waves)
    assert frames.tolist() == reference.num_frames.tolist()
    torch.testing.assert_close(states, reference.hidden_states, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched, encoder.pooled_features(paths), atol=1e-4, rtol=1e-4)


def test_onnx_matches_pytorch_with_a_dynamic_batch(encoder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(encoder, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform", "lengths"]
    assert [o.name for o in session.get_outputs()] == ["speaker", "content"]
    paths = fsdd_paths()
    # Batch sizes and padded lengths unlike the export's example (2 clips of 1 s).
    for chosen in (paths[:5], paths[5:]):
        expected = encoder.embed(chosen)
        wave, lengths = pad_batch([encoder.read(p) for p in chosen])
        outputs = dict(zip(["speaker", "content"], session.run(None, {"waveform": wave, "lengths": lengths})))
        for name, vectors in outputs.items():
            assert vectors.shape == expected[name].shape
            np.testing.assert_allclose(vectors, expected[name], atol=1e-4, rtol=0)


def test_head_only_onnx_matches_pytorch(encoder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(encoder, tmp_path / "head.onnx", head_only=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    features = encoder.pooled_features(fsdd_paths()[:3])
    expected = encoder.embed(fsdd_paths()[:3])
    outputs = session.run(["content", "speaker"], {"features": features.numpy()})
    np.testing.assert_allclose(outputs[0], expected["content"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(outputs[1], expected["speaker"], atol=1e-5, rtol=0)


def test_the_export_records_what_it_expects_and_its_thresholds(encoder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from subspaces.inference import calibrate_threshold

    scores = np.r_[np.full(50, 0.9), np.full(500, 0.1)]
    calibrate_threshold(encoder.folder, scores, np.r_[np.ones(50), np.zeros(500)].astype(int))
    path = export_onnx(encoder, tmp_path / "head.onnx", head_only=True)
    props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert props["speech_subspaces.input"] == "features"
    assert props["speech_subspaces.sample_rate"] == "16000"
    assert json.loads(props["speech_subspaces.subspaces"]) == encoder.subspaces
    assert props["speech_subspaces.pooling"] == "mean+std"
    assert props["speech_subspaces.backbone_revision"] == encoder.model.metadata["backbone_revision"]
    threshold = json.loads(props["speech_subspaces.thresholds"])["speaker"]
    assert 0.1 < threshold <= 0.9
