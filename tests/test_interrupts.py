"""Ctrl-C on every long stage of the command line (issue 19): "Ctrl-C cancels queued work
within 2 s and exits 130 with finished work kept."

Each test runs one verb through `subspaces.cli.main` in a child process whose work is
slowed down deterministically (`RUNNER`: a sleep in every backbone batch, training step
or Resemblyzer clip). A thread in that process waits until the stage has reached a known
point (a file the stage writes appears, or the first slowed call starts), waits a little,
and sends the process SIGINT, as Ctrl-C in a terminal does. The tests then check:

- the exit code is 130 and stderr says that finished work is kept;
- `main` returned within 1 s of the signal (the slowed step is 0.2 s: the signal may land
  on another thread, and the main thread then sees it when its sleep ends), and the
  process was gone less than 2 s after it, the rule (the clock is CLOCK_MONOTONIC, shared
  by both processes). Most of the second interval is the interpreter's own teardown after
  `main` returns (about 1.2 s on a busy 2-core machine once torch and transformers are
  loaded), not the stage's;
- the output folder holds no temporary file, partial checkpoint or `.lock`;
- the work finished before the signal is on disk, and a rerun of the same command, not
  slowed, exits 0, finishes the output, and does not redo the kept work.

The point each signal is sent at is chosen so that the next unit of work cannot have
finished yet (the sleeps alone outlast the delay), so which files exist after the
interrupt does not depend on the machine's speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tone_corpus
from safetensors.torch import load_file
from test_bad_inputs import RECIPE, runner_env, toml_text

from subspaces.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# Sleep per slowed call (a backbone batch, a training step, a Resemblyzer clip).
SLOW_S = 0.2
# The rule under test: from Ctrl-C to the process gone.
EXIT_WITHIN_S = 2.0
# From Ctrl-C to `main` returning 130: the stage stops at its next step (5 x SLOW_S).
STOP_WITHIN_S = 1.0
INTERRUPTED = "interrupted; finished work is kept, rerun to continue"

# Runs `subspaces.cli.main(argv)` with one function slowed (SLOW: encode, batch or
# resemblyzer; SLOW_S seconds per call) and sends itself SIGINT DELAY_S seconds after
# AFTER (a path) exists, or, without AFTER, after the first slowed call has started.
# Writes the time of the signal and of main's return (time.monotonic) to STAMPS.
RUNNER = r"""
import json, os, signal, sys, threading, time
import torch
torch.set_num_threads(1)
slow, seconds = os.environ["SLOW"], float(os.environ["SLOW_S"])
first_call = threading.Event()

def slowed(function):
    def wrapper(*args, **kwargs):
        first_call.set()
        time.sleep(seconds)
        return function(*args, **kwargs)
    return wrapper

if slow == "encode":
    import subspaces.backbones as backbones
    backbones.Backbone.encode = slowed(backbones.Backbone.encode)
elif slow == "batch":
    import subspaces.sampler as sampler
    sampler.GridSampler.batch = slowed(sampler.GridSampler.batch)
elif slow == "resemblyzer":
    import resemblyzer
    resemblyzer.preprocess_wav = slowed(resemblyzer.preprocess_wav)
else:
    raise SystemExit(f"SLOW={slow!r}?")
stamps = {}

def interrupt():
    after = os.environ.get("AFTER")
    while not (os.path.exists(after) if after else first_call.is_set()):
        time.sleep(0.01)
    time.sleep(float(os.environ["DELAY_S"]))
    stamps["sigint"] = time.monotonic()
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
from subspaces.cli import main
code = main(sys.argv[1:])
stamps["returned"] = time.monotonic()
with open(os.environ["STAMPS"], "w") as handle:
    json.dump(stamps, handle)
