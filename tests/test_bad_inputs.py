"""Bad inputs and faults, each run through the command line (issue 17).

Every case below is built here, at run time, from a tiny random Whisper backbone folder,
generated tone clips, a feature store, a model and a half-trained model made from them.
A case is one command a hostile but fair user could run. What each must do:

- exit 1 (or 2 where some inputs were skipped and the rest done);
- print exactly one line `error: FILE: problem` on stderr that names the offending file
  (or option), and no traceback;
- leave what existed before byte-identical (the files of the folders it names are hashed
  before and after), and no temporary files behind.

A few cases may instead warn (a half-trained model, a truncated clip, digital silence:
"refuse or warn loudly"); they say so. The disk-full cases run on a 2 MB tmpfs and are
skipped where the machine does not allow mounting one. The concurrent-writer and the
half-trained cases use real processes (a stalled writer; a train run that kills itself
with SIGKILL at step 100 of 300).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tone_corpus, write_tone

from subspaces.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")

# The training recipe of the tiny model: 20 steps on 4 training voices x 4 texts.
RECIPE = {"steps": 20, "val_every": 10, "checkpoint_every": 10, "hidden": [16], "max_lr": 0.003,
          "subspaces": {"speaker": 4, "content": 4}, "block": {"speaker": 2, "content": 2}}
# The half-trained model's: 300 steps, killed at step 100, just after its checkpoint.
HALF_RECIPE = RECIPE | {"steps": 300, "val_every": 50, "checkpoint_every": 100}
KILL_AT_STEP = 100
SYNTH_ARGS = ["--espeak", "2", "--texts", "keywords", "--num-texts", "2", "--workers", "1"]

# A process running the CLI with one function stalled or made fatal (set by STALL):
# "encode" / "train" / "synth" stall inside the work, so that the folder is being written
# while a second writer comes; "kill-train" SIGKILLs itself at training step KILL_AT_STEP,
# after that step's checkpoint, as a machine dying in the middle of a run would.
RUNNER = r"""
import os, signal, sys, time
import torch
torch.set_num_threads(1)
stall = os.environ["STALL"]
if stall == "encode":
    import subspaces.backbones as backbones
    original_encode = backbones.Backbone.encode
    def encode(self, waves):
        time.sleep(120)
        return original_encode(self, waves)
    backbones.Backbone.encode = encode
elif stall in ("train", "kill-train"):
    import subspaces.sampler as sampler
    original_batch = sampler.GridSampler.batch
    def batch(self, step):
        if stall == "train":
            time.sleep(120)
        elif step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original_batch(self, step)
    sampler.GridSampler.batch = batch
elif stall == "synth":
    import subspaces.synth.grid as grid
    original_task = grid._run_task
    def run_task(task):
        time.sleep(120)
        return original_task(task)
    grid._run_task = run_task
from subspaces.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------------
# What the cases are built from (once per session)
# ----------------------------------------------------------------------------------


def toml_text(recipe: dict) -> str:
    """A TOML recipe: scalars first, then one table per dict value (nan and inf as TOML writes them)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        return "[" + ", ".join(value(x) for x in v) + "]"

    scalars = [f"{k} = {value(v)}\n" for k, v in recipe.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "".join(f"{n} = {value(x)}\n" for n, x in v.items())
              for k, v in recipe.items() if isinstance(v, dict)]
    return "".join(scalars) + "".join(tables)


def runner_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)


@dataclass
class Assets:
    root: Path
    backbone: Path      # a tiny random Whisper, save_pretrained
    clips: Path         # 24 tone clips: 6 voices x 4 texts, voices s4, s5 held out ("val")
    manifest: Path      # clips/manifest.csv
    corpus_csv: Path    # clips/corpus.csv: path, speaker, content (for `csv:` corpora)
    store: Path         # features of the manifest
    recipe: Path
    model: Path         # trained for RECIPE's 20 steps
    half_recipe: Path
    half: Path          # killed at step 100 of 300
    grid: Path          # synth of SYNTH_ARGS

    def clip(self, speaker: int = 0, content: int = 0) -> Path:
        return self.clips / f"s{speaker}_c{content}.wav"


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("assets")
    _, clips, _ = tone_corpus(root)
    (root / "recipe.toml").write_text(toml_text(RECIPE))
    (root / "half.toml").write_text(toml_text(HALF_RECIPE))
    a = Assets(root, root / "backbone", clips, clips / "manifest.csv", clips / "corpus.csv", root / "store",
               root / "recipe.toml", root / "model", root / "half.toml", root / "half", root / "grid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["extract", str(a.manifest), "--out", str(a.store), "--backbone", str(a.backbone)]) == 0
        assert main(train_args(a, a.model)) == 0
        assert main(["synth", str(a.grid), *SYNTH_ARGS]) == 0
    killed = subprocess.run([sys.executable, "-c", RUNNER, *train_args(a, a.half, recipe=a.half_recipe)],
                            env=runner_env(STALL="kill-train", KILL_AT_STEP=str(KILL_AT_STEP)),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (a.half / "checkpoints").iterdir()] == [f"step-{KILL_AT_STEP:06d}"]
    assert (a.half / "model.safetensors").is_file() and (a.half / "config.json").is_file()
    torch.set_num_threads(threads)
    return a


def train_args(a: Assets, out: Path, *, recipe: Path | None = None, store: Path | None = None,
               manifest: Path | None = None) -> list[str]:
    return ["train", "--features", str(store or a.store), "--manifest", str(manifest or a.manifest), "--out", str(out),
            "--recipe", str(recipe or a.recipe)]


# ----------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad command. `argv` runs through `main` in this process (or `run` instead).

    code: the exit code expected (1: refused; 2: done, some inputs skipped).
    names: what the one `error:` line must contain (the offending file, the option); for
        exit 2, what stderr must contain somewhere.
    says: that line must say one of these (any case), e.g. "space" for a full disk.
    forbid: what that line must not say (e.g. "no such file" for a directory).
    watch: files and folders that existed before and must be byte-identical afterwards.
    check: replaces the code and stderr checks above: check(code, stdout, stderr).
    after: more assertions once the standard ones passed.
    """

    argv: list[str] | None = None
    code: int = 1
    names: tuple[str, ...] = ()
    says: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    watch: tuple[Path, ...] = ()
    run: Callable[[], int] | None = None
    check: Callable[[int, str, str], None] | None = None
    after: Callable[[], None] | None = None


@dataclass
class Context:
    tmp: Path
    a: Assets
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def defer(self, function: Callable[[], None]) -> None:
        self.cleanups.append(function)

    def copy(self, source: Path, name: str | None = None) -> Path:
        target = self.tmp / (name or source.name)
        shutil.copytree(source, target, symlinks=True)
        return target


CASES: dict[str, tuple[str, Callable[[Context], Case]]] = {}


def case(name: str, what: str):
    def register(setup: Callable[[Context], Case]) -> Callable[[Context], Case]:
        assert name not in CASES, name
        CASES[name] = (what, setup)
        return setup

    return register


# --- small builders ------------------------------------------------------------------


