"""Training on random features with a planted speaker/content structure."""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import subspaces.training
from subspaces.atomic import DiskFull
from subspaces.folders import LOCK_FILE, mark_unfinished, unfinished
from subspaces.model import SubspaceModel
from subspaces.training import TrainConfig, TrainError, load_recipe, train, write_recipe


def planted_grid(speakers: int, texts: int, dim: int, layers: int = 1, seed: int = 0, val_speakers: int = 0, channels: int = 1,
                 noise: float = 0.3):
    """Features x = A s + B c (+ channel offset) + noise (of std `noise`), every dimension mixing both factors.

    The last `val_speakers` speakers are held out (split "val").
    """
    rng = np.random.default_rng(seed)
    rank = 8
    speaker_code = rng.normal(size=(speakers, rank))
    text_code = rng.normal(size=(texts, rank))
    channel_offset = rng.normal(size=(channels, dim))
    mix_speaker = rng.normal(size=(layers, rank, dim)) / np.sqrt(rank)
    mix_text = rng.normal(size=(layers, rank, dim)) / np.sqrt(rank)
    rows, vectors = [], []
    for s in range(speakers):
        for t in range(texts):
            for ch in range(channels):
                x = speaker_code[s] @ mix_speaker + text_code[t] @ mix_text + channel_offset[ch] + noise * rng.normal(size=(layers, dim))
                vectors.append(x)
                rows.append((f"spk{s:02d}", f"text{t:03d}", f"ch{ch}", "val" if s >= speakers - val_speakers else "train"))
    table = pd.DataFrame(rows, columns=["speaker", "content", "channel", "split"])
    return torch.tensor(np.stack(vectors), dtype=torch.float32), table


def separable_grid(speakers: int, texts: int, dim: int, val_speakers: int, seed: int = 0, noise: float = 0.1):
    """Two layers: layer 0 = a random code of the speaker + noise, layer 1 = one of the text
    + noise. Any projection of layer 0 (layer 1) keeps the speakers (texts) apart, so the
    validation EER of each factor in its own subspace is 0 from the first step on.
    The last `val_speakers` speakers are held out (split "val")."""
    rng = np.random.default_rng(seed)
    speaker_code, text_code = rng.normal(size=(speakers, dim)), rng.normal(size=(texts, dim))
    rows, vectors = [], []
    for s in range(speakers):
        for t in range(texts):
            vectors.append(np.stack([speaker_code[s], text_code[t]]) + noise * rng.normal(size=(2, dim)))
            rows.append((f"spk{s:02d}", f"text{t:03d}", "val" if s >= speakers - val_speakers else "train"))
    table = pd.DataFrame(rows, columns=["speaker", "content", "split"])
    return torch.tensor(np.stack(vectors), dtype=torch.float32), table


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(hidden=(64,), subspaces={"speaker": 16, "content": 16}, block={"speaker": 4, "content": 8}, max_lr=3e-3)


def test_training_separates_the_factors_on_held_out_speakers(tmp_path):
    features, table = planted_grid(speakers=20, texts=24, dim=32, val_speakers=6)
    config = TrainConfig(**SMALL, steps=150, val_every=50, checkpoint_every=0, select="last")
    folder = train(features, table, config, tmp_path / "run", metadata={"backbone": "planted"})
    val = pd.read_csv(folder / "val_log.csv")
    assert val["step"].tolist() == [50, 100, 150]
    last = val.iloc[-1]
    # speaker subspace: speakers verify well, texts do not; content subspace: the reverse
    assert last["speaker/speaker_eer"] < 0.1 < 0.3 < last["content/speaker_eer"]
    assert last["content/content_eer"] < 0.1 < 0.3 < last["speaker/content_eer"]
    assert last["content/content_nn_accuracy"] > 0.7 > 0.3 > last["speaker/content_nn_accuracy"]
    assert last["speaker/speaker_nn_accuracy"] > 0.9
    log = pd.read_csv(folder / "train_log.csv")
    assert len(log) == 150 and log["loss"].iloc[-10:].mean() < log["loss"].iloc[:10].mean()
    assert {"contrastive/speaker", "contrastive/content", "orthogonality/speaker-content"} <= set(log.columns)
    # the saved model is self-describing and reproduces the training outputs
    model = SubspaceModel.load(folder)
    assert model.metadata["backbone"] == "planted" and model.metadata["training"]["step"] == 150
    assert load_recipe(folder / "recipe.toml") == config