sys.exit(code)
"""


@dataclass
class Interrupted:
    code: int
    stderr: str
    main_returned_s: float  # from SIGINT to main's return
    exited_s: float         # from SIGINT to the process gone


def interrupt(name: str, argv: list[str], slow: str, tmp: Path, *, after: Path | None = None,
              delay_s: float) -> Interrupted:
    """Run `argv` in a child process slowed at `slow`, Ctrl-C it as `RUNNER` says, wait for it."""
    stamps = tmp / f"{name}.stamps.json"
    env = runner_env(SLOW=slow, SLOW_S=str(SLOW_S), DELAY_S=str(delay_s), STAMPS=str(stamps),
                     **({"AFTER": str(after)} if after else {}))
    done = subprocess.run([sys.executable, "-c", RUNNER, *argv], env=env, capture_output=True, text=True,
                          timeout=120)
    exited = time.monotonic()
    assert stamps.is_file(), f"exit {done.returncode}, main never returned:\n{done.stderr[-3000:]}"
    times = json.loads(stamps.read_text())
    assert "sigint" in times, f"exit {done.returncode}: the work ended before Ctrl-C was sent:\n{done.stderr[-3000:]}"
    run = Interrupted(done.returncode, done.stderr, times["returned"] - times["sigint"], exited - times["sigint"])
    # Shown with pytest -s: what the report of these tests quotes.
    print(f"{name}: SIGINT -> main returned {run.main_returned_s:.3f} s, -> process exited {run.exited_s:.3f} s")
    return run


def check_interrupted(run: Interrupted) -> None:
    """Exit 130, saying so, within EXIT_WITHIN_S of the signal, and no traceback."""
    assert run.code == 130, f"exit {run.code}, expected 130:\n{run.stderr[-3000:]}"
    assert INTERRUPTED in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.main_returned_s < STOP_WITHIN_S, f"main returned {run.main_returned_s:.2f} s after Ctrl-C"
    assert run.exited_s < EXIT_WITHIN_S, (f"the process ran {run.exited_s:.2f} s after Ctrl-C "
                                          f"(main returned after {run.main_returned_s:.2f} s)")


def leftovers(folder: Path) -> list[str]:
    """What an interrupted stage must not leave anywhere under `folder`: the lock file,
    temporary files (`.NAME.XXXX.tmp`), temporary checkpoint folders (`.tmp-step-N`),
    partial files; every name that starts with a dot or ends in .tmp / .partial."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".") or p.name.endswith((".tmp", ".partial")))


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    """(inode, mtime in ns, bytes): a file rewritten by a later run differs in one of them,
    even when its bytes come out the same."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, path.read_bytes()


def quiet_main(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


# ----------------------------------------------------------------------------------
# What the tests run on (built once for this module)
# ----------------------------------------------------------------------------------

# 1500 rows of 0.3 s: two shards (extract's shard size is 1000, not a CLI option), the
# first of 10 batches of 100 clips (30 s of padded audio per batch), the second of 5.
BIG_ROWS = 1500
# The interrupted training: checkpoints at steps 5, 10, ...; 30 steps in all.
TRAIN_RECIPE = RECIPE | {"steps": 30, "val_every": 10, "checkpoint_every": 5}
CHECKPOINT_EVERY = TRAIN_RECIPE["checkpoint_every"]


@dataclass
class Assets:
    backbone: Path   # a tiny random Whisper, save_pretrained
    clips: Path      # 24 tone clips: 6 voices x 4 texts, voices s4, s5 held out ("val")
    manifest: Path   # clips/manifest.csv, their manifest
    corpus: Path     # clips/corpus.csv: path, speaker, content (a `csv:` corpus)
    big: Path        # clips/big.csv: BIG_ROWS rows over the same 24 files
    store: Path      # features of `manifest`
    recipe: Path     # TRAIN_RECIPE
    model: Path      # trained with TRAIN_RECIPE, uninterrupted


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("interrupts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _, clips, table = tone_corpus(root, seconds_step=0.0)
    rows = table.to_dict("records")
    big = pd.DataFrame([dict(rows[i % len(rows)], utt_id=f"u{i:04d}") for i in range(BIG_ROWS)])
    big.to_csv(clips / "big.csv", index=False)
    (root / "recipe.toml").write_text(toml_text(TRAIN_RECIPE))
    a = Assets(root / "backbone", clips, clips / "manifest.csv", clips / "corpus.csv", clips / "big.csv",
               root / "store", root / "recipe.toml", root / "model")
    assert quiet_main(["extract", str(a.manifest), "--out", str(a.store), "--backbone", str(a.backbone)]) == 0
    assert quiet_main(train_args(a, a.model)) == 0
    torch.set_num_threads(threads)
    return a


def train_args(a: Assets, out: Path) -> list[str]:
    return ["train", "--features", str(a.store), "--manifest", str(a.manifest), "--out", str(out),
            "--recipe", str(a.recipe)]


# ----------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------


def test_ctrl_c_in_extract_keeps_the_finished_shard_and_a_rerun_adds_only_the_rest(assets, tmp_path, monkeypatch):
    out = tmp_path / "store"
    argv = ["extract", str(assets.big), "--out", str(out), "--backbone", str(assets.backbone)]
    # Shard 1 is 5 batches: at least 1.0 s of sleeps after shard 0 is written; Ctrl-C at 0.3 s.
    run = interrupt("extract", argv, "encode", tmp_path, after=out / "shard-00000.safetensors", delay_s=0.3)
    check_interrupted(run)
    assert not leftovers(out), leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.safetensors", "store.json"]
    assert json.loads((out / "store.json").read_text())["complete"] is False  # readers refuse it until the rerun
    kept = fingerprint(out / "shard-00000.safetensors")

    import subspaces.backbones as backbones

    encoded = []
    original = backbones.Backbone.encode
    monkeypatch.setattr(backbones.Backbone, "encode",
                        lambda self, waves: encoded.append(len(waves)) or original(self, waves))
    assert quiet_main(argv) == 0
    from subspaces.features import FeatureStore

    store = FeatureStore(out)  # refuses an unfinished store
    assert len(store) == BIG_ROWS and store.info["num_shards"] == 2
    assert sum(encoded) == BIG_ROWS - 1000, "the rerun encoded more than the missing shard"
    assert fingerprint(out / "shard-00000.safetensors") == kept, "the kept shard was written again"
    assert not leftovers(out), leftovers(out)


def test_ctrl_c_in_train_keeps_the_checkpoint_and_a_rerun_ends_at_the_uninterrupted_weights(assets, tmp_path,
                                                                                              monkeypatch):
    out = tmp_path / "model"
    checkpoint = out / "checkpoints" / f"step-{CHECKPOINT_EVERY:06d}"
    # The next checkpoint is 5 steps of 0.2 s away; Ctrl-C 0.4 s after this one.
    run = interrupt("train", train_args(assets, out), "batch", tmp_path, after=checkpoint, delay_s=0.4)
    check_interrupted(run)
    assert not leftovers(out), leftovers(out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoint.name]
    assert (out / "UNFINISHED").is_file(), "an interrupted model folder must not pass for a finished one"
    logged = pd.read_csv(out / "train_log.csv")["step"].tolist()
    assert logged[: CHECKPOINT_EVERY + 1] == list(range(1, CHECKPOINT_EVERY + 2))  # it was past the checkpoint

    import subspaces.sampler as sampler

    steps = []
    original = sampler.GridSampler.batch
    monkeypatch.setattr(sampler.GridSampler, "batch", lambda self, step: steps.append(step) or original(self, step))
    assert quiet_main(train_args(assets, out)) == 0
    assert steps == list(range(CHECKPOINT_EVERY, TRAIN_RECIPE["steps"])), "the rerun did not resume at the checkpoint"
    assert not (out / "UNFINISHED").exists() and not leftovers(out), leftovers(out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{TRAIN_RECIPE['steps']:06d}"]
    assert pd.read_csv(out / "train_log.csv")["step"].tolist() == list(range(1, TRAIN_RECIPE["steps"] + 1))
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(assets.model / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_ctrl_c_in_embed_writes_no_output_and_a_rerun_writes_it(assets, tmp_path):
    out = tmp_path / "vectors"
    out.mkdir()
    argv = ["embed", str(assets.model), str(assets.clips), "--out", str(out / "x.npz"), "--batch-size", "1"]
    # 24 clips one at a time: 4.8 s of sleeps; Ctrl-C 0.5 s into the first.
    run = interrupt("embed", argv, "encode", tmp_path, delay_s=0.5)
    check_interrupted(run)
    assert list(out.iterdir()) == [], "an interrupted embed left files"
    assert not leftovers(assets.model), leftovers(assets.model)
    assert quiet_main(argv) == 0
    with np.load(out / "x.npz") as vectors:
        assert vectors["files"].shape == (24,) and vectors["speaker"].shape[0] == 24
    assert sorted(p.name for p in out.iterdir()) == ["x.npz"]


def test_ctrl_c_in_evaluate_keeps_the_finished_features_and_a_rerun_reuses_them(assets, tmp_path):
    pytest.importorskip("resemblyzer")  # the stage interrupted here is its baseline
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(assets.model), "--corpus", f"csv:{assets.corpus}", "--out", str(out)]
    # Resemblyzer reads 24 clips at 0.2 s each after the store is finished; Ctrl-C 0.5 s in.
    run = interrupt("evaluate", argv, "resemblyzer", tmp_path, after=out / "features" / "index.parquet", delay_s=0.5)
    check_interrupted(run)
    assert not leftovers(out), leftovers(out)
    from subspaces.features import FeatureStore

    assert len(FeatureStore(out / "features")) == 24  # finished before the signal, and kept
    assert not (out / "report.md").exists() and not (out / "metrics.json").exists()
    kept = fingerprint(out / "features" / "shard-00000.safetensors")
    assert quiet_main(argv) == 0
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    assert fingerprint(out / "features" / "shard-00000.safetensors") == kept, "the features were extracted again"
    assert not leftovers(out), leftovers(out)
