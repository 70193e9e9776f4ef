"""speech-subspaces: task-specific subspaces of frozen speech foundation models.

The public names below are imported on first use, so `import subspaces.metrics` (or the
command line's `--help`) does not pay for loading transformers.

>>> from subspaces import load_backbone
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "AudioError": "audio",
    "load_audio": "audio",
    "Backbone": "backbones",
    "BackboneUnavailable": "backbones",
    "EncoderOutput": "backbones",
    "load_backbone": "backbones",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "SubspaceModel": "model",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'subspaces' has no attribute {name!r}")
