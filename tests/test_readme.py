"""The README cannot rot: every command in it parses, every file it names exists, and its
Python snippets run."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import subspaces
from subspaces.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FSDD = ROOT / "src" / "subspaces" / "data" / "fsdd" / "recordings"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands() -> list[list[str]]:
    """Every command of the README's bash blocks, split at `&&`, comments dropped."""
    found = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if not line or line.startswith("#"):
                continue
            found.extend(shlex.split(part) for part in line.split("&&"))
    return found


def _parses(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse refuses with exit 2
        pytest.fail(f"the README's `subspaces {' '.join(argv)}` does not parse (exit {exit.code})")


def test_every_readme_command_parses_and_names_what_exists():
    seen = set()
    for argv in commands():
        program = Path(argv[0]).name
        seen.add(program)
        if program == "subspaces":
            _parses(argv[1:])
        elif program == "torchrun":
            _parses(argv[argv.index("subspaces.cli") + 1:])
        elif program == "bash":
            assert (ROOT / argv[1]).is_file(), argv
        elif program == "python" and argv[1] == "-m" and argv[2] == "pytest":
            assert ".venv/bin/python -m pytest" in (ROOT / ".ci" / "run").read_text()  # CI runs command 2
        elif program == "python" and argv[1] == "-m":
            from subspaces import pretrained

            assert argv[2] == "subspaces.pretrained", argv
            pretrained.build_parser().parse_args(argv[3:])
        elif program == "python":
            script = ROOT / argv[1]
            assert script.is_file(), argv
            for option in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
                assert option in script.read_text(), f"{script.name} has no option {option}"
        else:
            pytest.fail(f"the README runs {program}, which this check does not know: {argv}")
    assert {"subspaces", "bash", "python", "torchrun"} <= seen


def test_every_top_level_name_the_readme_uses_exists():
    for block in blocks("python"):
        compile(block, "README.md", "exec")
        for name in re.findall(r"\bsubspaces\.([a-z_A-Z]+)\(", block):
            assert hasattr(subspaces, name), name


def test_every_repository_path_the_readme_names_exists():
    for path in re.findall(r"`((?:src|benchmarks|scripts|tests)/[\w./-]+)`", README):
        assert (ROOT / path).exists(), path


def test_the_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(FSDD / "0_george_0.wav", "a.wav")
    shutil.copyfile(FSDD / "1_george_1.wav", "b.wav")
    wave_8k = subspaces.load_audio(FSDD / "2_george_2.wav", 8000)
    scope = {"wave_8k": wave_8k}
    exec(blocks("python")[0], scope)
    assert set(scope["vectors"]) == {"speaker", "content"} and scope["vectors"]["speaker"].shape == (1, 384)
    assert isinstance(scope["same"], (bool, np.bool_)) and -1 <= scope["score"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")), reason="needs espeak-ng and flite")
def test_the_stage_by_stage_pipeline_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").symlink_to(ROOT / "src")  # the snippet reads an FSDD file by its repository path
    scope: dict = {}
    exec("import subspaces\n" + blocks("python")[1], scope)
    assert (tmp_path / "runs" / "report" / "metrics.json").is_file()
    assert "ours: speaker subspace" in (tmp_path / "runs" / "report" / "report.md").read_text()
