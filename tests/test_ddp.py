"""Data-parallel training: 2 gloo processes under torchrun against 1 process on the same batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_train import planted_grid

from subspaces.training import TrainConfig, TrainError, train, write_recipe

TESTS = Path(__file__).resolve().parent

# Every rank gets the same arguments, as a user's torchrun command line would give them.
# "train": train() makes the process group itself from torchrun's environment.
# "gradient": in a group made by the caller, one step's parameter gradients (rank 0 saves them).
WORKER = r"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_train import planted_grid
from subspaces.training import load_recipe, train
features, table = planted_grid(speakers=10, texts=12, dim=16, layers=2, val_speakers=3)
mode, recipe, out = sys.argv[1:]
if mode == "train":
    train(features, table, load_recipe(recipe), out)
else:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from test_ddp import one_step_gradients
    dist.init_process_group("gloo")
    gradients = one_step_gradients(features, table, lambda model: DistributedDataParallel(model))
    if dist.get_rank() == 0:
        torch.save(gradients, out)
    import gc
    gc.collect()  # free DDP's reducer while the group is alive, or gloo's teardown can abort
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()
"""

# 3 x 5 = 15 rows per block: odd, so rank 1 embeds 7 rows plus one padding row. A layer mix
# (2 layers) so that the layer weights' gradients cross ranks too; validation every 2 steps
# and checkpoints every 3 exercise rank 0's writing while rank 1 waits for it.
CONFIG = TrainConfig(hidden=(32,), subspaces={"speaker": 8, "content": 8}, block={"speaker": 3, "content": 5},
                     max_lr=3e-3, steps=6, val_every=2, checkpoint_every=3, select="last", layer="mix")


def one_step_gradients(features: torch.Tensor, table: pd.DataFrame, wrap=lambda model: model) -> dict[str, torch.Tensor]:
    """Gradients of the loss of the first block of CONFIG, on one process or (wrapped in
    DDP, inside a process group) on this rank's share of it, as `train` computes them."""
    from subspaces.losses import interventional_loss
    from subspaces.model import SubspaceConfig, SubspaceModel
    from subspaces.sampler import GridSampler
    from subspaces.training import _embed_shared

    torch.manual_seed(0)
    model = SubspaceModel(SubspaceConfig(input_dim=features.shape[2], num_layers=features.shape[1], layer="mix",
                                         hidden=CONFIG.hidden, subspaces=tuple(CONFIG.subspaces.items())))
    model.fit_normalization(features)
    step_model = wrap(model)
    rows = torch.from_numpy(GridSampler(table, CONFIG.block, seed=0).batch(0))
    if torch.distributed.is_initialized():
        world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        outputs = _embed_shared(step_model, features, rows, rank, world_size, torch.device("cpu"))
    else:
        outputs = step_model(features[rows])
    codes = {name: torch.from_numpy(pd.factorize(table[name], sort=True)[0])[rows] for name in CONFIG.subspaces}
    loss, _ = interventional_loss(outputs, codes)
    loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def launch_two_ranks(tmp_path: Path, *arguments: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("{tests!r}", repr(str(TESTS))))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *arguments],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_gloo_ranks_train_like_one_process_on_the_global_batch(tmp_path):
    recipe, parallel = tmp_path / "recipe.toml", tmp_path / "parallel"
    write_recipe(CONFIG, recipe)
    launch_two_ranks(tmp_path, "train", str(recipe), str(parallel))

    features, table = planted_grid(speakers=10, texts=12, dim=16, layers=2, val_speakers=3)
    single = train(features, table, CONFIG, tmp_path / "single")

    # (a) rank 0 wrote the same folder a single process writes, once
    def files(folder: Path) -> list[str]:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    assert files(parallel) == files(single)
    assert "model.safetensors" in files(parallel) and "checkpoints/step-000006/training_state.pt" in files(parallel)
    assert len(pd.read_csv(parallel / "train_log.csv")) == CONFIG.steps  # one writer: no duplicated rows

    # (b) the same maths: loss of every step on the global batch, validation, final weights.
    # Only the summation order differs (each rank's half of the batch, then the gradient
    # all-reduce), which moves float32 results by ~1e-7 relative per step; Adam's update
    # divides by sqrt(v), so these stay ~1e-6 after 6 steps. 1e-5 is the brief's target.
    logs = {name: (pd.read_csv(parallel / name), pd.read_csv(single / name)) for name in ("train_log.csv", "val_log.csv")}
    for name, (got, expected) in logs.items():
        assert list(got.columns) == list(expected.columns) and got["step"].tolist() == expected["step"].tolist()
        assert torch.allclose(torch.tensor(got.to_numpy()), torch.tensor(expected.to_numpy()), rtol=1e-5, atol=1e-7), name
    assert logs["val_log.csv"][0]["step"].tolist() == [2, 4, 6]
    got, expected = load_file(parallel / "model.safetensors"), load_file(single / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-6), (
            f"{name}: max difference {(got[name] - expected[name]).abs().max().item():.2e}"
        )


def test_two_ranks_give_the_single_process_gradient_not_a_multiple_of_it(tmp_path):
    # AdamW barely notices a gradient scaled by world_size, so the weights above cannot
    # tell; here the gradient itself must match (same summation-order tolerance).
    launch_two_ranks(tmp_path, "gradient", "-", str(tmp_path / "gradients.pt"))
    features, table = planted_grid(speakers=10, texts=12, dim=16, layers=2, val_speakers=3)
    expected = one_step_gradients(features, table)
    got = torch.load(tmp_path / "gradients.pt", weights_only=True)
    assert got.keys() == expected.keys()
    for name in expected:
        scale = expected[name].abs().max().item()
        assert scale > 0 and torch.allclose(got[name], expected[name], rtol=1e-5, atol=1e-6 * scale), name


def test_world_size_without_torchrun_says_how_to_launch(tmp_path, monkeypatch):
    features, table = planted_grid(speakers=4, texts=4, dim=8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = TrainConfig(hidden=(8,), subspaces={"speaker": 4, "content": 4}, block={"speaker": 2, "content": 2}, steps=1)
    with pytest.raises(TrainError, match=r"WORLD_SIZE = 2 but \['RANK', 'MASTER_ADDR', 'MASTER_PORT'\] not set: launch with torchrun"):
        train(features, table, config, tmp_path / "run")


@pytest.fixture
def torchrun_environment(monkeypatch):
    """What torchrun sets for rank 0 of 2 processes on one machine (no group is made:
    every case below is refused before `init_process_group`)."""
    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)


def test_nccl_with_more_processes_than_gpus_is_refused_naming_the_counts(torchrun_environment, monkeypatch):
    from subspaces import training

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TrainError, match=r"nccl needs one GPU per process, but torchrun started 2 processes on "
                                         r"this machine and it has 1 GPU\(s\).*SUBSPACES_DIST_BACKEND=gloo"):
        training._join_torchrun_group(TrainConfig(device="cuda"))
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("backend, device, message", [
    ("nccl", "cpu", r'SUBSPACES_DIST_BACKEND=nccl needs device = "cuda"'),
    ("mpi", "cpu", r"SUBSPACES_DIST_BACKEND='mpi': expected nccl or gloo"),
])
def test_the_backend_override_is_checked(torchrun_environment, monkeypatch, backend, device, message):
    from subspaces import training

    monkeypatch.setenv("SUBSPACES_DIST_BACKEND", backend)
    with pytest.raises(TrainError, match=message):
        training._join_torchrun_group(TrainConfig(device=device))
    assert not torch.distributed.is_initialized()
