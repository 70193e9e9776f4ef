"""speech-subspaces: task-specific subspaces of frozen speech foundation models.

>>> from subspaces import load_backbone
"""

from .audio import AudioError, load_audio
from .backbones import Backbone, BackboneUnavailable, EncoderOutput, load_backbone

__version__ = "0.1.0"

__all__ = ["AudioError", "Backbone", "BackboneUnavailable", "EncoderOutput", "load_audio", "load_backbone", "__version__"]