def truncated_wav(path: Path, seconds: float = 1.5) -> Path:
    """A 16-bit WAV whose header claims 3x the samples its data holds."""
    write_tone(path, seconds, 16000)  # soundfile's default WAV subtype: PCM_16
    assert sf.info(str(path)).subtype == "PCM_16"
    frames = sf.info(str(path)).frames
    header = path.stat().st_size - 2 * frames
    os.truncate(path, header + 2 * (frames // 3))
    return path


def silent_wav(path: Path, seconds: float = 1.0) -> Path:
    sf.write(path, np.zeros(int(seconds * 16000), np.float32), 16000, subtype="PCM_16")
    return path


def symlink_loop(path: Path) -> Path:
    partner = path.with_name(path.name + ".other")
    os.symlink(partner, path)
    os.symlink(path, partner)
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    """A pickle that, if ever unpickled, creates `marker` (a folder)."""

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path.write_bytes(pickle.dumps({"optimizer": Payload()}))
    return path


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Change a JSON file in place: `edit` mutates the parsed object (its result is ignored)."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def manifest_with(ctx: Context, rows: dict[int, str] | None = None, *, name: str = "manifest.csv",
                  keep: int | None = None) -> Path:
    """A copy of the clips' manifest with absolute paths, some replaced ({row: path})."""
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    for row, path in (rows or {}).items():
        table.loc[row, "path"] = path
    if keep is not None:
        table = table.iloc[:keep]
    out = ctx.tmp / name
    table.to_csv(out, index=False)
    return out


def recipe_file(ctx: Context, **overrides) -> Path:
    path = ctx.tmp / "bad-recipe.toml"
    path.write_text(toml_text(RECIPE | overrides))
    return path


def with_threshold(model: Path) -> Path:
    (model / "thresholds.json").write_text(json.dumps(
        {"speaker": {"threshold": 0.5, "operating_point": "eer", "data": "made up"}}))
    return model


def extract_args(ctx: Context, manifest: Path, out: Path | None = None) -> list[str]:
    return ["extract", str(manifest), "--out", str(out or ctx.tmp / "store"), "--backbone", str(ctx.a.backbone),
            "--workers", "0"]


def stderr_lines(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", err) if line.strip()]


def error_lines(err: str) -> list[str]:
    return [line for line in stderr_lines(err) if line.startswith("error: ")]


def one_error_line(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, f"expected one `error:` line, got {len(lines)}: {lines[:3]}"
    return lines[0]


def refused_or_warned(*names: str) -> Callable[[int, str, str], None]:
    """Refused (exit 1, one error line naming `names`), or done with a loud warning (a
    stderr line with "warning" naming them)."""

    def check(code: int, out: str, err: str) -> None:
        if code == 1:
            line = one_error_line(err)
            assert all(n in line for n in names), f"exit 1, but the error line does not name {names}: {line}"
            return
        assert code in (0, 2), f"exit {code}"
        warned = [line for line in stderr_lines(err) if "warning" in line.lower() and all(n in line for n in names)]
        assert warned, f"exit {code} without a warning naming {names}"

    return check


def skipped_or_warned(name: str) -> Callable[[int, str, str], None]:
    """Of several inputs, `name` is skipped (exit 2, named on stderr) or warned about (exit 0)."""

    def check(code: int, out: str, err: str) -> None:
        if code == 2:
            assert any(name in line for line in stderr_lines(err)), f"exit 2, but {name} is not named on stderr"
            return
        assert code == 0, f"exit {code}"
        warned = [line for line in stderr_lines(err) if "warning" in line.lower() and name in line]
        assert warned, f"exit 0 without a warning naming {name}"

    return check


def no_complete_store(store: Path) -> Callable[[], None]:
    def after() -> None:
        info = store / "store.json"
        assert not info.is_file() or not json.loads(info.read_text()).get("complete"), \
            f"{info} says complete ({json.loads(info.read_text()).get('num_stored')} rows stored)"

    return after


def failure_listed(store: Path, path: Path, words: tuple[str, ...], forbid: tuple[str, ...] = ()) -> Callable[[], None]:
    """`path` is listed in the store's failures.csv with one of `words` in its error; the others are stored."""

    def after() -> None:
        failures = pd.read_csv(store / "failures.csv", dtype=str, keep_default_na=False)
        listed = failures[failures["path"] == str(path)]
        assert len(listed) == 1, f"{path} not listed in failures.csv: {failures.to_dict('records')}"
        error = listed["error"].iloc[0].replace(str(path), "FILE")
        assert any(w in error.lower() for w in words), f"failure reason {error!r} does not say {words}"
        assert not any(w in error.lower() for w in forbid), f"failure reason {error!r} says {forbid}"
        info = json.loads((store / "store.json").read_text())
        assert info["complete"] and info["num_stored"] == 23

    return after


# --- model folders: weights, config -------------------------------------------------


def corrupt_weights(kind: str) -> Callable[[Path], Path]:
    def corrupt(model: Path) -> Path:
        weights = model / "model.safetensors"
        if kind == "truncated":
            os.truncate(weights, weights.stat().st_size // 2)
        elif kind == "empty":
            os.truncate(weights, 0)
        elif kind == "not-safetensors":
            weights.write_text("<html>404 Not Found</html>\n")
        elif kind == "other-shapes":
            from safetensors.torch import save_file

            save_file({"input_mean": torch.zeros(3)}, str(weights))
        return weights

    return corrupt


def corrupt_config(kind: str) -> Callable[[Path], Path]:
    def corrupt(model: Path) -> Path:
        config = model / "config.json"
        if kind == "not-json":
            config.write_text('{"architecture": "SubspaceModel", "config": {')
        elif kind == "no-config":
            edit_json(config, lambda d: d.pop("config"))
        elif kind == "no-input-dim":
            edit_json(config, lambda d: d["config"].pop("input_dim"))
        elif kind == "input-dim-text":
            edit_json(config, lambda d: d["config"].update(input_dim="wide"))
        elif kind == "wrong-architecture":
            edit_json(config, lambda d: d.update(architecture="WhisperForConditionalGeneration"))
        elif kind == "a-list":
            config.write_text("[1, 2, 3]\n")
        return config

    return corrupt


MODEL_FAULTS = {
    "safetensors-truncated": ("model.safetensors cut to half its size", corrupt_weights("truncated")),
    "safetensors-empty": ("model.safetensors of 0 bytes", corrupt_weights("empty")),
    "safetensors-html": ("model.safetensors holding an HTML error page", corrupt_weights("not-safetensors")),
    "safetensors-other-shapes": ("model.safetensors of another model", corrupt_weights("other-shapes")),
    "config-not-json": ("config.json cut short (not JSON)", corrupt_config("not-json")),
    "config-without-config": ('config.json without "config"', corrupt_config("no-config")),
    "config-without-input-dim": ("config.json without input_dim", corrupt_config("no-input-dim")),
    "config-input-dim-text": ('config.json with input_dim = "wide"', corrupt_config("input-dim-text")),
    "config-wrong-architecture": ("config.json of another architecture", corrupt_config("wrong-architecture")),
    "config-a-list": ("config.json holding a JSON list", corrupt_config("a-list")),
}


def model_verb_argv(verb: str, ctx: Context, model: Path) -> list[str]:
    a = ctx.a
    return {
        "embed": ["embed", str(model), str(a.clip()), "--out", str(ctx.tmp / "vectors.npz")],
        "export": ["export", str(model), "--out", str(ctx.tmp / "model.onnx"), "--head-only", "--no-check"],
        "verify": ["verify", str(model), str(a.clip(0, 0)), str(a.clip(1, 0))],
        "calibrate": ["calibrate", str(model), "--corpus", f"csv:{a.corpus_csv}"],
        "evaluate": ["evaluate", "--model", str(model), "--corpus", f"csv:{a.corpus_csv}",
                     "--out", str(ctx.tmp / "eval")],
    }[verb]


def register_model_fault(verb: str, fault: str) -> None:
    what, corrupt = MODEL_FAULTS[fault]

    def setup(ctx: Context) -> Case:
        model = with_threshold(ctx.copy(ctx.a.model, "m"))
        bad = corrupt(model)
        return Case(model_verb_argv(verb, ctx, model), names=(str(bad),), watch=(model,))

    case(f"{verb}-{fault}", f"{verb} a model with {what}")(setup)


for _fault in MODEL_FAULTS:
    register_model_fault("embed", _fault)
for _fault in ("safetensors-truncated", "config-without-config", "config-without-input-dim"):
    register_model_fault("export", _fault)
register_model_fault("evaluate", "safetensors-truncated")
register_model_fault("verify", "safetensors-empty")
register_model_fault("calibrate", "safetensors-html")


@case("embed-model-is-a-file", "embed with a file where the model folder should be")
def _(ctx):
    model = ctx.tmp / "model.safetensors"
    shutil.copyfile(ctx.a.model / "model.safetensors", model)
    return Case(model_verb_argv("embed", ctx, model), names=(str(model),))


@case("embed-model-without-weights", "embed a model folder whose model.safetensors is missing")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    (model / "model.safetensors").unlink()
    return Case(model_verb_argv("embed", ctx, model), names=(str(model), "model.safetensors"), watch=(model,))


@case("embed-model-backbone-gone", "embed a model whose backbone folder was deleted")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    gone = ctx.tmp / "deleted-backbone"
    edit_json(model / "config.json", lambda d: d["metadata"].update(backbone=str(gone)))
    return Case(model_verb_argv("embed", ctx, model), names=(str(gone),), watch=(model,))


@case("embed-backbone-weights-truncated", "embed a model whose backbone's weights are cut short")
def _(ctx):
    backbone = ctx.copy(ctx.a.backbone, "backbone")
    weights = backbone / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 3)
    model = ctx.copy(ctx.a.model, "m")
    edit_json(model / "config.json", lambda d: d["metadata"].update(backbone=str(backbone)))
    return Case(model_verb_argv("embed", ctx, model), names=(str(weights),), watch=(model, backbone))


@case("verify-thresholds-not-json", "verify with a thresholds.json cut short")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    (model / "thresholds.json").write_text('{"speaker": {"thresh')
    return Case(model_verb_argv("verify", ctx, model), names=(str(model / "thresholds.json"),), watch=(model,))


@case("verify-threshold-from-10-trials", "verify with a threshold calibrated on 1 target and 9 non-target trials")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    (model / "thresholds.json").write_text(json.dumps({"speaker": {
        "threshold": 0.2, "operating_point": "eer", "data": "5 utterances, 10 trials", "num_target_trials": 1,
        "num_nontarget_trials": 9, "p_miss": 1.0, "p_fa": 0.0}}))
    return Case(model_verb_argv("verify", ctx, model), check=refused_or_warned(str(model)), watch=(model,))


@case("verify-no-threshold", "verify with a model never calibrated")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    return Case(model_verb_argv("verify", ctx, model), names=(str(model),), watch=(model,))


# --- a half-trained model (train killed at step 100 of 300) ---------------------------


for _verb in ("embed", "export", "evaluate"):
    def _half_setup(ctx, verb=_verb):
        half = ctx.copy(ctx.a.half, "half")
        return Case(model_verb_argv(verb, ctx, half), check=refused_or_warned(str(half)), watch=(half,))

    case(f"{_verb}-half-trained-model", f"{_verb} a model whose training was killed at step 100 of 300")(_half_setup)


# --- audio inputs ---------------------------------------------------------------------


@case("embed-truncated-wav", "embed a WAV whose header claims 3x the samples it holds (with a good clip)")
def _(ctx):
    bad = truncated_wav(ctx.tmp / "truncated.wav")
    return Case(["embed", str(ctx.a.model), str(bad), str(ctx.a.clip()), "--out", str(ctx.tmp / "x.npz")],
                check=skipped_or_warned(str(bad)), watch=(ctx.a.model,))


@case("embed-digital-silence", "embed a clip of digital silence (with a good clip)")
def _(ctx):
    bad = silent_wav(ctx.tmp / "silence.wav")
    return Case(["embed", str(ctx.a.model), str(bad), str(ctx.a.clip()), "--out", str(ctx.tmp / "x.npz")],
                check=skipped_or_warned(str(bad)), watch=(ctx.a.model,))


@case("verify-digital-silence", "verify a clip of digital silence against a good clip")
def _(ctx):
    model = with_threshold(ctx.copy(ctx.a.model, "m"))
    bad = silent_wav(ctx.tmp / "silence.wav")
    return Case(["verify", str(model), str(bad), str(ctx.a.clip())], check=refused_or_warned(str(bad)), watch=(model,))


@case("embed-symlink-loop", "embed a symlink loop (with a good clip): skipped as a loop, not 'no such file'")
def _(ctx):
    loop = symlink_loop(ctx.tmp / "clip-a.wav")

    def check(code, out, err):
        assert code == 2, f"exit {code}"
        named = [line.replace(str(loop), "FILE") for line in stderr_lines(err) if str(loop) in line]
        assert named, f"{loop} is not named on stderr"
        assert any(w in line.lower() for line in named for w in ("loop", "symbolic link")), \
            f"the loop is not reported as one: {named[0]}"

    return Case(["embed", str(ctx.a.model), str(loop), str(ctx.a.clip()), "--out", str(ctx.tmp / "x.npz")],
                check=check, watch=(ctx.a.model,))


@case("verify-a-directory", "verify with a folder where a clip should be: reported as a folder")
def _(ctx):
    model = with_threshold(ctx.copy(ctx.a.model, "m"))
    folder = ctx.tmp / "clips.wav"
    folder.mkdir()
    return Case(["verify", str(model), str(folder), str(ctx.a.clip())], names=(str(folder),), says=("director",),
                forbid=("no such file",), watch=(model,))


@case("embed-empty-folder", "embed an empty input folder")
def _(ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return Case(["embed", str(ctx.a.model), str(empty), "--out", str(ctx.tmp / "x.npz")], names=(str(empty),))


@case("embed-only-input-missing", "embed one file that does not exist")
def _(ctx):
    missing = ctx.tmp / "missing.wav"
    return Case(["embed", str(ctx.a.model), str(missing), "--out", str(ctx.tmp / "x.npz")], names=(str(missing),))


@case("embed-only-input-not-audio", "embed one text file named .wav")
def _(ctx):
    bad = ctx.tmp / "notes.wav"
    bad.write_text("not audio\n")
    return Case(["embed", str(ctx.a.model), str(bad), "--out", str(ctx.tmp / "x.npz")], names=(str(bad),))


@case("embed-nan-samples", "embed a float WAV holding NaN samples (with a good clip)")
def _(ctx):
    bad = ctx.tmp / "nan.wav"
    wave = np.full(8000, np.nan, np.float32)
    sf.write(bad, wave, 16000, subtype="FLOAT")
    return Case(["embed", str(ctx.a.model), str(bad), str(ctx.a.clip()), "--out", str(ctx.tmp / "x.npz")], code=2,
                names=(str(bad),))


@case("embed-out-without-suffix", "embed --out x: the file reported is the file written")
def _(ctx):
    out = ctx.tmp / "vectors"

    def check(code, stdout, err):
        if code == 1:
            line = one_error_line(err)
            assert "--out" in line or str(out) in line, line
            return
        assert code == 0, f"exit {code}"
        reported = re.search(r"into (\S+)", stdout).group(1)
        written = sorted(p.name for p in ctx.tmp.iterdir() if p.name.startswith("vectors"))
        assert Path(reported).is_file(), f"reported {reported}, but wrote {written}"

    return Case(["embed", str(ctx.a.model), str(ctx.a.clip()), "--out", str(out)], check=check)


@case("embed-out-is-a-folder", "embed --out naming an existing folder")
def _(ctx):
    out = ctx.tmp / "vectors.npz"
    out.mkdir()
    return Case(["embed", str(ctx.a.model), str(ctx.a.clip()), "--out", str(out)], names=(str(out),))


@case("embed-batch-size-0", "embed --batch-size 0")
def _(ctx):
    return Case(["embed", str(ctx.a.model), str(ctx.a.clip()), "--out", str(ctx.tmp / "x.npz"), "--batch-size", "0"],
                names=("batch",), watch=(ctx.a.model,))


@case("encode-empty-folder", "encode an empty input folder")
def _(ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return Case(["encode", str(empty), "--backbone", str(ctx.a.backbone)], names=(str(empty),))


# --- calibrate --------------------------------------------------------------------------


@case("calibrate-1-target-9-nontarget", "calibrate on 5 clips: 1 target and 9 non-target trials")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    listing = ctx.tmp / "few.csv"
    speakers = ["s0", "s0", "s1", "s2", "s3"]
    clips = [ctx.a.clip(0, 0), ctx.a.clip(0, 1), ctx.a.clip(1, 0), ctx.a.clip(2, 0), ctx.a.clip(3, 0)]
    table = pd.DataFrame({"path": list(map(str, clips)), "speaker": speakers, "content": ["c"] * 5})
    table.to_csv(listing, index=False)
    return Case(["calibrate", str(model), "--corpus", f"csv:{listing}"], names=("target",), watch=(model,))


@case("calibrate-split-absent", "calibrate --split naming a split the corpus lacks")
def _(ctx):
    model = ctx.copy(ctx.a.model, "m")
    return Case(["calibrate", str(model), "--corpus", f"csv:{ctx.a.corpus_csv}", "--split", "dev"],
                names=("dev",), watch=(model,))


# --- training: the run killed and resumed, with its checkpoint damaged -------------------


def resume_case(ctx: Context, damage: Callable[[Path], Path]) -> Case:
    half = ctx.copy(ctx.a.half, "half")
    bad = damage(half / "checkpoints" / f"step-{KILL_AT_STEP:06d}")
    return Case(train_args(ctx.a, half, recipe=ctx.a.half_recipe), names=(str(bad),), watch=(half,))


@case("train-resume-state-is-a-pickle", "resume from a checkpoint whose state file is a pickle that would run code")
def _(ctx):
    marker = ctx.tmp / "PICKLE-WAS-EXECUTED"
    result = resume_case(ctx, lambda c: evil_pickle(c / "training_state.pt", marker))

    def after():
        assert not marker.exists(), "the pickle was executed"

    result.after = after
    return result


@case("train-resume-state-truncated", "resume from a checkpoint whose state file is cut short")
def _(ctx):
    def damage(checkpoint):
        state = checkpoint / "training_state.pt"
        os.truncate(state, state.stat().st_size // 2)
        return state

    return resume_case(ctx, damage)


@case("train-resume-state-missing", "resume from a checkpoint folder without its state file")
def _(ctx):
    def damage(checkpoint):
        (checkpoint / "training_state.pt").unlink()
        return checkpoint

    return resume_case(ctx, damage)


@case("train-resume-weights-truncated", "resume from a checkpoint whose model.safetensors is cut short")
def _(ctx):
    return resume_case(ctx, lambda c: corrupt_weights("truncated")(c))


@case("train-resume-config-not-json", "resume from a checkpoint whose config.json is not JSON")
def _(ctx):
    return resume_case(ctx, lambda c: corrupt_config("not-json")(c))


@case("train-resume-other-recipe", "resume the half-trained folder with another recipe")
def _(ctx):
    half = ctx.copy(ctx.a.half, "half")
    return Case(train_args(ctx.a, half), names=(str(half),), watch=(half,))


# --- training: the feature store -------------------------------------------------------


def store_case(ctx: Context, damage: Callable[[Path], Path]) -> Case:
    store = ctx.copy(ctx.a.store, "store")
    bad = damage(store)
    return Case(train_args(ctx.a, ctx.tmp / "run", store=store), names=(str(bad),), watch=(store,))


def first_shard(store: Path) -> Path:
    return sorted(store.glob("shard-*.safetensors"))[0]


@case("train-shard-truncated", "train on a store whose feature shard is cut short")
def _(ctx):
    def damage(store):
        shard = first_shard(store)
        os.truncate(shard, shard.stat().st_size // 2)
        return shard

    return store_case(ctx, damage)


@case("train-shard-missing", "train on a store whose feature shard was deleted")
def _(ctx):
    def damage(store):
        shard = first_shard(store)
        shard.unlink()
        return shard

    return store_case(ctx, damage)


@case("train-shard-not-safetensors", "train on a store whose shard holds text")
def _(ctx):
    def damage(store):
        shard = first_shard(store)
        shard.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 12345\n")
        return shard

    return store_case(ctx, damage)


@case("train-index-truncated", "train on a store whose index.parquet is cut short")
def _(ctx):
    def damage(store):
        index = store / "index.parquet"
        os.truncate(index, index.stat().st_size // 2)
        return index

    return store_case(ctx, damage)


@case("train-index-missing", "train on a store whose index.parquet was deleted")
def _(ctx):
    def damage(store):
        (store / "index.parquet").unlink()
        return store / "index.parquet"

    result = store_case(ctx, damage)
    result.says = ("no such file", "missing", "not found")
    return result


@case("train-store-json-not-json", "train on a store whose store.json is not JSON")
def _(ctx):
    def damage(store):
        (store / "store.json").write_text("{")
        return store / "store.json"

    return store_case(ctx, damage)


@case("train-store-unfinished", "train on a store whose extraction never finished")
def _(ctx):
    def damage(store):
        edit_json(store / "store.json", lambda d: d.update(complete=False))
        return store

    return store_case(ctx, damage)


@case("train-features-not-a-store", "train --features naming a folder of clips")
def _(ctx):
    return Case(train_args(ctx.a, ctx.tmp / "run", store=ctx.a.clips), names=(str(ctx.a.clips),), watch=(ctx.a.clips,))


@case("train-manifest-of-other-clips", "train with a manifest whose utterances are not in the store")
def _(ctx):
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table["utt_id"] = "other-" + table["utt_id"]
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    manifest = ctx.tmp / "other.csv"
    table.to_csv(manifest, index=False)
    return Case(train_args(ctx.a, ctx.tmp / "run", manifest=manifest), names=(str(ctx.a.store),), watch=(ctx.a.store,))


@case("train-manifest-without-speaker", "train with a manifest lacking the speaker column")
def _(ctx):
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False).drop(columns="speaker")
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    manifest = ctx.tmp / "nospeaker.csv"
    table.to_csv(manifest, index=False)
    return Case(train_args(ctx.a, ctx.tmp / "run", manifest=manifest), names=(str(manifest), "speaker"))


@case("train-out-is-a-file", "train --out naming an existing regular file")
def _(ctx):
    out = ctx.tmp / "model"
    out.write_text("keep me\n")
    return Case(train_args(ctx.a, out), names=(str(out),), watch=(out,))


# --- training: options and recipes --------------------------------------------------------


@case("train-steps-0", "train --steps 0 (silently ignored before)")
def _(ctx):
    return Case([*train_args(ctx.a, ctx.tmp / "run"), "--steps", "0"], names=("--steps",), watch=(ctx.a.store,))


@case("train-steps-negative", "train --steps -3 (blamed on 'recipe:' before)")
def _(ctx):
    return Case([*train_args(ctx.a, ctx.tmp / "run"), "--steps", "-3"], names=("--steps",), forbid=("recipe:",),
                watch=(ctx.a.store,))


RECIPE_FAULTS = {
    "weight-decay-nan": ({"weight_decay": math.nan}, "weight_decay"),
    "orthogonality-weight-nan": ({"orthogonality_weight": math.nan}, "orthogonality_weight"),
    "margin-nan": ({"margin": math.nan}, "margin"),
    "max-lr-inf": ({"max_lr": math.inf}, "max_lr"),
    "temperature-inf": ({"temperature": math.inf}, "temperature"),
    "layer-lr-scale-inf": ({"layer_lr_scale": math.inf}, "layer_lr_scale"),
    "dropout-1.5": ({"dropout": 1.5}, "dropout"),
    "dropout-negative": ({"dropout": -0.5}, "dropout"),
    "layer-99": ({"layer": 99}, "layer"),
    "layer-table-99": ({"layer": {"speaker": 0, "content": 99}}, "layer"),
    "hidden-0": ({"hidden": [0]}, "hidden"),
    "device-tpu": ({"device": "tpu"}, "device"),
    "steps-0": ({"steps": 0}, "steps"),
    "block-of-1": ({"block": {"speaker": 1, "content": 2}}, "block"),
    "unknown-key": ({"learning_rate": 0.1}, "learning_rate"),
}


def register_recipe_fault(name: str, overrides: dict, key: str) -> None:
    def setup(ctx: Context) -> Case:
        recipe = recipe_file(ctx, **overrides)
        return Case(train_args(ctx.a, ctx.tmp / "run", recipe=recipe), names=(str(recipe), key),
                    watch=(recipe, ctx.a.store))

    case(f"recipe-{name}", f"train with a recipe giving {overrides}")(setup)


for _name, (_overrides, _key) in RECIPE_FAULTS.items():
    register_recipe_fault(_name, _overrides, _key)


@case("recipe-device-cuda-without-gpu", 'train with device = "cuda" on a machine without a GPU')
def _(ctx):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device = 'cuda' is valid here")
    recipe = recipe_file(ctx, device="cuda")
    return Case(train_args(ctx.a, ctx.tmp / "run", recipe=recipe), names=(str(recipe), "cuda"), watch=(ctx.a.store,))


@case("recipe-not-toml", "train with a recipe that is not TOML")
def _(ctx):
    recipe = ctx.tmp / "recipe.toml"
    recipe.write_text("steps = [\n")
    return Case(train_args(ctx.a, ctx.tmp / "run", recipe=recipe), names=(str(recipe),))


@case("recipe-is-a-folder", "train --recipe naming a folder: reported as a folder, not 'no such file'")
def _(ctx):
    recipe = ctx.tmp / "recipe.toml"
    recipe.mkdir()
    return Case(train_args(ctx.a, ctx.tmp / "run", recipe=recipe), names=(str(recipe),), says=("director",),
                forbid=("no such",))


# --- extract ----------------------------------------------------------------------------


@case("extract-out-is-a-file", "extract --out naming an existing regular file")
def _(ctx):
    out = ctx.tmp / "features"
    out.write_text("keep me\n")
    return Case(extract_args(ctx, ctx.a.manifest, out), names=(str(out),), watch=(out,))


@case("extract-manifest-missing", "extract a manifest that does not exist")
def _(ctx):
    manifest = ctx.tmp / "missing.csv"
    return Case(extract_args(ctx, manifest), names=(str(manifest),))


@case("extract-manifest-is-a-folder", "extract a manifest path that is a folder: reported as such")
def _(ctx):
    manifest = ctx.tmp / "manifest.csv"
    manifest.mkdir()
    return Case(extract_args(ctx, manifest), names=(str(manifest),), says=("director",),
                forbid=("no such",))


@case("extract-manifest-binary", "extract a manifest of random bytes")
def _(ctx):
    manifest = ctx.tmp / "manifest.csv"
    manifest.write_bytes(np.random.default_rng(0).bytes(3000))
    return Case(extract_args(ctx, manifest), names=(str(manifest),))


@case("extract-manifest-without-columns", "extract a CSV without the manifest columns")
def _(ctx):
    manifest = ctx.tmp / "manifest.csv"
    shutil.copyfile(ctx.a.corpus_csv, manifest)
    return Case(extract_args(ctx, manifest), names=(str(manifest), "utt_id"))


@case("extract-manifest-parquet-integer-paths", "extract a Parquet manifest whose paths are integers")
def _(ctx):
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table["path"] = np.arange(len(table))
    table["duration_s"] = table["duration_s"].astype(float)
    table["sample_rate"] = table["sample_rate"].astype(int)
    manifest = ctx.tmp / "manifest.parquet"
    table.to_parquet(manifest, index=False)
    return Case(extract_args(ctx, manifest), names=(str(manifest), "path"), forbid=("empty path",))


@case("extract-manifest-duplicate-ids", "extract a manifest whose utt_ids repeat")
def _(ctx):
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table.loc[1, "utt_id"] = table.loc[0, "utt_id"]
    manifest = ctx.tmp / "manifest.csv"
    for p in ctx.a.clips.glob("*.wav"):
        shutil.copyfile(p, ctx.tmp / p.name)
    table.to_csv(manifest, index=False)
    return Case(extract_args(ctx, manifest), names=(str(manifest), "duplicate"))


@case("extract-manifest-escaping-path", "extract a manifest with a relative path climbing out of its folder")
def _(ctx):
    sub = ctx.tmp / "data"
    sub.mkdir()
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table["path"] = [os.path.relpath(ctx.a.clips / p, sub) for p in table["path"]]
    manifest = sub / "manifest.csv"
    table.to_csv(manifest, index=False)
    return Case(extract_args(ctx, manifest), names=(str(manifest),))


@case("extract-manifest-negative-duration", "extract a manifest with a negative duration")
def _(ctx):
    table = pd.read_csv(ctx.a.manifest, dtype=str, keep_default_na=False)
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    table.loc[3, "duration_s"] = "-1"
    manifest = ctx.tmp / "manifest.csv"
    table.to_csv(manifest, index=False)
    return Case(extract_args(ctx, manifest), names=(str(manifest), "duration_s"))


@case("extract-all-paths-missing", "extract a manifest whose 24 paths are all missing: no 'complete' empty store")
def _(ctx):
    missing = {row: str(ctx.tmp / "gone" / f"{row}.wav") for row in range(24)}
    manifest = manifest_with(ctx, missing)
    store = ctx.tmp / "store"

    def check(code, out, err):
        assert code == 1, f"exit {code}"
        line = one_error_line(err)
        assert str(manifest) in line or str(ctx.tmp / "gone") in line, line

    return Case(extract_args(ctx, manifest, store), check=check, after=no_complete_store(store))


@case("extract-symlink-loop-listed", "extract a manifest with one symlink loop: listed as a failure, the rest done")
def _(ctx):
    loop = symlink_loop(ctx.tmp / "clip-a.wav")
    manifest = manifest_with(ctx, {5: str(loop)})
    store = ctx.tmp / "store"
    return Case(extract_args(ctx, manifest, store), code=2,
                after=failure_listed(store, loop, ("loop", "symbolic link")))


@case("extract-directory-listed", "extract a manifest with one folder as a path: listed as a folder")
def _(ctx):
    folder = ctx.tmp / "folder.wav"
    folder.mkdir()
    manifest = manifest_with(ctx, {5: str(folder)})
    store = ctx.tmp / "store"
    return Case(extract_args(ctx, manifest, store), code=2,
                after=failure_listed(store, folder, ("director",), forbid=("no such file",)))


@case("extract-not-audio-listed", "extract a manifest with one text file named .wav: listed, the rest done")
def _(ctx):
    bad = ctx.tmp / "notes.wav"
    bad.write_text("not audio\n")
    manifest = manifest_with(ctx, {5: str(bad)})
    store = ctx.tmp / "store"
    return Case(extract_args(ctx, manifest, store), code=2, after=failure_listed(store, bad, ("audio", "read")))


@case("extract-empty-wav-listed", "extract a manifest with one WAV of 0 samples: listed, the rest done")
def _(ctx):
    bad = ctx.tmp / "empty.wav"
    sf.write(bad, np.zeros(0, np.float32), 16000)
    manifest = manifest_with(ctx, {5: str(bad)})
    store = ctx.tmp / "store"
    return Case(extract_args(ctx, manifest, store), code=2,
                after=failure_listed(store, bad, ("no audio", "0 samples", "empty")))


@case("extract-truncated-wav", "extract a manifest with one WAV whose header claims 3x its samples")
def _(ctx):
    bad = truncated_wav(ctx.tmp / "truncated.wav")
    manifest = manifest_with(ctx, {5: str(bad)})
    store = ctx.tmp / "store"

    def check(code, out, err):
        if code == 2:
            failures = pd.read_csv(store / "failures.csv", dtype=str)
            assert str(bad) in set(failures["path"]), f"exit 2 but {bad} not in failures.csv"
            return
        assert code == 0, f"exit {code}"
        assert any("warning" in line.lower() and str(bad) in line for line in stderr_lines(err)), \
            f"exit 0, no warning names {bad}"

    return Case(extract_args(ctx, manifest, store), check=check)


@case("extract-backbone-missing", "extract with a backbone folder that does not exist")
def _(ctx):
    backbone = ctx.tmp / "no-backbone"
    argv = extract_args(ctx, ctx.a.manifest)
    argv[argv.index("--backbone") + 1] = str(backbone)
    return Case(argv, names=(str(backbone),))


@case("extract-backbone-config-not-json", "extract with a backbone whose config.json is not JSON")
def _(ctx):
    backbone = ctx.copy(ctx.a.backbone, "backbone")
    (backbone / "config.json").write_text('{"model_type": "whisper", ')
    argv = extract_args(ctx, ctx.a.manifest)
    argv[argv.index("--backbone") + 1] = str(backbone)
    return Case(argv, names=(str(backbone / "config.json"),), watch=(backbone,))


@case("extract-backbone-weights-empty", "extract with a backbone whose model.safetensors is empty")
def _(ctx):
    backbone = ctx.copy(ctx.a.backbone, "backbone")
    os.truncate(backbone / "model.safetensors", 0)
    argv = extract_args(ctx, ctx.a.manifest)
    argv[argv.index("--backbone") + 1] = str(backbone)
    return Case(argv, names=(str(backbone / "model.safetensors"),), watch=(backbone,))


@case("extract-backbone-not-speech", "extract with a backbone folder of a text model (bert)")
def _(ctx):
    backbone = ctx.tmp / "bert"
    backbone.mkdir()
    (backbone / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv = extract_args(ctx, ctx.a.manifest)
    argv[argv.index("--backbone") + 1] = str(backbone)
    return Case(argv, names=(str(backbone),))


@case("extract-layer-99", "extract --layers 99 with a 3-layer backbone")
def _(ctx):
    return Case([*extract_args(ctx, ctx.a.manifest), "--layers", "99"], names=("99",))


@case("extract-pooling-max", "extract --pooling max")
def _(ctx):
    return Case([*extract_args(ctx, ctx.a.manifest), "--pooling", "max"], names=("max",))


@case("extract-shard-out-of-range", "extract --shard 5/2")
def _(ctx):
    return Case([*extract_args(ctx, ctx.a.manifest), "--shard", "5/2"], names=("shard",))


@case("extract-into-store-of-other-manifest", "extract into a finished store made from another manifest")
def _(ctx):
    store = ctx.copy(ctx.a.store, "store")
    manifest = manifest_with(ctx, keep=12)
    return Case(extract_args(ctx, manifest, store), names=(str(store),), watch=(store,))


@case("merge-whole-store", "merge a whole store, not a part")
def _(ctx):
    return Case(["merge", str(ctx.a.store), "--out", str(ctx.tmp / "merged")], names=(str(ctx.a.store),),
                watch=(ctx.a.store,))


# --- corpus -----------------------------------------------------------------------------


@case("corpus-unknown-kind", "corpus timit:PATH")
def _(ctx):
    return Case(["corpus", f"timit:{ctx.tmp}", "-o", str(ctx.tmp / "m.csv")], names=("timit",))


@case("corpus-kind-without-path", "corpus librispeech (no path)")
def _(ctx):
    return Case(["corpus", "librispeech", "-o", str(ctx.tmp / "m.csv")], names=("librispeech",))


@case("corpus-librispeech-empty-folder", "corpus librispeech:EMPTY")
def _(ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return Case(["corpus", f"librispeech:{empty}", "-o", str(ctx.tmp / "m.csv")], names=(str(empty),))


@case("corpus-fsdd-empty-folder", "corpus fsdd:EMPTY")
def _(ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return Case(["corpus", f"fsdd:{empty}", "-o", str(ctx.tmp / "m.csv")], names=(str(empty),))


@case("corpus-csv-missing-columns", "corpus csv: without a speaker column")
def _(ctx):
    listing = ctx.tmp / "list.csv"
    pd.read_csv(ctx.a.corpus_csv).drop(columns="speaker").to_csv(listing, index=False)
    return Case(["corpus", f"csv:{listing}", "-o", str(ctx.tmp / "m.csv")], names=(str(listing), "speaker"))


@case("corpus-csv-audio-missing", "corpus csv: naming an audio file that does not exist")
def _(ctx):
    listing = ctx.tmp / "list.csv"
    table = pd.read_csv(ctx.a.corpus_csv)
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    table.loc[2, "path"] = str(ctx.tmp / "gone.wav")
    table.to_csv(listing, index=False)
    return Case(["corpus", f"csv:{listing}", "-o", str(ctx.tmp / "m.csv")], names=(str(listing),))


@case("corpus-csv-not-audio", "corpus csv: naming a text file as audio")
def _(ctx):
    listing = ctx.tmp / "list.csv"
    bad = ctx.tmp / "notes.wav"
    bad.write_text("not audio\n")
    table = pd.read_csv(ctx.a.corpus_csv)
    table["path"] = [str(ctx.a.clips / p) for p in table["path"]]
    table.loc[2, "path"] = str(bad)
    table.to_csv(listing, index=False)
    return Case(["corpus", f"csv:{listing}", "-o", str(ctx.tmp / "m.csv")], names=(str(bad),))


@case("corpus-csv-empty-file", "corpus csv: of an empty file")
def _(ctx):
    listing = ctx.tmp / "list.csv"
    listing.write_text("")
    return Case(["corpus", f"csv:{listing}", "-o", str(ctx.tmp / "m.csv")], names=(str(listing),))


@case("corpus-csv-is-a-folder", "corpus csv:FOLDER: reported as a folder, not 'no such file'")
def _(ctx):
    listing = ctx.tmp / "list.csv"
    listing.mkdir()
    return Case(["corpus", f"csv:{listing}", "-o", str(ctx.tmp / "m.csv")], names=(str(listing),), says=("director",),
                forbid=("no such",))


@case("corpus-out-inside-a-file", "corpus -o FILE/manifest.csv where FILE is a regular file")
def _(ctx):
    blocker = ctx.tmp / "out"
    blocker.write_text("keep me\n")
    return Case(["corpus", f"csv:{ctx.a.corpus_csv}", "-o", str(blocker / "m.csv")], names=(str(blocker),),
                watch=(blocker,))


@case("corpus-csv-parent-paths-then-extract", "corpus csv: with ../ paths: refused, or a manifest extract accepts")
def _(ctx):
    (ctx.tmp / "audio").mkdir()
    lists = ctx.tmp / "lists"
    lists.mkdir()
    for p in ctx.a.clips.glob("*.wav"):
        shutil.copyfile(p, ctx.tmp / "audio" / p.name)
    table = pd.read_csv(ctx.a.corpus_csv)
    table["path"] = ["../audio/" + p for p in table["path"]]
    listing = lists / "list.csv"
    table.to_csv(listing, index=False)
    manifest = lists / "manifest.csv"
    seen = {}

    def run():
        code = main(["corpus", f"csv:{listing}", "-o", str(manifest), "--relative"])
        seen["corpus"] = code
        if code != 0:
            return code
        return main(extract_args(ctx, manifest, ctx.tmp / "store"))

    def check(code, out, err):
        if seen["corpus"] == 1:
            assert str(listing) in one_error_line(err)
            return
        assert seen["corpus"] == 0 and code == 0, f"corpus exit {seen['corpus']}, then extract exit {code}: " \
                                                   f"{(error_lines(err) or ['?'])[0]}"

    return Case(run=run, check=check)


# --- synth ------------------------------------------------------------------------------


@case("synth-grid-with-other-options", "synth into an existing grid with --num-texts 1 instead of 2")
def _(ctx):
    grid = ctx.copy(ctx.a.grid, "grid")
    argv = ["synth", str(grid), *SYNTH_ARGS]
    argv[argv.index("--num-texts") + 1] = "1"
    return Case(argv, names=(str(grid),), watch=(grid,))


@case("synth-voices-bank-not-json", "synth --voices with a bank that is not JSON")
def _(ctx):
    bank = ctx.tmp / "voices.json"
    bank.write_text("{voices")
    return Case(["synth", str(ctx.tmp / "grid"), "--voices", str(bank)], names=(str(bank),))


@case("synth-texts-file-missing", "synth --texts naming a file that does not exist")
def _(ctx):
    texts = ctx.tmp / "texts.txt"
    return Case(["synth", str(ctx.tmp / "grid"), "--espeak", "1", "--texts", str(texts)], names=(str(texts),))


@case("synth-texts-file-empty", "synth --texts naming an empty file")
def _(ctx):
    texts = ctx.tmp / "texts.txt"
    texts.write_text("\n# nothing\n")
    return Case(["synth", str(ctx.tmp / "grid"), "--espeak", "1", "--texts", str(texts)], names=(str(texts),))


@case("synth-unknown-channel", "synth --channels radio")
def _(ctx):
    return Case(["synth", str(ctx.tmp / "grid"), *SYNTH_ARGS, "--channels", "clean,radio"], names=("radio",))


@case("synth-too-many-val-voices", "synth --val-voices 5 with 2 voices")
def _(ctx):
    return Case(["synth", str(ctx.tmp / "grid"), *SYNTH_ARGS, "--val-voices", "5"], names=("val",))


@case("synth-out-is-a-file", "synth into a path that is a regular file")
def _(ctx):
    out = ctx.tmp / "grid"
    out.write_text("keep me\n")
    return Case(["synth", str(out), *SYNTH_ARGS], names=(str(out),), watch=(out,))


# --- a full disk (a 2 MB tmpfs) ------------------------------------------------------------


def small_disk(ctx: Context, size: str = "2m") -> Path:
    disk = ctx.tmp / "disk"
    disk.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a {size} tmpfs here ({getattr(error, 'stderr', '') or error}); "
                    "the disk-full cases need one")
    ctx.defer(lambda: subprocess.run(["umount", "-l", str(disk)], check=False))
    return disk


def fill(disk: Path, keep: int = 0) -> None:
    """Fill `disk` with one file, leaving about `keep` bytes free."""
    stat = os.statvfs(disk)
    size = max(stat.f_bavail * stat.f_frsize - keep, 0)
    with open(disk / "filler", "wb") as handle:
        try:
            for start in range(0, size, 1 << 16):
                handle.write(b"\0" * min(1 << 16, size - start))
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def no_temporaries(disk: Path) -> Callable[[], None]:
    def after() -> None:
        left = [str(p.relative_to(disk)) for p in disk.rglob("*")
                if p.name.startswith(".") or ".tmp" in p.name or p.name.endswith(".partial")]
        assert not left, f"temporary files left behind on the full disk: {left}"

    return after


@case("corpus-disk-full", "corpus -o onto a full disk holding an earlier manifest")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copyfile(ctx.a.manifest, disk / "earlier.csv")
    fill(disk)
    return Case(["corpus", f"csv:{ctx.a.corpus_csv}", "-o", str(disk / "new.csv")], names=(str(disk),), says=("space",),
                watch=(disk,), after=no_temporaries(disk))


@case("extract-disk-full", "extract onto a full disk holding an earlier store")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.store, disk / "earlier")
    fill(disk)
    manifest = manifest_with(ctx, keep=12)
    return Case(extract_args(ctx, manifest, disk / "store"), names=(str(disk),), says=("space",), watch=(disk,),
                after=no_temporaries(disk))


@case("synth-disk-full", "synth onto a full disk holding an earlier grid")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.grid, disk / "earlier")
    fill(disk)
    return Case(["synth", str(disk / "grid"), *SYNTH_ARGS], names=(str(disk),), says=("space",), watch=(disk,),
                after=no_temporaries(disk))


@case("extract-disk-nearly-full", "extract onto a disk with room for store.json but not the shard")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.store, disk / "earlier")
    fill(disk, keep=12 * 1024)
    manifest = manifest_with(ctx, keep=12)
    return Case(extract_args(ctx, manifest, disk / "store"), names=(str(disk),), says=("space",),
                watch=(disk / "earlier",), after=no_temporaries(disk))


@case("synth-disk-nearly-full", "synth onto a disk with room for a clip or two: stops at ENOSPC, no failures.csv")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.grid, disk / "earlier")
    fill(disk, keep=32 * 1024)
    grid = disk / "grid"

    def after():
        no_temporaries(disk)()
        assert not (grid / "failures.csv").exists(), "clips that met a full disk were recorded as synthesis failures"

    return Case(["synth", str(grid), *SYNTH_ARGS], names=(str(disk),), says=("space",), watch=(disk / "earlier",),
                after=after)


@case("train-disk-full", "train onto a full disk holding an earlier model")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.model, disk / "earlier")
    fill(disk)
    return Case(train_args(ctx.a, disk / "run"), names=(str(disk),), says=("space",), watch=(disk,),
                after=no_temporaries(disk))


@case("train-disk-full-at-checkpoint", "train onto a disk with room for the logs and model but not the checkpoint")
def _(ctx):
    disk = small_disk(ctx)
    shutil.copytree(ctx.a.model, disk / "earlier")
    fill(disk, keep=40 * 1024)
    return Case(train_args(ctx.a, disk / "run"), names=(str(disk),), says=("space",), watch=(disk / "earlier",),
                after=no_temporaries(disk))


# --- a second writer into a folder being written --------------------------------------------


def second_writer(ctx: Context, argv: list[str], stall: str, started: Path) -> Case:
    """Start `argv` in a process stalled inside its work; once `started` exists, run the same
    command here. It must be refused, naming the folder and the first writer's pid."""
    first = subprocess.Popen([sys.executable, "-c", RUNNER, *argv], env=runner_env(STALL=stall),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop():
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()

    ctx.defer(stop)
    deadline = time.time() + 120
    while not started.exists():
        if first.poll() is not None:
            pytest.fail(f"the first writer ended early: {first.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "the first writer never started"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside its stalled work
    folder = started.parent
    return Case(argv, names=(str(folder), str(first.pid)))


@case("extract-second-writer", "extract into a folder another extract is writing")
def _(ctx):
    out = ctx.tmp / "store"
    return second_writer(ctx, extract_args(ctx, ctx.a.manifest, out), "encode", out / "store.json")


@case("train-second-writer", "train into a folder another train is writing")
def _(ctx):
    out = ctx.tmp / "run"
    return second_writer(ctx, train_args(ctx.a, out), "train", out / "train_log.csv")


@case("synth-second-writer", "synth into a folder another synth is writing")
def _(ctx):
    out = ctx.tmp / "grid"
    return second_writer(ctx, ["synth", str(out), *SYNTH_ARGS], "synth", out / "voices.json")


# ----------------------------------------------------------------------------------
# Running them
# ----------------------------------------------------------------------------------


def snapshot(paths: tuple[Path, ...]) -> dict[str, str]:
    """sha256 of every file under `paths` (recursively; symlinks as their target text)."""
    found = {}
    for root in paths:
        items = [root] if not root.is_dir() else sorted(root.rglob("*"))
        for p in items:
            if p.is_symlink():
                found[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def describe(code: int, err: str) -> str:
    """What happened, in one line: the exception of a traceback, else the error line, else
    the first warning or skipped line, else the last line of stderr."""
    lines = stderr_lines(err)
    if "Traceback" in err:
        bug = [i for i, line in enumerate(lines) if "a bug in speech-subspaces" in line]
        end = bug[0] if bug else len(lines)
        raised = [line for line in lines[:end] if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line)]
        return f"exit {code}, traceback: {(raised or lines[end - 1:end] or ['?'])[-1][:300]}"
    errors = error_lines(err)
    if errors:
        more = f" (+{len(errors) - 1} more error lines)" if len(errors) > 1 else ""
        return f"exit {code}, {errors[0][:300]}{more}"
    notes = [line for line in lines if "Warning:" in line or line.lower().startswith(("warning", "skipped"))]
    if notes:
        return f"exit {code}, no error line; stderr: {notes[0][:300]}"
    return f"exit {code}, no error line; stderr ends: {lines[-1][:300] if lines else '(empty)'}"


class _StderrWarnings(warnings.catch_warnings):
    """Warnings print to stderr under Python's default filters, as in a real process
    (pytest would otherwise collect them)."""

    def __enter__(self):
        result = super().__enter__()
        warnings.resetwarnings()
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        return result


def test_the_corpus_has_at_least_70_cases():
    assert len(CASES) >= 70, len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, assets, tmp_path, capsys):
    ctx = Context(tmp_path, assets)
    try:
        what, setup = CASES[name]
        bad = setup(ctx)
        before = snapshot(bad.watch)
        capsys.readouterr()
        with _StderrWarnings():
            try:
                code = bad.run() if bad.run else main(bad.argv)
            except SystemExit as exit_:
                code = exit_.code
        out, err = capsys.readouterr()
        happened = describe(code, err)
        print(f"[{name}] {what}: {happened}")
        problems = []

        def expect(condition: bool, message: str) -> None:
            if not condition:
                problems.append(message)

        def run_check(check: Callable[[], None]) -> None:
            try:
                check()
            except AssertionError as error:
                problems.append(str(error).splitlines()[0] if str(error) else "assertion failed")

        expect("Traceback" not in err, "a traceback")
        if bad.check is not None:
            run_check(lambda: bad.check(code, out, err))
        else:
            expect(code == bad.code, f"expected exit {bad.code}")
            if bad.code == 1:
                errors = error_lines(err)
                expect(len(errors) == 1, f"{len(errors)} error lines, expected 1")
                line = errors[0] if errors else ""
                missing = [n for n in bad.names if n not in line]
                expect(not missing, f"the error line does not name {missing}")
                expect(not bad.says or any(w in line.lower() for w in bad.says),
                       f"the error line says none of {list(bad.says)}")
                said = [f for f in bad.forbid if f in line]
                expect(not said, f"the error line says {said}")
            else:
                missing = [n for n in bad.names if n not in err]
                expect(not missing, f"stderr does not name {missing}")
        after = snapshot(bad.watch)
        changed = sorted(k for k, v in after.items() if before.get(k) != v)
        # A stale `.lock` that a killed writer left (the half-trained folder's) is no output:
        # the next writer takes it over and removes it as it lets go, refused or not.
        removed = sorted(k for k in set(before) - set(after) if Path(k).name != ".lock")
        expect(not changed and not removed, f"earlier outputs changed or added: {changed[:3]}, removed: {removed[:3]}")
        if bad.after is not None:
            run_check(bad.after)
        if problems:
            raise AssertionError(f"{name}: {happened} -- " + "; ".join(problems))
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
