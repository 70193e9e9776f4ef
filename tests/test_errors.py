"""One error type for users, and what the command line does with it and with bugs."""

from __future__ import annotations

import importlib
import os
import pkgutil

import numpy as np
import pytest

import subspaces
from subspaces import cli
from subspaces.atomic import write_text_atomic
from subspaces.errors import SubspacesError


def _package_exceptions() -> dict[str, type]:
    """Every public exception class (not a warning) defined in a subspaces module, by name."""
    found = {}
    for info in pkgutil.walk_packages(subspaces.__path__, "subspaces."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Exception) and not issubclass(value, Warning)
                    and value.__module__ == info.name and not value.__name__.startswith("_")):
                found[f"{info.name}.{value.__name__}"] = value
    return found


def test_every_error_class_of_the_package_is_a_subspaces_error():
    found = _package_exceptions()
    assert len(found) >= 15  # the walk did find the modules' error classes
    assert not [name for name, kind in found.items() if not issubclass(kind, SubspacesError)]


def test_a_user_error_is_one_line_and_exit_1(tmp_path, capsys):
    code = cli.main(["embed", str(tmp_path / "no-model"), str(tmp_path / "a.wav"), "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "no-model: no such model folder" in err
    assert "Traceback" not in err


def test_a_system_refusal_names_the_file(monkeypatch, capsys):
    def refuse(args):
        raise PermissionError(13, "Permission denied", "/data/locked.csv")

    monkeypatch.setattr(cli, "cmd_merge", refuse)
    assert cli.main(["merge", "a", "--out", "b"]) == 1
    assert capsys.readouterr().err == "error: /data/locked.csv: Permission denied\n"


def test_a_bug_keeps_its_traceback_and_says_it_is_one(monkeypatch, capsys):
    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_merge", broken)
    assert cli.main(["merge", "a", "--out", "b"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert "a bug in speech-subspaces" in err


def test_a_library_error_is_still_the_builtin_type_callers_caught():
    from subspaces.metrics import eer

    with pytest.raises(ValueError, match="no trials"):
        eer(np.array([]), np.array([]))
    with pytest.raises(SubspacesError):
        eer(np.array([]), np.array([]))


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_text_atomic(tmp_path / "report.md", "done\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == mode


def test_the_top_level_names_are_the_entry_points():
    for name in subspaces.__all__:
        assert getattr(subspaces, name) is not None
    # `subspaces.train` is the function even after its module is imported
    importlib.import_module("subspaces.training")
    assert callable(subspaces.train) and subspaces.train.__module__ == "subspaces.training"
    with pytest.raises(AttributeError):
        subspaces.no_such_name


@pytest.mark.parametrize("verb", ["encode", "extract", "train", "evaluate", "embed", "verify", "score", "calibrate"])
def test_every_verb_that_computes_takes_a_device_and_refuses_one_it_lacks(verb, capsys):
    import torch

    argv = {"encode": ["encode", "a.wav"], "extract": ["extract", "m.csv", "--out", "o"],
            "train": ["train", "--features", "f", "--manifest", "m.csv", "--out", "o"],
            "evaluate": ["evaluate", "--model", "m", "--out", "o"], "embed": ["embed", "a.wav", "--out", "x.npz"],
            "verify": ["verify", "a.wav", "b.wav"], "score": ["score", "--trials", "t.txt", "--out", "s.txt"],
            "calibrate": ["calibrate", "m"]}[verb]
    assert cli.main([*argv, "--device", "tpu"]) == 1
    assert capsys.readouterr().err == "error: --device 'tpu': expected cpu, cuda or cuda:N\n"
    if not torch.cuda.is_available():
        assert cli.main([*argv, "--device", "cuda"]) == 1
        assert "error: --device 'cuda', but torch finds no usable CUDA GPU here" in capsys.readouterr().err
