"""Training: pooled features of a grid + its factor table -> a saved `SubspaceModel`.

Read top to bottom, `train` does:

1. check the inputs and the recipe (`TrainConfig`, loadable from TOML with `load_recipe`);
2. seed, build the model (input normalisation fitted on the training rows), AdamW and a
   one-cycle learning-rate schedule (the paper: max lr 1e-4, 480 steps, batch 512 as a
   16 x 32 grid block);
3. resume from the newest checkpoint in `out_dir/checkpoints/` when there is one;
4. per step: a grid block from `GridSampler`, the interventional loss, one update; log
   the loss terms to `train_log.csv`;
5. every `val_every` steps: embed the validation rows (held-out voices, split "val") and
   log, for every subspace and every factor, the EER of cosine scores over all pairs, the
   leave-one-out nearest-neighbour accuracy and the contrastive loss (the training loss's
   term, at its temperature and margin, over all validation rows as one batch), to
   `val_log.csv`. The model with the best validation score is saved to `out_dir`;
   training stops early after `patience` validations without improvement;
6. every `checkpoint_every` steps and at the end: an atomic checkpoint (weights,
   optimizer, scheduler, RNG, early-stopping state). A run killed at any moment and
   started again with the same arguments ends at the same weights as an uninterrupted one.

Data-parallel: launched by `torchrun` (or inside an initialised `torch.distributed`
process group), the same loop runs on every rank. Each rank embeds its contiguous share of
every grid block; the shares are all-gathered (with gradient) so that the loss is the
loss of the whole block, with all its negatives, on every rank; DistributedDataParallel
averages the gradients. The result is the single-process training of the same recipe, up
to floating-point summation order. Rank 0 alone validates and writes logs, checkpoints and
the model. For example, on 2 CPU processes (gloo; on GPUs, with `device = "cuda"`, nccl and
one GPU per rank; `SUBSPACES_DIST_BACKEND=gloo` lets processes share a GPU):

    torchrun --standalone --nproc_per_node 2 -m subspaces.cli train --features F --manifest M --out O

**The validation score** (`val_log.csv`'s `score`, lower is better) is, by default
(`select_by = "loss"`), the mean over factors of each factor's contrastive loss in its
own subspace on the validation rows. EER is not used to choose: it only counts which
pairs fall on the wrong side of one threshold, so once the held-out voices are separable
it is 0 at every validation (as it was on the demo's grid) and cannot tell checkpoints
apart; on a few hundred pairs it also moves in coarse steps. The contrastive loss is a
smooth function of every pair's cosine, above 0 for any embedding (cosines are bounded),
so it still ranks checkpoints by how far held-out positives are from their negatives;
and it is the training objective measured on voices and texts training never heard, so
it goes up when training fits the training voices at the expense of new ones. It is not
EER: it can rise while EER still falls (wider margins on some pairs, narrower on others),
and the mean follows whichever factor's loss moves most, so both EERs stay in the log.
Its value depends on how many rows validate: compare it within one run. `select_by =
"eer"` chooses by the mean EER of each factor in its own subspace instead (the rule
before this one; ties keep the earlier step).

The output folder:

    out_dir/config.json, model.safetensors   the model (best on validation, or the last)
    out_dir/recipe.toml                      the recipe, rerunnable with `load_recipe`
    out_dir/train_log.csv, val_log.csv       one row per step / per validation
    out_dir/checkpoints/step-NNNNNN/         the newest checkpoint
    out_dir/UNFINISHED                       while training runs, and after it died midway:
                                             the model there is not the final one

>>> import pandas as pd, tempfile, torch
>>> table = pd.DataFrame([(s, c, "train") for s in "abcd" for c in "wxyz"], columns=["speaker", "content", "split"])
>>> config = TrainConfig(steps=3, block={"speaker": 2, "content": 2}, hidden=(16,), subspaces={"speaker": 4, "content": 4},
...                      val_every=0, checkpoint_every=0)
>>> folder = train(torch.randn(16, 1, 8), table, config, tempfile.mkdtemp())
>>> sorted(p.name for p in folder.iterdir() if p.is_file())
['config.json', 'model.safetensors', 'recipe.toml', 'train_log.csv']
"""

from __future__ import annotations

import csv
import hashlib
import json
import gc
import math
import os
import pickle
import shutil
import tomllib
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .atomic import check_disk_full, write_text_atomic
from .devices import DEVICE_PATTERN, DeviceError, check_device
from .errors import SubspacesError
from .folders import folder_lock, mark_finished, mark_unfinished
from .losses import interventional_loss
from .model import ModelError, SubspaceConfig, SubspaceModel
from .progress import progress_bar
from .sampler import GridSampler

