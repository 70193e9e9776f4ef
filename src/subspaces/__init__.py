"""speech-subspaces: task-specific subspaces of frozen speech foundation models.

The entry points below are imported on first use, so `import subspaces` (or the
command line's `--help`) does not pay for loading transformers.

>>> import subspaces
>>> model = subspaces.load_model("runs/demo/model")  # doctest: +SKIP
>>> vectors = model.embed(["a.wav", "b.wav"])  # doctest: +SKIP

The stages, in order: `synthesize_grid` (synthetic voices x texts), `extract_features`
(a frozen backbone's pooled layers), `train` (the subspace model), `evaluate_model`
(real speech, beside raw layers and baselines), `load_model` (embed and verify),
`export_onnx`; `run_demo` runs them all.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "SubspacesError": "errors",
    "AudioError": "audio",
    "load_audio": "audio",
    "Backbone": "backbones",
    "BackboneUnavailable": "backbones",
    "EncoderOutput": "backbones",
    "load_backbone": "backbones",
    "load_corpus": "corpora",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "Voice": "synth",
    "sample_voices": "synth",
    "synthesize": "synth",
    "synthesize_grid": "synth",
    "load_texts": "synth",
    "FeatureStore": "features",
    "extract_features": "features",
    "load_features": "features",
    "SubspaceModel": "model",
    "TrainConfig": "training",
    "load_recipe": "training",
    "train": "training",
    "evaluate_systems": "evaluate",
    "evaluate_model": "pipeline",
    "run_demo": "pipeline",
    "SubspaceEncoder": "inference",
    "load_model": "inference",
    "SpeakerDatabase": "speakers",
    "read_trial_list": "scoring",
    "export_onnx": "export",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'subspaces' has no attribute {name!r}")
