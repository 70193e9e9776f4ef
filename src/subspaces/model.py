"""The subspace model: frozen backbone features in, one vector split into named subspaces out.

Pipeline inside `SubspaceModel.forward`, for pooled features `float[B, L, D]` (L backbone
layers, D the pooled width; D is twice the backbone width for "mean+std" pooling):

1. input normalisation: subtract the training-set mean and divide by its standard
   deviation, per layer and per dimension (buffers fitted by `fit_normalization`, saved
   with the weights);
2. layer selection: one layer, or "mix", a softmax-weighted sum of all layers with one
   learned weight per layer (as s3prl's featurizer does), "mix-per-subspace": each
   subspace its own layer mix and its own MLP trunk, or a fixed layer per subspace
   (`{"speaker": 0, "content": 3}`), each with its own MLP trunk;
3. an MLP trunk: `input -> hidden[0] -> ... -> hidden[-1] -> output`, GELU between linear
   layers. The paper's "MLP 768-768-768-768" is read as three hidden layers of 768 and an
   output of 768 (= 384 speaker + 384 content): four linear layers in all. `hidden=()`
   makes the trunk one linear projection (the demo's choice: it transfers better from
   synthetic voices to real speakers);
4. the output vector is cut into the named subspaces in order (plus an optional
   "residual" subspace that no factor claims).

A saved model is a folder with `config.json` (package version, architecture, subspace
names and sizes, layer selection, free-form metadata such as the backbone name and
revision) and `model.safetensors`. Loading reads only those two files and never unpickles.

>>> import torch, tempfile
>>> config = SubspaceConfig(input_dim=8, num_layers=3, hidden=(16,), subspaces=(("speaker", 4), ("content", 4)))
>>> model = SubspaceModel(config)
>>> out = model(torch.randn(5, 3, 8))
>>> {name: tuple(v.shape) for name, v in out.items()}
{'speaker': (5, 4), 'content': (5, 4)}
>>> folder = model.save(tempfile.mkdtemp(), metadata={"backbone": "whisper-base"})
>>> loaded = SubspaceModel.load(folder)
>>> loaded.metadata["backbone"]
'whisper-base'
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import write_atomic
from .errors import SubspacesError

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "ModelError", "SubspaceConfig", "SubspaceModel", "RESIDUAL"]

ARCHITECTURE = "SubspaceModel"
# Hugging Face's key for the kind of model a config.json describes (its "architectures" lists classes).
MODEL_TYPE = "speech-subspaces"
RESIDUAL = "residual"
LAYER_MIX = "mix"
# One softmax layer mix and one MLP trunk per subspace: Whisper keeps the speaker in its
# first layers and the words in its middle ones, so one shared mix must compromise.
LAYER_MIX_EACH = "mix-per-subspace"
POOLINGS = ("mean", "mean+std")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Guards the normalisation against constant input dimensions (std 0); features are O(1).
_MIN_STD = 1e-5


class ModelError(SubspacesError, ValueError):
    """A model configuration, folder or input that cannot be used; the message says why."""


@dataclass(frozen=True)
class SubspaceConfig:
    """Everything needed to rebuild a `SubspaceModel` (stored in config.json).

    input_dim: width of the pooled features as they arrive (2 x backbone width for "mean+std").
    num_layers: how many backbone layers the features carry (the L of [B, L, D]).
    layer: an index into those layers (negative counts from the end), "mix",
        "mix-per-subspace", or one index per subspace (`{"speaker": 0, "content": 3}`,
        stored as name-index pairs; every subspace, the residual too, needs one).
    pooling: how the features were pooled over time, "mean" or "mean+std" (recorded so
        that inference pools the same way; the model itself receives pooled features).
    hidden: sizes of the hidden layers; the output layer's size is the sum of subspace sizes.
    subspaces: (name, size) pairs in output order, one per factor.
    residual: size of an extra "residual" subspace claimed by no factor (0 = none).
    dropout: dropout after every hidden activation.

    >>> SubspaceConfig(input_dim=512).output_dim
    768
    """

    input_dim: int
    num_layers: int = 1
    layer: int | str | tuple[tuple[str, int], ...] = LAYER_MIX
    pooling: str = "mean"
    hidden: tuple[int, ...] = (768, 768, 768)
    subspaces: tuple[tuple[str, int], ...] = (("speaker", 384), ("content", 384))
    residual: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Types first (a config.json edited by hand, or from another program, may hold
        # anything), then lists (from JSON or TOML) become tuples so configs compare and hash.
        for name in ("input_dim", "num_layers", "residual"):
            if not _is_int(getattr(self, name)):
                raise ModelError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
            object.__setattr__(self, name, int(getattr(self, name)))
        if isinstance(self.hidden, (str, bytes, Mapping)) or not isinstance(self.hidden, (list, tuple)) \
                or not all(_is_int(h) for h in self.hidden):
            raise ModelError(f"hidden must be a list of integer layer sizes, e.g. [768, 768], got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not isinstance(self.subspaces, (list, tuple)) or not all(
                isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) and _is_int(pair[1])
                for pair in self.subspaces):
            raise ModelError(f"subspaces must be (name, size) pairs, e.g. [['speaker', 384], ['content', 384]], "
                             f"got {self.subspaces!r}")
        object.__setattr__(self, "subspaces", tuple((name, int(size)) for name, size in self.subspaces))
        if not isinstance(self.pooling, str):
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(self.dropout, numbers.Real) or isinstance(self.dropout, bool):
            raise ModelError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, (numbers.Integral, str, Mapping, list, tuple)):
            raise ModelError(f"layer must be an integer index, {LAYER_MIX!r}, {LAYER_MIX_EACH!r} or a mapping of "
                             f"subspace name to layer index, got {self.layer!r}")
        if isinstance(self.layer, numbers.Integral):
            object.__setattr__(self, "layer", int(self.layer))
        if self.input_dim < 1:
            raise ModelError(f"input_dim must be a positive integer, got {self.input_dim}")
        if self.num_layers < 1:
            raise ModelError(f"num_layers must be a positive integer, got {self.num_layers}")
        if isinstance(self.layer, (Mapping, list, tuple)):
            pairs = self.layer.items() if isinstance(self.layer, Mapping) else self.layer
            try:
                layer = tuple((name, index) for name, index in pairs)
            except (TypeError, ValueError):
                layer = None
            if layer is None or not all(isinstance(name, str) and _is_int(index) for name, index in layer):
                raise ModelError(f"a layer per subspace is a mapping of subspace name to layer index, got {self.layer!r}")
            layer = tuple((name, int(index)) for name, index in layer)
            object.__setattr__(self, "layer", layer)
        if isinstance(self.layer, tuple):
            names = list(self.sizes)
            if sorted(name for name, _ in self.layer) != sorted(names):
                raise ModelError(f"a layer per subspace must name each of {names} once, got {dict(self.layer)}")
            bad = [index for _, index in self.layer if not -self.num_layers <= index < self.num_layers]
            if bad:
                raise ModelError(f"layer(s) {bad} out of range for features with {self.num_layers} layer(s)")
            order = dict(self.layer)
            object.__setattr__(self, "layer", tuple((name, order[name]) for name in names))
        elif isinstance(self.layer, str):
            if self.layer not in (LAYER_MIX, LAYER_MIX_EACH):
                raise ModelError(
                    f"layer must be an integer index, {LAYER_MIX!r} or {LAYER_MIX_EACH!r}, got {self.layer!r}")
        elif not -self.num_layers <= self.layer < self.num_layers:
            raise ModelError(
                f"layer {self.layer} is out of range for features with {self.num_layers} layer(s); "
                f"use 0..{self.num_layers - 1}, a negative index, or {LAYER_MIX!r}"
            )
        if self.pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling == "mean+std" and self.input_dim % 2:
            raise ModelError(f"mean+std features concatenate mean and std, so input_dim must be even, got {self.input_dim}")
        if any(h < 1 for h in self.hidden):
            raise ModelError(f"hidden sizes must be positive integers, got {list(self.hidden)}")
        names = [name for name, _ in self.subspaces]
        if not names:
            raise ModelError("at least one subspace is needed, e.g. (('speaker', 384), ('content', 384))")
        if len(set(names)) != len(names) or RESIDUAL in names:
            raise ModelError(f"subspace names must be unique and not {RESIDUAL!r} (reserved), got {names}")
        if any(size < 1 for _, size in self.subspaces) or self.residual < 0:
            raise ModelError(f"subspace sizes must be positive (residual >= 0), got {dict(self.subspaces)}, residual={self.residual}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def per_subspace(self) -> bool:
        """Whether each subspace has its own layer choice and MLP trunk."""
        return self.layer == LAYER_MIX_EACH or isinstance(self.layer, tuple)

    @property
    def sizes(self) -> dict[str, int]:
        """Subspace name -> size, in output order, the residual last when present."""
        sizes = dict(self.subspaces)
        if self.residual:
            sizes[RESIDUAL] = self.residual
        return sizes

    @property
    def output_dim(self) -> int:
        return sum(self.sizes.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        data["subspaces"] = [[name, size] for name, size in self.subspaces]
        if isinstance(self.layer, tuple):
            data["layer"] = dict(self.layer)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubspaceConfig:
        """Rebuild from `to_dict`'s output (the "config" object of config.json).

        >>> SubspaceConfig.from_dict({"input_dim": 8, "hidden": [16]}).hidden
        (16,)
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"a SubspaceConfig is an object of its fields, got {_json_type(data)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown SubspaceConfig key(s) {unknown}; valid keys: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ModelError(f"SubspaceConfig key(s) {missing} missing; every config needs {missing}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    """An integer, numpy's too, but not a bool (JSON true would otherwise read as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (for error messages)."""
    if isinstance(value, bool):
        return "a boolean"
    for kind, word in ((dict, "an object"), (list, "an array"), (str, "a string"), ((int, float), "a number")):
        if isinstance(value, kind):
            return word
    return "null" if value is None else type(value).__name__


