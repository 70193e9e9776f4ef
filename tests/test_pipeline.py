"""End to end through the command line, on real small weights (whisper-tiny.en) and real
engines: synth -> extract -> train -> evaluate on the bundled FSDD, then a rerun that
reuses every finished stage."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from conftest import FSDD
from subspaces.cli import main

pytestmark = pytest.mark.slow

RECIPE = """
steps = 20
val_every = 10
checkpoint_every = 10
hidden = [64]
layer = "mix"
[subspaces]
speaker = 16
content = 16
[block]
speaker = 4
content = 6
"""


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_cli_pipeline_end_to_end(tmp_path, capsys):
    grid, feats, model, report = (tmp_path / name for name in ("grid", "features", "model", "report"))
    assert main(["synth", str(grid), "--espeak", "3", "--flite", "3", "--texts", "keywords", "--num-texts", "8",
                 "--val-voices", "2", "--val-texts", "2", "--no-mixed"]) == 0
    assert main(["extract", str(grid / "manifest.csv"), "--out", str(feats), "--backbone", "whisper-tiny.en",
                 "--pooling", "mean"]) == 0
    (tmp_path / "recipe.toml").write_text(RECIPE)
    assert main(["train", "--features", str(feats), "--manifest", str(grid / "manifest.csv"), "--out", str(model),
                 "--recipe", str(tmp_path / "recipe.toml")]) == 0
    config = json.loads((model / "config.json").read_text())
    assert json.dumps(config).count("whisper-tiny.en") >= 1  # the model names its backbone
    assert main(["evaluate", "--model", str(model), "--out", str(report), "--limit-per-speaker-digit", "2"]) == 0
    out = capsys.readouterr().out
    assert "| ours: speaker subspace |" in out and "| raw layer 4 |" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["utterances"] == 120 and metrics["speakers"] == 6
    assert set(metrics["systems"]) >= {"ours: speaker subspace", "ours: content subspace", "raw layer 0"}
    for plot in ("det.png", "scores.png", "tsne.png", "layer_weights.png"):
        assert (report / plot).stat().st_size > 1000

    # A rerun reuses finished stages: same weights, same numbers.
    weights = (model / "model.safetensors").read_bytes()
    assert main(["train", "--features", str(feats), "--manifest", str(grid / "manifest.csv"), "--out", str(model),
                 "--recipe", str(tmp_path / "recipe.toml")]) == 0
    assert (model / "model.safetensors").read_bytes() == weights
    assert main(["evaluate", "--model", str(model), "--out", str(report), "--limit-per-speaker-digit", "2"]) == 0
    assert json.loads((report / "metrics.json").read_text())["systems"] == metrics["systems"]
    # Several models (e.g. seeds) are summarised as mean +- std; the same model twice has std 0.
    assert main(["evaluate", "--model", str(model), str(model), "--out", str(tmp_path / "seeds"),
                 "--limit-per-speaker-digit", "2"]) == 0
    summary = json.loads((tmp_path / "seeds" / "summary.json").read_text())["systems"]
    eer_all = metrics["systems"]["ours: speaker subspace"]["verification"]["all"]["eer"]
    assert summary["ours: speaker subspace"]["EER all"] == [round(eer_all, 6), 0.0]
    assert (tmp_path / "seeds" / "model-1" / "report.md").is_file()


    # Using the model: calibrate a threshold, verify, embed, export (checked by onnxruntime).
    george, jackson = FSDD / "0_george_14.wav", FSDD / "0_jackson_10.wav"
    assert main(["verify", str(model), str(george), str(jackson)]) == 1  # no threshold yet
    assert "subspaces calibrate" in capsys.readouterr().err
    # (The default corpus is the dev suite; FSDD's 300 test clips keep this test quick.)
    assert main(["calibrate", str(model), "--corpus", "fsdd", "--split", "test"]) == 0
    assert "speaker threshold" in capsys.readouterr().out
    assert main(["verify", str(model), str(george), str(FSDD / "5_george_20.wav")]) == 0
    assert "score" in capsys.readouterr().out
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert main(["embed", str(model), str(george), str(jackson), str(bad), "--out", str(tmp_path / "v.npz")]) == 2
    vectors = np.load(tmp_path / "v.npz")
    assert vectors["speaker"].shape == (2, 16) and vectors["content"].shape == (2, 16)
    if importlib.util.find_spec("onnxruntime"):
        assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
        line = [l for l in capsys.readouterr().out.splitlines() if "max abs difference" in l][0]
        assert all(float(x.split()[-1]) <= 1e-4 for x in line.split(": ", 1)[1].split(", "))


def test_bad_arguments_exit_with_a_reason(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "f")]) == 1
    assert "missing.csv" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "g")]) == 1
    assert "no voices" in capsys.readouterr().err
    assert main(["extract", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "f"), "--shard", "x"]) == 1


def _untrained_model(folder, backbone_name="whisper-tiny.en"):
    """A real-backbone model folder with an untrained head (evaluation logic only)."""
    import torch

    from subspaces.backbones import load_backbone
    from subspaces.model import SubspaceConfig, SubspaceModel

    backbone = load_backbone(backbone_name)
    torch.manual_seed(0)
    model = SubspaceModel(SubspaceConfig(input_dim=backbone.width, num_layers=backbone.num_layers, layer="mix",
                                         hidden=(32,), subspaces=(("speaker", 8), ("content", 8))))
    model.fit_normalization(torch.randn(10, backbone.num_layers, backbone.width))
    return model.save(folder, metadata={"backbone": backbone.name, "backbone_revision": backbone.revision})


def test_evaluate_on_voxceleb1_and_speech_commands_layouts(tmp_path, capsys):
    from conftest import write_tone

    model = _untrained_model(tmp_path / "model")
    vox = tmp_path / "voxceleb1"
    utts = [(f"id1027{s}", f"vid{v}", f"0000{u}") for s in range(4) for v in range(2) for u in range(1, 3)]
    for i, (speaker, video, utt) in enumerate(utts):
        (vox / "wav" / speaker / video).mkdir(parents=True, exist_ok=True)
        write_tone(vox / "wav" / speaker / video / f"{utt}.wav", 0.5, 16000, freq=100 + 30 * int(speaker[-1]), seed=i)
    pairs = [(1, 0, 1), (1, 4, 6), (0, 0, 4), (0, 2, 9), (1, 8, 11), (0, 12, 3), (1, 13, 14), (0, 15, 1)]
    (vox / "veri_test2.txt").write_text("".join(f"{label} {'/'.join(utts[a])}.wav {'/'.join(utts[b])}.wav\n"
                                                for label, a, b in pairs))
    assert main(["evaluate", "--model", str(model), "--corpus", f"voxceleb1:{vox}", "--trials",
                 str(vox / "veri_test2.txt"), "--out", str(tmp_path / "vox-report")]) == 0
    metrics = json.loads((tmp_path / "vox-report" / "metrics.json").read_text())
    assert metrics["trials"] == {"total": 8, "targets": 4, "content_matched": 0}
    assert "keyword" not in metrics["systems"]["ours: speaker subspace"]  # VoxCeleb has no content labels

    sc = tmp_path / "speech_commands"
    words, speakers = ["yes", "no", "left"], [f"{i:08x}" for i in range(6)]
    for w, word in enumerate(words):
        for s, speaker in enumerate(speakers):
            (sc / word).mkdir(parents=True, exist_ok=True)
            write_tone(sc / word / f"{speaker}_nohash_0.wav", 0.5, 16000, freq=150 + 80 * w, seed=s)
    (sc / "validation_list.txt").write_text("")
    (sc / "testing_list.txt").write_text("".join(f"{w}/{speakers[s]}_nohash_0.wav\n" for w in words for s in (4, 5)))
    assert main(["evaluate", "--model", str(model), "--corpus", f"speech-commands-12:{sc}",
                 "--out", str(tmp_path / "sc-report")]) == 0
    keyword = json.loads((tmp_path / "sc-report" / "metrics.json").read_text())["systems"]["raw layer 2"]["keyword"]
    assert len(keyword["folds"]) == 1  # the official split, not speaker folds
    assert sum(map(sum, keyword["confusion"])) == 6  # the 6 clips of testing_list.txt
    assert "| raw layer 0 |" in capsys.readouterr().out


def test_large_recipe_adds_distinct_neural_voices_to_the_demo_voices():
    from subspaces.pipeline import DEMO_PLANS
    from subspaces.synth import sample_voice_mix

    def voices(recipe):
        return sample_voice_mix(recipe.espeak_voices, recipe.flite_voices, seed=recipe.seed,
                                kokoro=recipe.kokoro_voices, piper=recipe.piper_voices)

    demo, large = voices(DEMO_PLANS["small"]), voices(DEMO_PLANS["large"])
    engines = [v.engine for v in large]
    assert {e: engines.count(e) for e in set(engines)} == {"espeak-ng": 48, "flite": 32, "kokoro": 48, "piper": 9}
    assert large[:80] == demo  # the large grid reuses the demo's voices and adds to them
    assert len({v.speaker for v in large}) == len(large)
