"""SubspaceModel: shapes, layer selection, normalisation, save/load without pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from subspaces import __version__
from subspaces.model import ModelError, SubspaceConfig, SubspaceModel


def small(**overrides) -> SubspaceConfig:
    return SubspaceConfig(**{"input_dim": 6, "num_layers": 3, "hidden": (10, 10),
                             "subspaces": (("speaker", 4), ("content", 3))} | overrides)


def test_default_trunk_is_the_papers_768_768_768_768():
    model = SubspaceModel(SubspaceConfig(input_dim=768, num_layers=13))
    linears = [m for m in model.trunk if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(768, 768)] * 4
    out = model(torch.randn(2, 13, 768))
    assert {k: v.shape for k, v in out.items()} == {"speaker": (2, 384), "content": (2, 384)}


def test_outputs_are_the_named_slices_of_one_vector_with_residual():
    torch.manual_seed(0)
    model = SubspaceModel(small(residual=2, layer=0))
    x = torch.randn(5, 3, 6)
    out = model(x)
    assert list(out) == ["speaker", "content", "residual"]
    whole = model.trunk((x[:, 0] - model.input_mean[0]) / model.input_std[0])
    assert torch.equal(torch.cat(list(out.values()), dim=1), whole)


def test_single_layer_ignores_the_other_layers_and_mix_uses_all():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6)
    changed = x.clone()
    changed[:, [0, 2]] += 1.0
    one = SubspaceModel(small(layer=1))
    assert torch.equal(one(x)["speaker"], one(changed)["speaker"])
    assert one.layer_weights.tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(SubspaceModel(small(layer=-1)).layer_weights, torch.tensor([0.0, 0.0, 1.0]))
    mix = SubspaceModel(small())
    assert torch.allclose(mix.layer_weights, torch.full((3,), 1 / 3))
    assert not torch.allclose(mix(x)["speaker"], mix(changed)["speaker"])
    # the mixing weights are learned: they receive a gradient
    mix(x)["speaker"].sum().backward()
    assert mix.layer_logits.grad is not None and mix.layer_logits.grad.abs().sum() > 0


def test_fit_normalization_standardises_training_features():
    torch.manual_seed(0)
    features = torch.randn(200, 3, 6) * torch.arange(1.0, 7.0) + 5.0
    model = SubspaceModel(small())
    model.fit_normalization(features)
    normalised = (features - model.input_mean) / model.input_std
    assert torch.allclose(normalised.mean(dim=0), torch.zeros(3, 6), atol=1e-4)
    assert torch.allclose(normalised.std(dim=0), torch.ones(3, 6), atol=1e-4)
    constant = torch.ones(10, 3, 6)
    model.fit_normalization(constant)  # zero variance does not divide by zero
    assert torch.isfinite(model(constant)["speaker"]).all()


def test_save_load_round_trip_is_exact_and_self_describing(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SubspaceModel(small(residual=2, pooling="mean+std"), metadata={"backbone": "whisper-base"})
    model.fit_normalization(torch.randn(50, 3, 6) * 3 + 1)
    model.eval()
    folder = model.save(tmp_path / "m", metadata={"revision": "abc123"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    description = json.loads((folder / "config.json").read_text())
    assert description["architecture"] == "SubspaceModel"
    assert description["package_version"] == __version__
    assert description["subspaces"] == {"speaker": 4, "content": 3, "residual": 2}
    assert description["layer"] == "mix" and description["pooling"] == "mean+std"
    assert description["metadata"] == {"backbone": "whisper-base", "revision": "abc123"}

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = SubspaceModel.load(folder)
    assert loaded.config == model.config and loaded.metadata == model.metadata
    x = torch.randn(7, 3, 6)
    for name, value in model(x).items():
        assert torch.equal(loaded(x)[name], value)


def test_load_errors_name_the_missing_or_mismatched_file(tmp_path):
    with pytest.raises(ModelError, match="config.json is missing"):
        SubspaceModel.load(tmp_path)
    folder = SubspaceModel(small()).save(tmp_path / "m")
    description = json.loads((folder / "config.json").read_text())
    description["config"]["hidden"] = [12, 10]
    (folder / "config.json").write_text(json.dumps(description))
    with pytest.raises(ModelError, match="model.safetensors: weights do not match config.json(.|\n)*size mismatch"):
        SubspaceModel.load(folder)
    description["architecture"] = "Other"
    (folder / "config.json").write_text(json.dumps(description))
    with pytest.raises(ModelError, match="expected 'SubspaceModel'"):
        SubspaceModel.load(folder)


def test_config_and_input_errors_list_the_valid_choices():
    with pytest.raises(ModelError, match="layer 3 is out of range for features with 3 layer"):
        small(layer=3)
    with pytest.raises(ModelError, match="'mix' or 'mix-per-subspace'"):
        small(layer="last")
    with pytest.raises(ModelError, match="pooling must be one of mean, mean\\+std"):
        small(pooling="max")
    with pytest.raises(ModelError, match="unique and not 'residual'"):
        small(subspaces=(("speaker", 2), ("speaker", 2)))
    with pytest.raises(ModelError, match="unknown SubspaceConfig key"):
        SubspaceConfig.from_dict({"input_dim": 4, "width": 3})
    model = SubspaceModel(small())
    with pytest.raises(ModelError, match=r"shape \[batch, 3 layers, 6\], got \[4, 6\]"):
        model(torch.randn(4, 6))


def test_mix_per_subspace_has_its_own_layer_weights_and_trunk(tmp_path):
    config = SubspaceConfig(input_dim=6, num_layers=4, layer="mix-per-subspace", hidden=(8,),
                            subspaces=(("speaker", 3), ("content", 5)), residual=2)
    model = SubspaceModel(config)
    assert model.layer_weights.shape == (3, 4)  # speaker, content, residual
    assert torch.allclose(model.layer_weights.sum(dim=1), torch.ones(3))
    with torch.no_grad():  # make the speaker subspace read only layer 0
        model.layer_logits[0] = torch.tensor([50.0, -50.0, -50.0, -50.0])
    features = torch.randn(7, 4, 6)
    changed = features.clone()
    changed[:, 1:] += 10.0  # layers the speaker subspace ignores
    before, after = model(features), model(changed)
    torch.testing.assert_close(before["speaker"], after["speaker"])
    assert not torch.allclose(before["content"], after["content"])
    assert {name: v.shape[1] for name, v in before.items()} == {"speaker": 3, "content": 5, "residual": 2}
    loaded = SubspaceModel.load(model.save(tmp_path / "m"))
    for name, value in loaded(features).items():
        torch.testing.assert_close(value, before[name])


def test_a_fixed_layer_per_subspace_reads_only_that_layer(tmp_path):
    config = SubspaceConfig(input_dim=6, num_layers=4, layer={"content": 2, "speaker": 0}, hidden=(8,),
                            subspaces=(("speaker", 3), ("content", 5)))
    assert config.layer == (("speaker", 0), ("content", 2))  # put in subspace order
    model = SubspaceModel(config)
    assert model.layer_weights.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    features = torch.randn(7, 4, 6)
    changed = features.clone()
    changed[:, 1] += 10.0  # a layer neither subspace reads
    changed_content = features.clone()
    changed_content[:, 2] += 10.0
    before = model(features)
    torch.testing.assert_close(model(changed)["speaker"], before["speaker"])
    torch.testing.assert_close(model(changed)["content"], before["content"])
    torch.testing.assert_close(model(changed_content)["speaker"], before["speaker"])
    assert not torch.allclose(model(changed_content)["content"], before["content"])
    folder = model.save(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["config"]["layer"] == {"speaker": 0, "content": 2}
    loaded = SubspaceModel.load(folder)
    assert loaded.config == config
    for name, value in loaded(features).items():
        torch.testing.assert_close(value, before[name])


def test_a_layer_per_subspace_must_name_every_subspace_in_range():
    with pytest.raises(ModelError, match=r"must name each of \['speaker', 'content'\]"):
        small(layer={"speaker": 0})
    with pytest.raises(ModelError, match=r"layer\(s\) \[5\] out of range"):
        small(layer={"speaker": 0, "content": 5})
    with pytest.raises(ModelError, match="mapping of subspace name to layer index"):
        small(layer={"speaker": "first", "content": 1})


@pytest.mark.parametrize("damage, message", [
    (lambda w: w.write_bytes(w.read_bytes()[: w.stat().st_size // 2]), "model.safetensors: not a readable safetensors"),
    (lambda w: w.write_bytes(b""), "model.safetensors: not a readable safetensors"),
    (lambda w: w.write_text("<html>404 Not Found</html>\n"), "model.safetensors: not a readable safetensors"),
])
def test_unreadable_weights_are_named(tmp_path, damage, message):
    folder = SubspaceModel(small()).save(tmp_path / "m")
    damage(folder / "model.safetensors")
    with pytest.raises(ModelError, match=message):
        SubspaceModel.load(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("config"), 'config.json: no "config"'),
    (lambda d: d["config"].pop("input_dim"), r"config.json: \"config\": SubspaceConfig key\(s\) \['input_dim'\] missing"),
    (lambda d: d["config"].update(input_dim="wide"), "config.json: \"config\": input_dim must be a positive integer, got 'wide'"),
    (lambda d: d["config"].update(hidden=[10, "10"]), "hidden must be a list of integer layer sizes"),
    (lambda d: d["config"].update(subspaces={"speaker": 2}), "subspaces must be \\(name, size\\) pairs"),
    (lambda d: d["config"].update(layer=True), "layer must be an integer index"),
    (lambda d: d["config"].update(dropout="none"), "dropout must be a number"),
    (lambda d: d.update(config=[1, 2]), "a SubspaceConfig is an object of its fields, got an array"),
    (lambda d: d.update(metadata="x"), '"metadata" must be an object, got a string'),
])
def test_config_json_of_the_wrong_shape_is_named(tmp_path, edit, message):
    folder = SubspaceModel(small()).save(tmp_path / "m")
    description = json.loads((folder / "config.json").read_text())
    edit(description)
    (folder / "config.json").write_text(json.dumps(description))
    with pytest.raises(ModelError, match=message):
        SubspaceModel.load(folder)


def test_config_json_that_is_not_an_object_is_named(tmp_path):
    folder = SubspaceModel(small()).save(tmp_path / "m")
    (folder / "config.json").write_text("[1, 2, 3]\n")
    with pytest.raises(ModelError, match="config.json: expected a JSON object .* got an array"):
        SubspaceModel.load(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelError, match="config.json: not valid JSON"):
        SubspaceModel.load(folder)