__all__ = ["RECIPES_FOLDER", "TrainConfig", "TrainError", "load_recipe", "recipe_names", "train", "write_recipe"]

# Overrides the process-group backend torchrun's processes join (nccl on GPUs, gloo on CPUs).
BACKEND_VARIABLE = "SUBSPACES_DIST_BACKEND"

SELECTIONS = ("best", "last")
# What "best" is judged by; see the module docstring.
SELECT_BY = ("loss", "eer")
STATE_FILE = "training_state.pt"


class TrainError(SubspacesError, ValueError):
    """A recipe, input table or output folder that training cannot use; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: everything, besides the data, needed to rerun a training.

    Defaults follow the paper (Cox & Barker 2026): speaker and content subspaces of 384,
    MLP 768-768-768(-768 output), tau 0.1, orthogonality weight 1, AdamW + one-cycle with
    max lr 1e-4, 480 steps, batch 512 = 16 voices x 32 texts.

    subspaces: factor column -> size of its subspace (the factor's contrast runs there).
    nuisance: a column (e.g. "channel") all subspaces must be invariant to; "" = none.
    block: column -> values per batch; must name every factor (and the nuisance if any).
    layer: backbone layer index, "mix" (one learned layer mix), "mix-per-subspace" (a
        layer mix and an MLP trunk per subspace) or a layer per subspace
        (`{"speaker": 0, "content": 3}`, an MLP trunk each); pooling: "mean" or "mean+std" (as extracted).
    layer_lr_scale: the layer-mix weights learn at max_lr x this (they need far more
        than the MLP to leave uniform within a few hundred steps).
    select: which weights end in out_dir, "best" on validation or "last".
    select_by: what "best" means: "loss" (the mean validation contrastive loss of each
        factor in its own subspace) or "eer" (the mean validation EER of each factor in
        its own subspace, which saturates at 0 on separable held-out voices).
    patience: validations without improvement before stopping early; 0 = never.
    val_every / checkpoint_every: in steps; 0 = only at the end.
    val_max_items: validation rows scored (a fixed random subset when there are more).
    lda_init: subspace -> shrinkage (0..1): start that subspace as a shrinkage linear
        discriminant analysis of its factor on the training rows (the classic LDA of
        speaker verification, fitted with scikit-learn) instead of at random; the
        contrastive loss then trains on from there. Needs linear trunks (`hidden=()`) and
        a fixed layer. Empty (the paper) = random start.

    `source` (not a recipe key) names where the recipe came from (its file, when
    `load_recipe` or `from_dict` made it), so that errors found only once the features
    are known (a layer index beyond their layers, a GPU that is not there) can name it.

    >>> TrainConfig().batch_size
    512
    """

    source: ClassVar[str] = "recipe"

    # subspaces, residual, layer, pooling, hidden and dropout are the model's own
    # (`SubspaceConfig`, whose defaults they take); `model_config` passes them on.
    subspaces: Mapping[str, int] = field(default_factory=lambda: dict(SubspaceConfig.subspaces))
    nuisance: str = ""
    residual: int = SubspaceConfig.residual
    block: Mapping[str, int] = field(default_factory=lambda: {"speaker": 16, "content": 32})
    train_split: str = "train"
    val_split: str = "val"
    layer: int | str | Mapping[str, int] = SubspaceConfig.layer
    pooling: str = SubspaceConfig.pooling
    hidden: tuple[int, ...] = SubspaceConfig.hidden
    dropout: float = SubspaceConfig.dropout
    temperature: float = 0.1
    margin: float = 0.0
    orthogonality_weight: float = 1.0
    steps: int = 480
    max_lr: float = 1e-4
    layer_lr_scale: float = 1.0
    weight_decay: float = 0.01
    pct_start: float = 0.3
    seed: int = 0
    val_every: int = 60
    val_max_items: int = 1000
    patience: int = 0
    select: str = "best"
    select_by: str = "loss"
    checkpoint_every: int = 60
    tensorboard: bool = False
    device: str = "cpu"
    lda_init: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subspaces", dict(self.subspaces))
        object.__setattr__(self, "block", dict(self.block))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "lda_init", dict(self.lda_init))
        problems = []
        if not self.subspaces or any(not isinstance(v, int) or v < 1 for v in self.subspaces.values()):
            problems.append(f"subspaces must map factor columns to positive sizes, got {self.subspaces}")
        wanted_block = set(self.subspaces) | ({self.nuisance} if self.nuisance else set())
        if set(self.block) != wanted_block:
            problems.append(f"block must give a size for exactly the factors {sorted(wanted_block)}, got {sorted(self.block)}")
        if any(not isinstance(v, int) or v < 2 for v in self.block.values()):
            problems.append(f"block sizes must be integers >= 2, got {self.block}")
        if self.nuisance in self.subspaces:
            problems.append(f"nuisance {self.nuisance!r} cannot also be a factor with a subspace")
        for name in ("steps", "val_max_items"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("residual", "val_every", "checkpoint_every", "patience", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        numbers = ("temperature", "max_lr", "layer_lr_scale", "weight_decay", "orthogonality_weight", "margin",
                   "pct_start", "dropout")
        infinite = [name for name in numbers if not math.isfinite(getattr(self, name))]
        for name in infinite:
            problems.append(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("temperature", "max_lr", "layer_lr_scale"):
            if name not in infinite and not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "orthogonality_weight", "margin"):
            if name not in infinite and getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if "pct_start" not in infinite and not 0 < self.pct_start < 1:
            problems.append(f"pct_start must be in (0, 1), got {self.pct_start}")
        if "dropout" not in infinite and not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if any(not isinstance(v, int) or v < 1 for v in self.hidden):
            problems.append(f"hidden sizes must be integers >= 1, got {list(self.hidden)}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            problems.append(f'device must be "cpu", "cuda" or "cuda:N" (a GPU by index), got {self.device!r}')
        if self.lda_init:
            if set(self.lda_init) - set(self.subspaces):
                problems.append(f"lda_init names {sorted(set(self.lda_init) - set(self.subspaces))}, which are not subspaces {sorted(self.subspaces)}")
            if any(not (math.isfinite(v) and 0 <= v <= 1) for v in self.lda_init.values()):
                problems.append(f"lda_init shrinkages must be in [0, 1], got {self.lda_init}")
            if self.hidden:
                problems.append(f"lda_init needs linear trunks (hidden = []), got hidden = {list(self.hidden)}")
            if isinstance(self.layer, str):
                problems.append(f"lda_init needs a fixed layer (an index or one per subspace), got layer = {self.layer!r}")
        if self.select not in SELECTIONS:
            problems.append(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.select_by not in SELECT_BY:
            problems.append(f"select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if problems:
            raise TrainError("; ".join(problems))

    @property
    def batch_size(self) -> int:
        return math.prod(self.block.values())

    def model_config(self, input_dim: int, num_layers: int) -> SubspaceConfig:
        """The model this recipe trains, for features float[N, num_layers, input_dim]."""
        return SubspaceConfig(input_dim=input_dim, num_layers=num_layers, layer=self.layer, pooling=self.pooling,
                              hidden=self.hidden, subspaces=tuple(self.subspaces.items()), residual=self.residual,
                              dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> TrainConfig:
        """Build from plain data (a parsed TOML recipe), with errors naming `source`.

        >>> TrainConfig.from_dict({"steps": 10}).steps
        10
        """
        valid = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise TrainError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
        for key, value in data.items():
            if not _has_type(value, _FIELD_TYPES[key]):
                raise TrainError(f"{source}: {key} = {value!r} is not {_FIELD_TYPES[key]}")
        try:
            config = cls(**data)
        except (TrainError, ValueError) as error:
            raise TrainError(f"{source}: {error}") from error
        object.__setattr__(config, "source", source)
        return config


# What a recipe value must be, by the field's annotation (TOML has no tuples or None).
_KINDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "tuple[int, ...]": "a list of integers",
    "Mapping[str, int]": "a table of integers",
    "Mapping[str, float]": "a table of numbers",
    "int | str | Mapping[str, int]": 'an integer, "mix", "mix-per-subspace" or a table of integers',
}
_FIELD_TYPES = {f.name: _KINDS[f.type] for f in fields(TrainConfig)}


def _has_type(value: Any, kind: str) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return {
        "a string": lambda: isinstance(value, str),
        "an integer": lambda: is_int(value),
        "a number": lambda: is_int(value) or isinstance(value, float),
        "a boolean": lambda: isinstance(value, bool),
        "a list of integers": lambda: isinstance(value, (list, tuple)) and all(is_int(v) for v in value),
        "a table of integers": lambda: isinstance(value, Mapping) and all(is_int(v) for v in value.values()),
        "a table of numbers": lambda: isinstance(value, Mapping) and all(
            is_int(v) or isinstance(v, float) for v in value.values()),
        'an integer, "mix", "mix-per-subspace" or a table of integers': lambda: (
            is_int(value) or value in ("mix", "mix-per-subspace")
            or (isinstance(value, Mapping) and all(is_int(v) for v in value.values()))),
    }[kind]()


# Recipes shipped with the package, loadable by name (`load_recipe("demo")`, `train --recipe demo`).
RECIPES_FOLDER = Path(__file__).parent / "data" / "recipes"


def recipe_names() -> list[str]:
    """The names of the shipped recipes ("demo", "paper", ...)."""
    return sorted(p.stem for p in RECIPES_FOLDER.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> TrainConfig:
    """Read a TOML recipe, a shipped one by name ("demo": the demo's training, chosen on
    the dev suite; "paper": Cox & Barker's setup) or any file; unknown keys and bad values
    raise `TrainError` naming the file.

    >>> load_recipe("demo").layer
    {'speaker': 0, 'content': 4}
    >>> import tempfile
    >>> recipe = Path(tempfile.mkdtemp()) / "recipe.toml"
    >>> _ = recipe.write_text('steps = 100\\n[block]\\nspeaker = 8\\ncontent = 8\\n')
    >>> load_recipe(recipe).batch_size
    64
    """
    path = Path(name_or_path)
    if str(name_or_path) in recipe_names() and not path.exists():
        path = RECIPES_FOLDER / f"{name_or_path}.toml"
    elif not path.exists() and path.suffix != ".toml":
        raise TrainError(f"{path}: no such recipe file, and not a shipped recipe ({', '.join(recipe_names())})")
    if path.is_dir():
        raise TrainError(f"{path}: is a folder (a directory), not a recipe file; name a TOML recipe file")
    if not path.is_file():
        raise TrainError(f"{path}: no such recipe file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise TrainError(f"{path}: not valid TOML ({error})") from error
    return TrainConfig.from_dict(data, source=str(path))


def write_recipe(config: TrainConfig, path: str | Path) -> None:
    """Write `config` as a TOML recipe that `load_recipe` reads back equal (atomically)."""
    scalars, tables = [], []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]\n" + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in value.items()))
        else:
            scalars.append(f"{key} = {_toml_value(value)}\n")
    write_text_atomic(Path(path), "".join(scalars) + "".join(tables))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TrainError(f"cannot write {value!r} to TOML")


def train(
    features: torch.Tensor,
    table: pd.DataFrame,
    config: TrainConfig,
    out_dir: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Train a `SubspaceModel` and return `out_dir`, the saved model's folder.

    features: `float[N, L, D]` pooled features (L backbone layers).
    table: N rows in the same order, with a column per factor of `config.subspaces`, the
        nuisance column if any, and `split` (rows of `config.train_split` train; rows of
        `config.val_split`, e.g. held-out voices, validate; other rows are ignored).
    metadata: saved with the model (e.g. `{"backbone": "whisper-base", "revision": ...}`).
    Running again on a folder with a checkpoint resumes from it (same data and recipe
    required); on a finished folder it returns at once.

    While it runs, `out_dir` is locked against a second writer (`folders.folder_lock`)
    and marked unfinished (`folders.mark_unfinished`, cleared once the final model is
    saved), so a model folder of a run that died midway does not pass for finished.

    Data-parallel when a `torch.distributed` process group is initialised, or when the
    environment says `torchrun` started this process with WORLD_SIZE > 1 (then a group is
    made here, nccl for a cuda `config.device`, else gloo, and destroyed at the end). Every
    rank must get the same arguments; `out_dir` must be one folder that all ranks see.
    """
    _check_device(config)
    own_group = _join_torchrun_group(config)
    try:
        with ExitStack() as locks:
            return _train(features, table, config, Path(out_dir), metadata, locks)
    finally:
        if own_group:
            # Free DistributedDataParallel's reducer (held in reference cycles) while the
            # group still exists: tearing gloo down under a live reducer aborts the process
            # ("terminate called without an active exception").
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


def _train(
    features: torch.Tensor, table: pd.DataFrame, config: TrainConfig, out_dir: Path, metadata: Mapping[str, Any] | None,
    locks: ExitStack,
) -> Path:
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    writer = rank == 0  # the one rank that validates and writes files
    device = torch.device(config.device)
    if world_size > 1 and device.type == "cuda":
        # One GPU per process on each machine; more processes than GPUs share them (gloo only).
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())

    # 1. inputs
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or not features.is_floating_point():
        raise TrainError(f"features must be a float tensor [N, layers, dim], got {getattr(features, 'shape', type(features))}")
    if len(table) != features.shape[0]:
        raise TrainError(f"table has {len(table)} rows but features have {features.shape[0]}; they must match row for row")
    factor_names = list(config.subspaces)
    columns = factor_names + ([config.nuisance] if config.nuisance else []) + ["split"]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TrainError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    split = table["split"].astype(str).to_numpy()
    train_rows = np.flatnonzero(split == config.train_split)
    val_rows = np.flatnonzero(split == config.val_split)
    if len(train_rows) < 4:
        raise TrainError(f"only {len(train_rows)} row(s) have split {config.train_split!r}; splits present: {sorted(set(split))}")
    if not len(val_rows) and config.patience:
        raise TrainError(f"patience = {config.patience} needs validation rows, but no row has split {config.val_split!r}")
    codes = {name: torch.from_numpy(pd.factorize(table[name].astype(str), sort=True)[0]) for name in columns[:-1]}
    if len(val_rows):
        val_rows = np.sort(np.random.default_rng(config.seed).permutation(val_rows)[: config.val_max_items])
        for name in factor_names:
            counts = pd.Series(codes[name][val_rows].numpy()).value_counts()
            if len(counts) < 2 or counts.max() < 2:
                raise TrainError(
                    f"validation rows ({config.val_split!r}) need at least 2 values of {name!r} and repeats of one, "
                    f"got {len(counts)} value(s) with at most {counts.max()} row(s) each"
                )
    fingerprint = _fingerprint(features, table[columns])
    sampler = GridSampler(table.iloc[train_rows].reset_index(drop=True), config.block, seed=config.seed)

    # 2. model, optimizer, schedule
    torch.manual_seed(config.seed)
    try:
        model_config = config.model_config(features.shape[2], features.shape[1])
    except ModelError as error:  # e.g. a layer index beyond the features' layers
        raise TrainError(f"{config.source}: {error}") from error
    model = SubspaceModel(model_config, metadata={**(metadata or {})})
    model.fit_normalization(features[train_rows])
    for name, shrinkage in config.lda_init.items():
        model.set_projection(name, _lda_projection(model, features[train_rows], codes[name][train_rows], name, shrinkage))
    model.to(device).train()
    step_model = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    # The layer-mix logits get their own learning rate: at the paper's 1e-4 for 480 steps
    # they barely move from uniform (measured: every weight stayed within 0.001 of 1/7).
    mix = [p for name, p in model.named_parameters() if name == "layer_logits"]
    rest = [p for name, p in model.named_parameters() if name != "layer_logits"]
    groups = [{"params": rest, "lr": config.max_lr}]
    if mix:
        groups.append({"params": mix, "lr": config.max_lr * config.layer_lr_scale, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.max_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in groups], total_steps=config.steps, pct_start=config.pct_start
    )
    state = {"step": 0, "best_score": math.inf, "best_step": -1, "bad_validations": 0, "finished": False}

    # 3. lock out_dir (the writer holds it until train returns), then resume (every rank
    # reads the checkpoint; rank 0 writes nothing until all ranks have joined the first
    # step's collectives, so none reads a half-replaced folder)
    _lock_out_dir(out_dir, locks, rank, world_size)
    checkpoint = _newest_checkpoint(out_dir)
    if checkpoint is not None:
        saved = _load_state(checkpoint)
        if saved["recipe"] != config.to_dict() or saved["data"] != fingerprint:
            raise TrainError(
                f"{out_dir} holds a checkpoint ({checkpoint.name}) of a different recipe or different data; "
                "use a new out_dir, or delete that folder to start over"
            )
        model.load_state_dict(SubspaceModel.load(checkpoint).state_dict())
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["progress"]
        if state["finished"]:
            if writer:
                mark_finished(out_dir)  # in case the run was killed between its last checkpoint and the mark
            return out_dir
    if writer:
        # Before the first write: from here until the final model, out_dir is not a finished model.
        mark_unfinished(out_dir, f"training, step {state['step']} of {config.steps}")
        if checkpoint is None:
            write_recipe(config, out_dir / "recipe.toml")
    if rank:
        # Ranks draw their own dropout masks: a stream per (seed, rank, step resumed at).
        torch.manual_seed(int(np.random.SeedSequence([config.seed, rank, state["step"]]).generate_state(1)[0]))
    term_names = _term_names(config)
    val_names = [f"{s}/{f}_{m}" for s in model.config.sizes for f in factor_names for m in ("eer", "nn_accuracy", "loss")]
    train_log = _CsvLog(out_dir / "train_log.csv", ["step", "lr", "loss", *term_names], state["step"]) if writer else None
    validating = len(val_rows) > 0
    val_log = _CsvLog(out_dir / "val_log.csv", ["step", "score", *val_names], state["step"]) if validating and writer else None
    board = _tensorboard(out_dir) if config.tensorboard and writer else None

    def model_metadata(step: int, scores: dict[str, float] | None) -> dict[str, Any]:
        return {"training": {"recipe": config.to_dict(), "data": fingerprint, "step": step, "validation": scores}}

    # 4-6. the loop
    progress = progress_bar(total=config.steps, initial=state["step"], desc="train", enabled=writer)
    while state["step"] < config.steps and not state["finished"]:
        rows = torch.from_numpy(train_rows[sampler.batch(state["step"])])
        if world_size == 1:
            outputs = step_model(features[rows].to(device))
        else:
            outputs = _embed_shared(step_model, features, rows, rank, world_size, device)
        batch_factors = {name: codes[name][rows].to(device) for name in factor_names}
        nuisance = codes[config.nuisance][rows].to(device) if config.nuisance else None
        loss, terms = interventional_loss(
            outputs, batch_factors, nuisance=nuisance, temperature=config.temperature, margin=config.margin,
            orthogonality_weight=config.orthogonality_weight,
        )
        if not torch.isfinite(loss):
            raise TrainError(f"the loss became {loss.item()} at step {state['step']}; lower max_lr or check the features")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        step = state["step"]
        if train_log is not None:
            train_log.write([step, lr, loss.item(), *(terms[name].item() for name in term_names)])
        if board is not None:
            board.add_scalar("train/loss", loss.item(), step)
            for name in term_names:
                board.add_scalar(f"train/{name}", terms[name].item(), step)
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}")

        at_end = step == config.steps
        validate_now = validating and (at_end or (config.val_every and step % config.val_every == 0))
        if validate_now and val_log is not None:
            scores = _validate(model, features[val_rows], {n: codes[n][val_rows] for n in factor_names}, device,
                               temperature=config.temperature, margin=config.margin)
            score = float(np.mean([scores[f"{name}/{name}_{config.select_by}"] for name in factor_names]))
            val_log.write([step, score, *(scores[name] for name in val_names)])
            if board is not None:
                for name, value in scores.items():
                    board.add_scalar(f"val/{name}", value, step)
            if score < state["best_score"]:
                state.update(best_score=score, best_step=step, bad_validations=0)
                if config.select == "best":
                    model.save(out_dir, metadata=model_metadata(step, scores))
            else:
                state["bad_validations"] += 1
                if config.patience and state["bad_validations"] >= config.patience:
                    state["finished"] = True
        if validate_now and world_size > 1:
            # Only rank 0 validated: every rank takes its early-stopping state, so all stop together.
            shared = [state]
            dist.broadcast_object_list(shared, src=0)
            state = shared[0]
        if at_end:
            state["finished"] = True
        if writer and state["finished"] and (config.select == "last" or not validating):
            model.save(out_dir, metadata=model_metadata(step, None))
        if writer and (state["finished"] or (config.checkpoint_every and step % config.checkpoint_every == 0)):
            _save_checkpoint(out_dir, model, optimizer, scheduler, state, config, fingerprint, model_metadata(step, None))
            if not state["finished"]:
                mark_unfinished(out_dir, f"training, step {step} of {config.steps}")
    progress.close()
    if board is not None:
        board.close()
    if writer:
        mark_finished(out_dir)  # the final model and checkpoint are saved
    if world_size > 1:
        dist.barrier()  # every rank returns once rank 0 has written the model
    return out_dir


def _check_device(config: TrainConfig) -> None:
    """Refuse a CUDA `config.device` this machine does not have, naming the recipe."""
    try:
        check_device(config.device, f"{config.source}: device =")
    except DeviceError as error:
        raise TrainError(str(error)) from None


def _join_torchrun_group(config: TrainConfig) -> bool:
    """Initialise the process group `torchrun` asked for (WORLD_SIZE > 1, no group yet);
    return whether one was made here (and so is to be destroyed here)."""
    if _distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise TrainError(f"WORLD_SIZE = {os.environ['WORLD_SIZE']} but this torch build has no torch.distributed")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise TrainError(
            f"WORLD_SIZE = {os.environ['WORLD_SIZE']} but {missing} not set: launch with torchrun "
            "(e.g. torchrun --standalone --nproc_per_node 2 ...) or unset WORLD_SIZE for one process"
        )
    cuda = torch.device(config.device).type == "cuda"
    backend = os.environ.get(BACKEND_VARIABLE, "").strip() or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise TrainError(f"{BACKEND_VARIABLE}={backend!r}: expected nccl or gloo (or unset it)")
    if backend == "nccl" and not cuda:
        raise TrainError(f"{BACKEND_VARIABLE}=nccl needs device = \"cuda\" in the recipe (nccl runs on GPUs only)")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if backend == "nccl" and per_node > torch.cuda.device_count():
        raise TrainError(
            f"nccl needs one GPU per process, but torchrun started {per_node} processes on this machine and it "
            f"has {torch.cuda.device_count()} GPU(s): use --nproc_per_node {torch.cuda.device_count()}, or "
            f"{BACKEND_VARIABLE}=gloo to share a GPU between processes (slower; for checks)"
        )
    dist.init_process_group(backend)
    return True


def _lock_out_dir(out_dir: Path, locks: ExitStack, rank: int, world_size: int) -> None:
    """Take `out_dir`'s write lock on the writing rank (held until `locks` closes); every
    rank raises if it could not be taken, so that none waits in a collective for rank 0."""
    refused: Exception | None = None
    if rank == 0:
        try:
            locks.enter_context(folder_lock(out_dir, "a training run"))
        except (SubspacesError, OSError) as error:
            refused = error
    if world_size > 1:
        message = [None if refused is None else str(refused)]
        dist.broadcast_object_list(message, src=0)
        if rank and message[0] is not None:
            raise TrainError(f"rank 0 could not lock {out_dir}: {message[0]}")
    if refused is not None:
        raise refused


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _embed_shared(
    model: torch.nn.Module, features: torch.Tensor, rows: torch.Tensor, rank: int, world_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Embed this rank's share of the batch `rows` (`long[B]`) and all-gather the shares:
    `{name: float[B, size]}`, the whole batch in its own order, on every rank.

    Rank r embeds `rows[r * share : (r + 1) * share]`, `share = ceil(B / world_size)`; a
    short or empty share is padded with row `rows[0]` so that all shares have one shape, and
    the padding, which lies after the last real row once gathered, is cut off.
    """
    share = -(-len(rows) // world_size)
    own = rows[rank * share : (rank + 1) * share]
    own = torch.cat([own, rows[:1].expand(share - len(own))])
    outputs = model(features[own].to(device))
    return {name: _GatherWithGradient.apply(value)[: len(rows)] for name, value in outputs.items()}


class _GatherWithGradient(torch.autograd.Function):
    """All-gather `float[share, E]` from every rank into `float[world_size * share, E]`
    (rank order), differentiably: the backward hands each rank the gradient of its own rows
    summed over ranks. Every rank computes the same loss, so that sum is world_size times
    the loss's gradient for those rows, and DDP's average over ranks brings it back to 1x.
    (A plain all-reduce in the backward: the embeddings are small, and it works on every
    backend, where a reduce-scatter does not on gloo.)"""

    @staticmethod
    def forward(ctx: Any, share: torch.Tensor) -> torch.Tensor:
        shares = [torch.empty_like(share) for _ in range(dist.get_world_size())]
        dist.all_gather(shares, share.contiguous())
        return torch.cat(shares)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous()
        dist.all_reduce(gradient)
        return gradient.chunk(dist.get_world_size())[dist.get_rank()]


def _term_names(config: TrainConfig) -> list[str]:
    names = list(config.subspaces) + (["residual"] if config.residual else [])
    contrasted = list(config.subspaces) + (["residual"] if config.residual and config.nuisance else [])
    pairs = [f"orthogonality/{a}-{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
    return [f"contrastive/{name}" for name in contrasted] + pairs


@torch.no_grad()
def _validate(
    model: SubspaceModel, features: torch.Tensor, factors: dict[str, torch.Tensor], device: torch.device, *,
    temperature: float, margin: float = 0.0,
) -> dict[str, float]:
    """For every subspace and factor (`{factor: long[N]}` codes of the N rows of
    `features`): pairwise cosine EER, leave-one-out 1-NN accuracy, and the contrastive
    loss with that factor's positives over all N rows as one batch (`SUBSPACE/FACTOR_eer`,
    `_nn_accuracy`, `_loss`)."""
    from .losses import same_value, supervised_contrastive_loss
    from .metrics import eer

    model.eval()
    chunks = [model(chunk.to(device)) for chunk in features.split(1024)]
    model.train()
    upper = torch.triu_indices(features.shape[0], features.shape[0], offset=1)
    scores: dict[str, float] = {}
    for name in model.config.sizes:
        vectors = torch.nn.functional.normalize(torch.cat([c[name] for c in chunks]).float().cpu(), dim=1)
        cosine = vectors @ vectors.T
        pair_scores = cosine[upper[0], upper[1]].numpy()
        nearest = cosine.fill_diagonal_(-math.inf).argmax(dim=1)
        for factor, values in factors.items():
            same = (values[upper[0]] == values[upper[1]]).numpy()
            scores[f"{name}/{factor}_eer"] = eer(pair_scores, same)
            scores[f"{name}/{factor}_nn_accuracy"] = (values[nearest] == values).float().mean().item()
            scores[f"{name}/{factor}_loss"] = supervised_contrastive_loss(
                vectors, same_value(values), temperature, margin).item()
    return scores


def _lda_projection(model: SubspaceModel, features: torch.Tensor, labels: torch.Tensor, name: str, shrinkage: float) -> torch.Tensor:
    """`float[k, D]`: the leading shrinkage-LDA directions of factor `name` in the model's
    normalised input at the subspace's layer, k = min(classes - 1, subspace size).

    The eigen solver's directions whiten the pooled within-class covariance, so cosine
    scoring in the projection is the usual LDA + cosine back-end.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    classes = int(labels.unique().numel())
    if classes < 2:
        raise TrainError(f"lda_init for {name!r} needs at least 2 values of {name!r} in the training rows, got {classes}")
    with torch.no_grad():
        x = model.normalize(features)[:, model.input_layer(name)].double().numpy()
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(x, labels.numpy())
    k = min(classes - 1, model.config.sizes[name], x.shape[1])
    return torch.from_numpy(lda.scalings_[:, :k].T.copy()).float()


def _fingerprint(features: torch.Tensor, columns: pd.DataFrame) -> str:
    """sha256 of the feature values and the factor/split columns: a resume must see the same data."""
    digest = hashlib.sha256()
    digest.update(str(tuple(features.shape)).encode())
    digest.update(features.detach().cpu().contiguous().float().numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(columns.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _newest_checkpoint(out_dir: Path) -> Path | None:
    folder = out_dir / "checkpoints"
    complete = sorted(p for p in folder.glob("step-*") if p.is_dir() and p.name[5:].isdigit()) if folder.is_dir() else []
    return complete[-1] if complete else None


def _load_state(checkpoint: Path) -> dict[str, Any]:
    """The training state saved with `checkpoint` (tensors and plain data only: a pickle
    that would run code is refused, never executed)."""
    path = checkpoint / STATE_FILE
    advice = f"delete the checkpoint folder {checkpoint} and rerun (training restarts from the start)"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path}: missing from its checkpoint folder; {advice}") from None
    except pickle.UnpicklingError as error:
        raise TrainError(
            f"{path}: not a training state: it holds objects other than tensors and plain data, or is damaged "
            f"(refused, nothing in it was run); {advice}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainError(f"{path}: not a readable training state ({first[:200]}); {advice}") from error
    wanted = ("optimizer", "scheduler", "torch_rng", "progress", "recipe", "data")
    if not isinstance(saved, dict) or any(key not in saved for key in wanted):
        raise TrainError(f"{path}: not a training state of this package (it lacks {list(wanted)}); {advice}")
    return saved


def _save_checkpoint(
    out_dir: Path,
    model: SubspaceModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    config: TrainConfig,
    fingerprint: str,
    metadata: dict[str, Any],
) -> None:
    """Write `checkpoints/step-NNNNNN/` complete under a temporary name, rename it, drop older ones.

    A folder named `step-NNNNNN` is therefore always complete; a kill mid-write leaves
    only a `.tmp-` folder, which the next save removes.
    """
    folder = out_dir / "checkpoints"
    final = folder / f"step-{state['step']:06d}"
    tmp = folder / f".tmp-step-{state['step']:06d}"
    try:
        folder.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save(tmp, metadata=metadata)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "progress": dict(state),
                "recipe": config.to_dict(),
                "data": fingerprint,
            },
            tmp / STATE_FILE,
        )
    except BaseException as error:
        # A half-written checkpoint would only hold the disk full; the older one stays.
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, Exception):
            check_disk_full(error, final)  # torch.save says only "unexpected pos" on a full disk
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for older in folder.iterdir():
        if older != final:
            shutil.rmtree(older, ignore_errors=True)


class _CsvLog:
    """An append-only CSV log; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, header: list[str], resume_step: int):
        self.path = path
        kept: list[list[str]] = []
        if resume_step and path.is_file():
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle))
            if rows and rows[0] == header:
                kept = [row for row in rows[1:] if row and int(row[0]) <= resume_step]
        write_text_atomic(path, _csv_text([header, *kept]))

    def write(self, row: list[Any]) -> None:
        try:
            with self.path.open("a", newline="") as handle:
                csv.writer(handle).writerow(row)
        except OSError as error:
            check_disk_full(error, self.path)
            raise


def _csv_text(rows: list[list[Any]]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _tensorboard(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise TrainError("tensorboard = true needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter(str(out_dir / "tensorboard"))