def test_recipe_round_trip_and_errors(tmp_path):
    config = TrainConfig(steps=20, layer=3, hidden=(32, 32), nuisance="channel",
                         block={"speaker": 4, "content": 4, "channel": 2}, residual=8, tensorboard=True)
    write_recipe(config, tmp_path / "recipe.toml")
    assert load_recipe(tmp_path / "recipe.toml") == config
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 10\nlearning_rate = 0.1\n")
    with pytest.raises(TrainError, match=r"bad.toml: unknown key\(s\) \['learning_rate'\]; valid keys are .*max_lr"):
        load_recipe(bad)
    bad.write_text('steps = "many"\n')
    with pytest.raises(TrainError, match="steps = 'many' is not an integer"):
        load_recipe(bad)
    bad.write_text("steps = 0\ntemperature = -1.0\n")
    with pytest.raises(TrainError, match="steps must be positive.*temperature must be positive"):
        load_recipe(bad)
    bad.write_text('[block]\nspeaker = 4\n')
    with pytest.raises(TrainError, match=r"block must give a size for exactly the factors \['content', 'speaker'\]"):
        load_recipe(bad)
    bad.write_text("steps = [")
    with pytest.raises(TrainError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(TrainError, match="is a folder"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("values, problem", [
    ({"weight_decay": math.nan}, "weight_decay must be a finite number, got nan"),
    ({"max_lr": math.inf}, "max_lr must be a finite number, got inf"),
    ({"margin": -math.inf}, "margin must be a finite number, got -inf"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"hidden": [64, 0]}, r"hidden sizes must be integers >= 1, got \[64, 0\]"),
    ({"device": "cuda:x"}, "device must be \"cpu\", \"cuda\" or \"cuda:N\""),
    ({"lda_init": {"speaker": math.nan}, "hidden": [], "layer": 0}, "shrinkages must be in"),
])
def test_recipe_numbers_must_be_finite_and_in_range(values, problem):
    with pytest.raises(TrainError, match=f"^my.toml: .*{problem}"):
        TrainConfig.from_dict(values, source="my.toml")


def test_errors_known_only_once_the_features_are_seen_name_the_recipe(tmp_path):
    features, table = planted_grid(speakers=4, texts=4, dim=8, layers=2)
    config = TrainConfig.from_dict(SMALL | {"block": {"speaker": 2, "content": 2}, "steps": 2, "layer": 2},
                                   source="my.toml")
    with pytest.raises(TrainError, match=r"^my.toml: layer 2 is out of range for features with 2 layer\(s\)"):
        train(features, table, config, tmp_path / "run")
    if not torch.cuda.is_available():
        cuda = TrainConfig.from_dict(SMALL | {"block": {"speaker": 2, "content": 2}, "device": "cuda"}, source="my.toml")
        with pytest.raises(TrainError, match="^my.toml: device = 'cuda', but torch finds no usable CUDA GPU"):
            train(features, table, cuda, tmp_path / "run")


def test_input_errors_name_the_problem(tmp_path):
    features, table = planted_grid(speakers=4, texts=4, dim=8)
    config = TrainConfig(**SMALL | {"block": {"speaker": 2, "content": 2}}, steps=2)
    with pytest.raises(TrainError, match="table has 15 rows but features have 16"):
        train(features, table.iloc[:15], config, tmp_path / "a")
    with pytest.raises(TrainError, match=r"lacks column\(s\) \['split'\]"):
        train(features, table.drop(columns="split"), config, tmp_path / "b")
    with pytest.raises(TrainError, match="patience = 2 needs validation rows"):
        train(features, table, TrainConfig(**SMALL | {"block": {"speaker": 2, "content": 2}}, steps=2, patience=2), tmp_path / "c")


def test_early_stopping_and_finished_run_and_recipe_change(tmp_path):
    features, table = planted_grid(speakers=8, texts=8, dim=8, val_speakers=3)
    # a learning rate so small that no weight changes: validation scores repeat exactly
    config = TrainConfig(**SMALL | {"max_lr": 1e-30, "block": {"speaker": 2, "content": 4}}, weight_decay=0.0,
                         steps=100, val_every=5, patience=2, checkpoint_every=0)
    folder = train(features, table, config, tmp_path / "run")
    assert pd.read_csv(folder / "val_log.csv")["step"].tolist() == [5, 10, 15]  # best at 5, then 2 without gain
    assert len(pd.read_csv(folder / "train_log.csv")) == 15
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000015"]
    assert SubspaceModel.load(folder).metadata["training"]["step"] == 5  # the best one
    assert unfinished(folder) is None and not (folder / LOCK_FILE).exists()
    before = (folder / "train_log.csv").read_text()
    mark_unfinished(folder, "training, step 15 of 100")  # as if killed between the last checkpoint and the mark
    train(features, table, config, folder)  # finished: returns without training more
    assert (folder / "train_log.csv").read_text() == before
    assert unfinished(folder) is None
    with pytest.raises(TrainError, match="different recipe or different data"):
        train(features, table, TrainConfig(**SMALL | {"block": {"speaker": 2, "content": 4}}, steps=100), folder)


def test_a_checkpoint_that_meets_a_full_disk_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    features, table = planted_grid(speakers=4, texts=4, dim=8)
    config = TrainConfig(**SMALL | {"block": {"speaker": 2, "content": 2}}, steps=4, val_every=0, checkpoint_every=2)
    save = torch.save

    def save_until_step_4(obj, path, *args, **kwargs):
        if obj["progress"]["step"] == 4:
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(subspaces.training.torch, "save", save_until_step_4)
    folder = tmp_path / "run"
    with pytest.raises(DiskFull, match=r"checkpoints/step-000004: no space left on the device"):
        train(features, table, config, folder)
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000002"]  # the earlier one, intact
    assert unfinished(folder) == "training, step 2 of 4" and not (folder / LOCK_FILE).exists()
    monkeypatch.setattr(subspaces.training.torch, "save", save)
    train(features, table, config, folder)  # a rerun with room resumes from step 2 and finishes
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-000004"] and unfinished(folder) is None


def test_checkpoints_are_chosen_by_validation_loss_where_eer_is_flat_at_0(tmp_path):
    features, table = separable_grid(speakers=10, texts=8, dim=16, val_speakers=4)
    recipe = dict(layer={"speaker": 0, "content": 1}, hidden=(), subspaces={"speaker": 8, "content": 8},
                  block={"speaker": 4, "content": 8}, max_lr=3e-3, temperature=0.5, steps=40, val_every=10,
                  checkpoint_every=0)
    by_loss = train(features, table, TrainConfig(**recipe), tmp_path / "loss")
    val = pd.read_csv(by_loss / "val_log.csv")
    assert val["step"].tolist() == [10, 20, 30, 40]
    # EER cannot tell these checkpoints apart: every held-out pair is already on the right side
    assert (val[["speaker/speaker_eer", "content/content_eer"]] == 0).all().all()
    assert (val[["speaker/speaker_nn_accuracy", "content/content_nn_accuracy"]] == 1).all().all()
    # the criterion (mean validation loss of each factor in its own subspace) still moves,
    # and the saved model is the checkpoint where it is lowest, not the first of the ties
    own = val[["speaker/speaker_loss", "content/content_loss"]].mean(axis=1)
    assert np.allclose(val["score"], own) and val["score"].nunique() == 4
    best = int(val.loc[val["score"].idxmin(), "step"])
    assert best > 10 and val["score"].max() - val["score"].min() > 1e-3
    saved = SubspaceModel.load(by_loss).metadata["training"]
    assert saved["step"] == best and saved["validation"]["speaker/speaker_loss"] == pytest.approx(
        val.loc[val["step"] == best, "speaker/speaker_loss"].item())
    # the content subspace knows little of the speaker: its speaker loss stays far above the speaker subspace's
    assert (val["content/speaker_loss"] > val["speaker/speaker_loss"] + 0.5).all()
    # select_by = "eer" (the old rule) sees only ties and keeps the first validation
    by_eer = train(features, table, TrainConfig(**recipe, select_by="eer"), tmp_path / "eer")
    assert pd.read_csv(by_eer / "val_log.csv")["score"].tolist() == [0.0] * 4
    assert SubspaceModel.load(by_eer).metadata["training"]["step"] == 10
    assert load_recipe(by_eer / "recipe.toml").select_by == "eer"
    with pytest.raises(TrainError, match="select_by must be one of loss, eer, got 'auc'"):
        TrainConfig(**recipe, select_by="auc")


def test_nuisance_and_residual_and_layer_mix(tmp_path):
    features, table = planted_grid(speakers=6, texts=6, dim=8, layers=3, channels=2, val_speakers=2)
    config = TrainConfig(**SMALL | {"block": {"speaker": 2, "content": 2, "channel": 2}}, nuisance="channel",
                         residual=4, steps=6, val_every=3, checkpoint_every=3)
    folder = train(features, table, config, tmp_path / "run")
    log = pd.read_csv(folder / "train_log.csv")
    assert "contrastive/residual" in log.columns and log.notna().all().all()
    model = SubspaceModel.load(folder)
    assert model.config.layer == "mix" and model.config.sizes == {"speaker": 16, "content": 16, "residual": 4}
    assert "speaker/speaker_eer" in pd.read_csv(folder / "val_log.csv").columns


def test_a_layer_per_subspace_from_a_recipe_trains(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("steps = 4\nval_every = 2\ncheckpoint_every = 2\nhidden = [16]\n"
                      "[subspaces]\nspeaker = 8\ncontent = 8\n[block]\nspeaker = 2\ncontent = 4\n"
                      "[layer]\nspeaker = 0\ncontent = 2\n")
    config = load_recipe(recipe)
    write_recipe(config, tmp_path / "again.toml")
    assert load_recipe(tmp_path / "again.toml") == config
    features, table = planted_grid(speakers=6, texts=6, dim=8, layers=3, val_speakers=2)
    model = SubspaceModel.load(train(features, table, config, tmp_path / "run"))
    assert model.config.layer == (("speaker", 0), ("content", 2))
    recipe.write_text('[layer]\nspeaker = "first"\n')
    with pytest.raises(TrainError, match="or a table of integers"):
        load_recipe(recipe)


def test_lda_start_is_the_discriminant_projection_and_trains_on(tmp_path):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    features, table = planted_grid(speakers=10, texts=12, dim=16, layers=2, val_speakers=3)
    lda = {"layer": {"speaker": 1, "content": 0}, "hidden": (), "lda_init": {"speaker": 0.1}}
    config = TrainConfig(**SMALL | lda | {"max_lr": 1e-30}, weight_decay=0.0, steps=2, val_every=0, checkpoint_every=0)
    model = SubspaceModel.load(train(features, table, config, tmp_path / "start"))
    # with no weight change, the speaker subspace is sklearn's LDA of the training rows
    # (6 of its 16 outputs: 7 training voices give 6 directions; the rest start at 0)
    train_rows = (table["split"] == "train").to_numpy()
    x = features[:, 1].numpy()
    x = (x - x[train_rows].mean(0)) / x[train_rows].std(0, ddof=1)
    expected = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1).fit(x[train_rows], table["speaker"][train_rows])
    with torch.no_grad():
        speaker = model(features)["speaker"].numpy()
    assert np.allclose(speaker[:, :6], x @ expected.scalings_[:, :6], atol=1e-4)
    assert np.abs(speaker[:, 6:]).max() == 0
    # trained on from that start, the LDA directions move; the all-zero outputs get no
    # gradient (the loss compares directions), so the subspace keeps 6 live dimensions
    trained = TrainConfig(**SMALL | lda, steps=20, val_every=0, checkpoint_every=0)
    write_recipe(trained, tmp_path / "recipe.toml")
    assert load_recipe(tmp_path / "recipe.toml") == trained
    moved = SubspaceModel.load(train(features, table, trained, tmp_path / "trained"))
    with torch.no_grad():
        after = moved(features)["speaker"].numpy()
    assert np.abs(after[:, :6] - speaker[:, :6]).max() > 1e-2
    assert np.abs(after[:, 6:]).max() == 0


def test_lda_start_errors_name_the_problem(tmp_path):
    with pytest.raises(TrainError, match=r"lda_init needs linear trunks \(hidden = \[\]\), got hidden = \[64\]"):
        TrainConfig(**SMALL, layer=0, lda_init={"speaker": 0.1})
    with pytest.raises(TrainError, match="lda_init needs a fixed layer.*'mix'"):
        TrainConfig(**SMALL | {"hidden": ()}, lda_init={"speaker": 0.1})
    with pytest.raises(TrainError, match=r"lda_init names \['voice'\], which are not subspaces"):
        TrainConfig(**SMALL | {"hidden": ()}, layer=0, lda_init={"voice": 0.1})
    with pytest.raises(TrainError, match="shrinkages must be in \\[0, 1\\]"):
        TrainConfig(**SMALL | {"hidden": ()}, layer=0, lda_init={"speaker": 2.0})
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('hidden = []\nlayer = 0\n[lda_init]\nspeaker = "auto"\n')
    with pytest.raises(TrainError, match="recipe.toml: lda_init = .* is not a table of numbers"):
        load_recipe(recipe)


RUNNER = r"""
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_train import planted_grid, SMALL
import subspaces.sampler
from subspaces.training import TrainConfig, train
if sys.argv[2] == "slow":  # make the run long enough to be killed in the middle
    batch = subspaces.sampler.GridSampler.batch
    subspaces.sampler.GridSampler.batch = lambda self, step: (time.sleep(0.1), batch(self, step))[1]
features, table = planted_grid(speakers=8, texts=12, dim=16, val_speakers=2)
config = TrainConfig(**SMALL, steps=60, val_every=20, checkpoint_every=10, dropout=0.1)
train(features, table, config, sys.argv[1])
"""


def run_training(script: Path, out_dir: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    return subprocess.Popen([sys.executable, str(script), str(out_dir), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_kill_9_ends_at_the_same_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUNNER.replace("{tests!r}", repr(str(Path(__file__).parent))))
    uninterrupted, killed = tmp_path / "a", tmp_path / "b"
    process = run_training(script, killed, "slow")
    reference = run_training(script, uninterrupted, "fast")
    deadline = time.time() + 60
    while not list((killed / "checkpoints").glob("step-0000[2-4]0")) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reference.wait() == 0, reference.stderr.read().decode()
    checkpoints = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert checkpoints and checkpoints[0] < "step-000060"  # killed in the middle of training
    # the model folder it left says it is unfinished (the step of a checkpoint: 0, 10, ... 50)
    assert re.fullmatch(r"training, step [0-5]0 of 60", unfinished(killed) or "")
    assert unfinished(uninterrupted) is None
    assert run_training(script, killed, "fast").wait() == 0
    assert unfinished(killed) is None and not (killed / LOCK_FILE).exists()
    for relative in ("model.safetensors", "checkpoints/step-000060/model.safetensors"):
        expected, got = load_file(uninterrupted / relative), load_file(killed / relative)
        assert expected.keys() == got.keys()
        for name in expected:
            assert torch.equal(expected[name], got[name]), f"{relative}: {name} differs after resume"
    assert (killed / "train_log.csv").read_text() == (uninterrupted / "train_log.csv").read_text()
    assert (killed / "val_log.csv").read_text() == (uninterrupted / "val_log.csv").read_text()
