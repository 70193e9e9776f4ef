"""The command line: help, and `encode` over real FSDD clips with one unreadable file."""

import subprocess
import sys

import numpy as np

from conftest import FSDD
from subspaces.cli import main


def test_help_lists_the_verbs():
    result = subprocess.run([sys.executable, "-m", "subspaces.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "encode" in result.stdout


def test_encode_writes_pooled_layers_and_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    out = tmp_path / "vectors.npz"
    files = [str(FSDD / "1_nicolas_3.wav"), str(FSDD / "2_jackson_9.wav"), str(bad)]
    code = main(["encode", *files, "--backbone", "whisper-tiny.en", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2  # finished, but some inputs were skipped
    assert "broken.wav: not a readable audio file" in captured.err
    saved = np.load(out)
    assert saved["pooled"].shape == (2, 5, 384)
    assert list(saved["files"]) == files[:2]
    assert np.isfinite(saved["pooled"]).all()


def test_unknown_backbone_is_an_error_not_a_crash(capsys):
    assert main(["encode", str(FSDD / "1_nicolas_3.wav"), "--backbone", "not-a-model"]) == 1
    assert "error: 'not-a-model' is not a local folder" in capsys.readouterr().err


def test_voices_writes_a_bank_with_kokoro_styles_and_synth_uses_it(tmp_path, capsys):
    bank = tmp_path / "bank" / "voices.json"
    assert main(["voices", str(bank), "--kokoro", "2", "--piper", "1", "--flite", "1"]) == 0
    assert "and 2 Kokoro style tensors" in capsys.readouterr().out
    assert len(list((tmp_path / "bank" / "styles").glob("kokoro-*.npy"))) == 2
    assert main(["synth", str(tmp_path / "grid"), "--voices", str(bank), "--texts", "keywords", "--num-texts", "2"]) == 0
    assert "8 clips from 4 voices x 2 texts" in capsys.readouterr().out
    assert main(["voices", str(tmp_path / "empty.json")]) == 1
    assert "no voices asked for" in capsys.readouterr().err


def test_embed_and_encode_refuse_an_out_file_they_would_not_write_as_named(tmp_path, capsys):
    clip = str(FSDD / "1_nicolas_3.wav")
    assert main(["embed", str(tmp_path / "model"), clip, "--out", str(tmp_path / "vectors")]) == 1
    assert f"error: --out {tmp_path / 'vectors'}: give a file name ending in .npz, .parquet or .ark" in capsys.readouterr().err
    assert main(["encode", clip, "--out", str(tmp_path / "vectors.csv")]) == 1
    assert "error: --out" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_embed_of_an_empty_folder_names_it_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "no-model"), str(tmp_path / "empty"), "--out", str(tmp_path / "x.npz")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'empty'}: no audio files (.wav, .flac, .ogg, .mp3, .aiff, " \
                                      ".aif, .opus) in this folder\n"
