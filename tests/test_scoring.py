"""Trial lists, wav.scp, score files and Kaldi vector tables (`subspaces.scoring`): no model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from subspaces.scoring import ScoringError, read_trial_list, read_wav_scp, resolver, write_kaldi_vectors, write_scores


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _rows(table: pd.DataFrame) -> list[tuple[str, str, int]]:
    return [(e, t, int(label)) for e, t, label in zip(table["enroll"], table["test"], table["label"])]


# --- trial lists --------------------------------------------------------------------------------

def test_a_voxceleb_list_gives_enroll_test_label_in_file_order(tmp_path):
    path = _write(tmp_path / "veri_test.txt",
                  "1 id10270/x6u/00001.wav id10270/8jE/00008.wav\n"
                  "0 id10270/x6u/00001.wav id10300/ize/00012.wav\n"
                  "\n"  # blank lines are skipped
                  "1 id10309/0cY/00004.wav id10309/e-I/00001.wav\n")
    table = read_trial_list(path)
    assert list(table.columns) == ["enroll", "test", "label"]
    assert _rows(table) == [("id10270/x6u/00001.wav", "id10270/8jE/00008.wav", 1),
                            ("id10270/x6u/00001.wav", "id10300/ize/00012.wav", 0),
                            ("id10309/0cY/00004.wav", "id10309/e-I/00001.wav", 1)]


def test_a_kaldi_list_gives_the_same_table_as_the_voxceleb_form(tmp_path):
    kaldi = read_trial_list(_write(tmp_path / "trials", "spk1-u1 spk1-u2 target\nspk1-u1 spk2-u1 nontarget\n"
                                                        "spk2-u1 spk2-u3 target\n"))
    assert list(kaldi.columns) == ["enroll", "test", "label"]
    assert _rows(kaldi) == [("spk1-u1", "spk1-u2", 1), ("spk1-u1", "spk2-u1", 0), ("spk2-u1", "spk2-u3", 1)]
    vox = read_trial_list(_write(tmp_path / "vox.txt", "1 spk1-u1 spk1-u2\n0 spk1-u1 spk2-u1\n1 spk2-u1 spk2-u3\n"))
    assert vox.equals(kaldi)


def test_an_unlabelled_list_has_label_minus_one(tmp_path):
    table = read_trial_list(_write(tmp_path / "pairs.txt", "b.wav a.wav\na.wav c.wav\n"))
    assert _rows(table) == [("b.wav", "a.wav", -1), ("a.wav", "c.wav", -1)]


def test_a_kaldi_line_whose_first_id_is_0_or_1_is_still_kaldi(tmp_path):
    # Numeric utterance ids are common (e.g. "1 1002 target"). The third field says this is
    # Kaldi's form: as VoxCeleb's it would name a test clip called "target".
    table = read_trial_list(_write(tmp_path / "trials", "1 1002 target\n1003 1004 nontarget\n"))
    assert _rows(table) == [("1", "1002", 1), ("1003", "1004", 0)]


def refused(path: Path) -> str:
    """The message `read_trial_list` refuses `path` with."""
    with pytest.raises(ScoringError) as caught:
        read_trial_list(path)
    return str(caught.value)


def test_a_list_mixing_forms_is_refused_naming_the_line(tmp_path):
    path = _write(tmp_path / "mixed.txt", "1 a.wav b.wav\n0 a.wav c.wav\n\na.wav d.wav target\n")
    message = refused(path)
    assert message.startswith(f"{path}:4: ")  # blank lines count: the number is the editor's
    assert "'a.wav d.wav target'" in message
    unlabelled_then_kaldi = _write(tmp_path / "mixed2.txt", "a.wav b.wav\na.wav c.wav nontarget\n")
    assert refused(unlabelled_then_kaldi).startswith(f"{unlabelled_then_kaldi}:2: ")


@pytest.mark.parametrize("bad", ["a.wav b.wav c.wav d.wav", "a.wav", "2 a.wav b.wav", "a.wav b.wav same"])
def test_a_line_of_no_form_is_refused_naming_it(tmp_path, bad):
    path = _write(tmp_path / "bad.txt", f"1 a.wav b.wav\n{bad}\n")
    message = refused(path)
    assert message.startswith(f"{path}:2: ") and repr(bad) in message


def test_a_first_line_of_no_form_lists_every_form(tmp_path):
    path = _write(tmp_path / "bad.txt", "a b c d\n")
    message = refused(path)
    assert message.startswith(f"{path}:1: ") and "'a b c d'" in message
    for form in ("label enroll test", "enroll test target|nontarget", "enroll test (to score only)"):
        assert form in message


def test_a_line_of_three_fields_in_an_unlabelled_list_is_told_the_unlabelled_form(tmp_path):
    path = _write(tmp_path / "pairs.txt", "a.wav b.wav\na.wav b.wav c.wav\n")
    message = refused(path)
    assert message.startswith(f"{path}:2: ") and "'a.wav b.wav c.wav'" in message
    assert "enroll test (to score only)" in message
    assert "5 fields" not in message  # an unlabelled line has 2 (an earlier draft said 5)


def test_an_empty_list_a_folder_and_a_missing_file_are_refused(tmp_path):
    empty = _write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(ScoringError, match=re.escape(f"{empty}: the trial list is empty")):
        read_trial_list(empty)
    with pytest.raises(ScoringError, match=re.escape(f"{tmp_path}: a folder, not a trial list")):
        read_trial_list(tmp_path)
    with pytest.raises(ScoringError, match="no such trial list"):
        read_trial_list(tmp_path / "absent.txt")


def test_a_binary_file_is_refused_as_not_text(tmp_path):
    path = tmp_path / "trials.wav"
    path.write_bytes(b"RIFF\xff\xfe\x00\x00WAVE")
    with pytest.raises(ScoringError, match="not a text file"):
        read_trial_list(path)


# --- wav.scp ------------------------------------------------------------------------------------

def test_wav_scp_resolves_relative_paths_against_its_folder(tmp_path):
    elsewhere = tmp_path / "audio" / "u2.wav"
    path = _write(tmp_path / "data" / "wav.scp", f"u1 wav/u1.wav\n\nu2 {elsewhere}\nu3   with space/u3.wav  \n")
    assert read_wav_scp(path) == {"u1": tmp_path / "data" / "wav" / "u1.wav", "u2": elsewhere,
                                  "u3": tmp_path / "data" / "with space" / "u3.wav"}


def test_wav_scp_refuses_a_piped_command_naming_its_line(tmp_path):
    path = _write(tmp_path / "wav.scp", "u1 a.wav\nu2 sox b.flac -t wav - |\n")
    piped = re.escape(f"{path}:2: u2 is a piped command ('sox b.flac -t wav - |')") + ".*write the audio out first"
    with pytest.raises(ScoringError, match=piped):
        read_wav_scp(path)


def test_wav_scp_refuses_a_repeated_id_a_lone_id_and_an_empty_file(tmp_path):
    twice = _write(tmp_path / "twice.scp", "u1 a.wav\nu2 b.wav\nu1 c.wav\n")
    with pytest.raises(ScoringError, match=re.escape(f"{twice}:3: utterance id u1 is listed twice")):
        read_wav_scp(twice)
    lone = _write(tmp_path / "lone.scp", "u1 a.wav\nu2\n")
    with pytest.raises(ScoringError, match=re.escape(f"{lone}:2: expected 'utterance-id path', got 'u2'")):
        read_wav_scp(lone)
    empty = _write(tmp_path / "empty.scp", "\n")
    with pytest.raises(ScoringError, match="the wav.scp is empty"):
        read_wav_scp(empty)
    with pytest.raises(ScoringError, match=r"no such wav.scp \(it is a folder\)"):
        read_wav_scp(tmp_path)


# --- how names become files -----------------------------------------------------------------------

def test_resolver_prefers_wav_scp_then_manifest_utt_id_then_trial_path_then_root(tmp_path):
    manifest = pd.DataFrame({
        "path": ["/corpus/one.wav", "/corpus/two.wav", "/corpus/three.wav"],
        "utt_id": ["shared", "by-utt", "x"],
        "trial_path": ["by-trial", "x", "shared"],
    })
    resolve = resolver(root=tmp_path, wav_scp={"shared": Path("/scp/shared.wav")}, manifest=manifest)
    assert resolve("shared") == Path("/scp/shared.wav")  # wav.scp over both manifest columns
    assert resolve("by-utt") == Path("/corpus/two.wav")
    assert resolve("by-trial") == Path("/corpus/one.wav")
    assert resolve("x") == Path("/corpus/three.wav")  # utt_id of one row over trial_path of another
    assert resolve("/corpus/two.wav") == Path("/corpus/two.wav")  # a manifest path names itself
    assert resolve("id1/a/0001.wav") == tmp_path / "id1" / "a" / "0001.wav"
    assert resolver()("id1/a/0001.wav") == Path("id1/a/0001.wav")  # no root: as written


# --- score files ----------------------------------------------------------------------------------

def test_write_scores_writes_enroll_test_score_and_the_known_label(tmp_path):
    scored = pd.DataFrame({"enroll": ["a", "a", "b"], "test": ["b", "c", "c"], "label": [1, 0, -1],
                           "score": [0.5, -0.25, 0.1234567]})
    out = write_scores(tmp_path / "new" / "scores.txt", scored)
    assert out == tmp_path / "new" / "scores.txt"
    assert out.read_text() == "a b 0.500000 target\na c -0.250000 nontarget\nb c 0.123457\n"
    write_scores(out, scored.drop(columns="label"))
    assert out.read_text() == "a b 0.500000\na c -0.250000\nb c 0.123457\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.txt"]


# --- Kaldi vectors --------------------------------------------------------------------------------

def test_kaldi_vectors_read_back_equal_from_an_scp_pointing_at_the_final_ark(tmp_path, monkeypatch):
    import kaldiio

    monkeypatch.chdir(tmp_path)  # a relative name: the scp must still point at the archive
    ids = ["spk1-u1", "spk1-u2", "spk2-u1"]
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    ark, scp = write_kaldi_vectors(Path("out") / "x.ark", ids, vectors)
    assert (ark, scp) == (Path("out") / "x.ark", Path("out") / "x.scp")
    lines = (tmp_path / "out" / "x.scp").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert {line.split()[1].rsplit(":", 1)[0] for line in lines} == {str(tmp_path / "out" / "x.ark")}
    assert sorted(os.listdir(tmp_path / "out")) == ["x.ark", "x.scp"]  # no temporary files left
    for where in (tmp_path, tmp_path.parent):  # read from anywhere, as Kaldi tools would
        monkeypatch.chdir(where)
        table = kaldiio.load_scp(str(tmp_path / "out" / "x.scp"))
        assert list(table) == ids
        for name, vector in zip(ids, vectors):
            assert table[name].dtype == np.float32
            np.testing.assert_array_equal(table[name], vector)


def test_kaldi_vectors_overwrite_an_earlier_archive_completely(tmp_path):
    import kaldiio

    write_kaldi_vectors(tmp_path / "x.ark", ["a", "b", "c"], np.ones((3, 4)))
    write_kaldi_vectors(tmp_path / "x.ark", ["d"], np.full((1, 2), 2.0))
    table = kaldiio.load_scp(str(tmp_path / "x.scp"))
    assert list(table) == ["d"]
    np.testing.assert_array_equal(table["d"], [2.0, 2.0])
    assert sorted(os.listdir(tmp_path)) == ["x.ark", "x.scp"]


@pytest.mark.parametrize("name, ids, count, message", [
    ("x.txt", ["a"], 1, "must end in .ark"),
    ("x.ark", ["a", "a"], 2, "need one distinct id per vector, got 1 distinct ids for 2"),
    ("x.ark", ["a", "b"], 3, "need one distinct id per vector, got 2 distinct ids for 3"),
    ("x.ark", ["spk 1", "b"], 2, "may not be empty or hold white space"),
    ("x.ark", ["a\tb"], 1, "may not be empty or hold white space"),
    ("x.ark", [""], 1, "may not be empty or hold white space"),
])
def test_kaldi_vectors_refuse_a_bad_name_or_ids_and_write_nothing(tmp_path, name, ids, count, message):
    with pytest.raises(ScoringError, match=message):
        write_kaldi_vectors(tmp_path / name, ids, np.zeros((count, 3), np.float32))
    assert os.listdir(tmp_path) == []