class SubspaceModel(nn.Module):
    """Maps pooled features `float[B, L, D]` to `{subspace name: float[B, size]}`.

    `metadata` is a free-form JSON-able dict saved with the model (backbone name and
    revision, training recipe, ...).

    >>> model = SubspaceModel(SubspaceConfig(input_dim=4, num_layers=2, layer=1, hidden=(8,), subspaces=(("a", 2),), residual=1))
    >>> sorted(model(torch.zeros(3, 2, 4)))
    ['a', 'residual']
    """

    def __init__(self, config: SubspaceConfig, metadata: Mapping[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.register_buffer("input_mean", torch.zeros(config.num_layers, config.input_dim))
        self.register_buffer("input_std", torch.ones(config.num_layers, config.input_dim))
        # Zero logits = equal weights at the start, as in s3prl's featurizer.
        if config.layer == LAYER_MIX:
            self.layer_logits = nn.Parameter(torch.zeros(config.num_layers))
        if config.layer == LAYER_MIX_EACH:
            self.layer_logits = nn.Parameter(torch.zeros(len(config.sizes), config.num_layers))
        if config.per_subspace:
            self.trunks = nn.ModuleList(self._mlp(size) for size in config.sizes.values())
        else:
            self.trunk = self._mlp(config.output_dim)

    def _mlp(self, output_dim: int) -> nn.Sequential:
        widths = [self.config.input_dim, *self.config.hidden]
        blocks: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(width_in, width_out), nn.GELU()]
            if self.config.dropout:
                blocks.append(nn.Dropout(self.config.dropout))
        blocks.append(nn.Linear(widths[-1], output_dim))
        return nn.Sequential(*blocks)

    @property
    def layer_weights(self) -> torch.Tensor:
        """`float[L]`: how much each backbone layer contributes (one-hot for a single layer);
        `float[S, L]`, one row per subspace in output order, for "mix-per-subspace" or a
        layer per subspace."""
        if self.config.layer in (LAYER_MIX, LAYER_MIX_EACH):
            return torch.softmax(self.layer_logits, dim=-1)
        if isinstance(self.config.layer, tuple):
            weights = torch.zeros(len(self.config.layer), self.config.num_layers, device=self.input_mean.device)
            for row, (_, index) in enumerate(self.config.layer):
                weights[row, index] = 1.0
            return weights
        weights = torch.zeros(self.config.num_layers, device=self.input_mean.device)
        weights[self.config.layer] = 1.0
        return weights

    @torch.no_grad()
    def fit_normalization(self, features: torch.Tensor) -> None:
        """Set the input mean and std from training features `float[N, L, D]`."""
        self._check_features(features)
        if features.shape[0] < 2:
            raise ModelError(f"fitting the input normalisation needs at least 2 items, got {features.shape[0]}")
        features = features.to(self.input_mean.device, torch.float64)
        self.input_mean.copy_(features.mean(dim=0).float())
        self.input_std.copy_(features.std(dim=0).clamp_min(_MIN_STD).float())

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """`float[B, L, D]` features standardised with the fitted input mean and std."""
        self._check_features(features)
        return (features.to(self.input_mean.dtype) - self.input_mean) / self.input_std

    def input_layer(self, name: str) -> int:
        """The backbone layer that subspace `name` reads when that is one fixed layer."""
        if isinstance(self.config.layer, tuple):
            return dict(self.config.layer)[name]
        if isinstance(self.config.layer, int):
            return self.config.layer
        raise ModelError(f"subspace {name!r} reads a learned layer mix ({self.config.layer!r}), not one fixed layer")

    @torch.no_grad()
    def set_projection(self, name: str, weight: torch.Tensor) -> None:
        """Start subspace `name` as the projection `weight` (`float[k, D]`, k <= its size)
        of the normalised input: its first k outputs become `weight @ x`, the others 0.

        Only for a trunk that is one linear layer (`hidden=()`).
        """
        sizes = self.config.sizes
        if name not in sizes:
            raise ModelError(f"no subspace {name!r}; this model has {list(sizes)}")
        if self.config.hidden:
            raise ModelError(f"setting a projection needs linear trunks (hidden=()), this model has hidden={list(self.config.hidden)}")
        if weight.ndim != 2 or weight.shape[1] != self.config.input_dim or weight.shape[0] > sizes[name]:
            raise ModelError(
                f"a projection for {name!r} must be [k <= {sizes[name]}, {self.config.input_dim}], got {list(weight.shape)}")
        index = list(sizes).index(name)
        if self.config.per_subspace:
            linear, start = self.trunks[index][-1], 0
        else:
            linear, start = self.trunk[-1], sum(list(sizes.values())[:index])
        rows = slice(start, start + sizes[name])
        linear.weight[rows] = 0.0
        linear.bias[rows] = 0.0
        linear.weight[start : start + weight.shape[0]] = weight.to(linear.weight)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features `float[B, L, D]` -> `{name: float[B, size]}` (unnormalised vectors)."""
        x = self.normalize(features)
        if self.config.layer == LAYER_MIX_EACH:
            weights = torch.softmax(self.layer_logits, dim=1)
            return {name: trunk(torch.einsum("l,bld->bd", weights[k], x))
                    for k, (name, trunk) in enumerate(zip(self.config.sizes, self.trunks))}
        if isinstance(self.config.layer, tuple):
            return {name: trunk(x[:, index]) for (name, index), trunk in zip(self.config.layer, self.trunks)}
        if self.config.layer == LAYER_MIX:
            x = torch.einsum("l,bld->bd", torch.softmax(self.layer_logits, dim=0), x)
        else:
            x = x[:, self.config.layer]
        output = self.trunk(x)
        return dict(zip(self.config.sizes, output.split(list(self.config.sizes.values()), dim=1)))

    def _check_features(self, features: torch.Tensor) -> None:
        expected = (self.config.num_layers, self.config.input_dim)
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise ModelError(
                f"features must have shape [batch, {expected[0]} layers, {expected[1]}], got {list(features.shape)}"
            )

    def save(self, folder: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write `config.json` + `model.safetensors` into `folder` (each atomically); return it.

        `metadata` is merged into `self.metadata` before writing.
        """
        from . import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.metadata.update(metadata or {})
        description = {
            "model_type": MODEL_TYPE,
            "architectures": [ARCHITECTURE],
            "architecture": ARCHITECTURE,
            "package": "speech-subspaces",
            "package_version": __version__,
            "subspaces": self.config.sizes,
            "layer": self.config.layer,
            "pooling": self.config.pooling,
            "config": self.config.to_dict(),
            "metadata": self.metadata,
        }
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        write_atomic(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        write_atomic(
            folder / CONFIG_FILE,
            lambda tmp: Path(tmp).write_text(json.dumps(description, indent=2, sort_keys=False) + "\n"),
        )
        return folder

    save_pretrained = save  # the Hugging Face name

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> SubspaceModel:
        """Rebuild a saved model from its folder (safetensors only, nothing unpickled), in eval mode."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ModelError(f"{folder}: not a subspace model folder, {path.name} is missing")
        try:
            description = json.loads(config_path.read_text())
        except ValueError as error:  # not JSON, or not UTF-8 text
            raise ModelError(f"{config_path}: not valid JSON ({error}); save the model again (SubspaceModel.save "
                             "or `subspaces train`)") from error
        if not isinstance(description, dict):
            raise ModelError(f"{config_path}: expected a JSON object (architecture, config, metadata), got "
                             f"{_json_type(description)}; save the model again")
        if description.get("architecture") != ARCHITECTURE:
            raise ModelError(
                f"{config_path}: architecture is {description.get('architecture')!r}, expected {ARCHITECTURE!r}"
            )
        if "config" not in description:
            raise ModelError(f'{config_path}: no "config" (the SubspaceConfig the weights were made with); '
                             "the file is damaged or was not written by SubspaceModel.save: save the model again")
        metadata = description.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ModelError(f'{config_path}: "metadata" must be an object, got {_json_type(metadata)}')
        try:
            config = SubspaceConfig.from_dict(description["config"])
        except ModelError as error:
            raise ModelError(f'{config_path}: "config": {error}') from error
        model = cls(config, metadata=metadata)
        try:
            state = load_file(weights_path, device=str(map_location))
        except SafetensorError as error:
            raise ModelError(
                f"{weights_path}: not a readable safetensors file ({error}); it is damaged or incomplete "
                "(an interrupted copy or download?): copy or save the model again") from error
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ModelError(
                f"{weights_path}: weights do not match config.json (missing {sorted(missing)}, unexpected {sorted(unexpected)})"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as error:  # torch reports shape mismatches this way
            raise ModelError(f"{weights_path}: weights do not match config.json ({error})") from error
        return model.to(map_location).eval()
