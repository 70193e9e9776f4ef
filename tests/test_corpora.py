"""Corpus readers on tiny fixtures of each layout, and on the bundled FSDD."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from conftest import FSDD, write_tone
from subspaces.corpora import (
    CORPUS_KINDS,
    CorpusError,
    fsdd_root,
    load_corpus,
    read_csv_corpus,
    read_fsdd,
    read_librispeech,
    read_libritts,
    read_speech_commands,
    read_trials,
    read_voxceleb1,
    relative_paths,
    write_silence_clips,
)
from subspaces.manifest import COLUMNS, ManifestError, read_manifest, write_manifest


def tone(path: Path, seconds: float = 0.1, sample_rate: int = 8000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tone(path, seconds, sample_rate=sample_rate, seed=seed)


def check_manifest_columns(table: pd.DataFrame) -> None:
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert table["utt_id"].is_unique
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])


# --- FSDD ---------------------------------------------------------------------------------


def test_bundled_fsdd_counts():
    table = read_fsdd()
    check_manifest_columns(table)
    assert fsdd_root() / "recordings" == FSDD
    assert len(table) == 3000
    assert table["speaker"].nunique() == 6
    assert sorted(table["content"].unique()) == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    assert (table["split"] == "test").sum() == 300
    assert (table["sample_rate"] == 8000).all()
    row = table.set_index("utt_id").loc["3_theo_12"]
    assert (row["speaker"], row["content"], row["text"], row["split"]) == ("theo", "three", "three", "train")
    assert row["duration_s"] == pytest.approx(sf.info(str(FSDD / "3_theo_12.wav")).frames / 8000)
    assert table.set_index("utt_id").loc["7_lucas_4", "split"] == "test"
    assert table.set_index("utt_id").loc["7_lucas_5", "split"] == "train"
    assert set(table.loc[table["speaker"] == "nicolas", "accent"]) == {"BEL/French"}


def test_fsdd_subset_is_seeded_and_balanced():
    first = read_fsdd(limit_per_speaker_digit=10, seed=1)
    again = read_fsdd(limit_per_speaker_digit=10, seed=1)
    other = read_fsdd(limit_per_speaker_digit=10, seed=2)
    assert len(first) == 600
    assert (first.groupby(["speaker", "content"]).size() == 10).all()
    assert first["utt_id"].tolist() == again["utt_id"].tolist()
    assert first["utt_id"].tolist() != other["utt_id"].tolist()
    lowest = read_fsdd(limit_per_speaker_digit=3, seed=None)
    assert sorted(lowest["index"].unique()) == [0, 1, 2]
    assert (lowest["split"] == "test").all()
    with pytest.raises(CorpusError, match="at least 1"):
        read_fsdd(limit_per_speaker_digit=0)


def test_fsdd_from_a_folder(tmp_path):
    for digit in (0, 7):
        for speaker in ("ann", "bob"):
            for index in (0, 4, 5, 12):
                tone(tmp_path / "recordings" / f"{digit}_{speaker}_{index}.wav", seed=index)
    table = load_corpus(f"fsdd:{tmp_path}")
    check_manifest_columns(table)
    assert len(table) == 16
    assert set(table["content"]) == {"zero", "seven"}
    assert table.groupby("split").size().to_dict() == {"test": 8, "train": 8}
    assert set(table.loc[table["index"] >= 5, "split"]) == {"train"}
    assert table["duration_s"].iloc[0] == pytest.approx(0.1)
    # The recordings folder itself is accepted too.
    assert len(read_fsdd(tmp_path / "recordings")) == 16
    tone(tmp_path / "recordings" / "seven_bob_1.wav")
    with pytest.raises(CorpusError, match="seven_bob_1.wav.*digit"):
        read_fsdd(tmp_path)


# --- Speech Commands --------------------------------------------------------------------


@pytest.fixture
def speech_commands(tmp_path) -> Path:
    root = tmp_path / "speech_commands_v0.02"
    clips = {
        "yes": ["aaaa0001_nohash_0", "aaaa0001_nohash_1", "bbbb0002_nohash_0"],
        "no": ["aaaa0001_nohash_0", "cccc0003_nohash_0"],
        "bed": ["bbbb0002_nohash_0", "dddd0004_nohash_0"],
    }
    for word, stems in clips.items():
        for i, stem in enumerate(stems):
            tone(root / word / f"{stem}.wav", 0.2, 16000, seed=i)
    tone(root / "_background_noise_" / "white_noise.wav", 1.0, 16000)
    (root / "validation_list.txt").write_text("yes/bbbb0002_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/cccc0003_nohash_0.wav\nbed/dddd0004_nohash_0.wav\n\n")
    (root / "README.md").write_text("not audio")
    return root


def test_speech_commands_all_words(speech_commands):
    table = load_corpus(f"speech-commands:{speech_commands}")
    check_manifest_columns(table)
    assert len(table) == 7  # background noise is not an utterance
    rows = table.set_index("utt_id")
    assert rows.loc["yes-bbbb0002_nohash_0", ["speaker", "content", "text", "split"]].tolist() == [
        "bbbb0002", "yes", "yes", "validation"
    ]
    assert rows.loc["bed-dddd0004_nohash_0", ["content", "split"]].tolist() == ["bed", "test"]
    assert rows.loc["no-aaaa0001_nohash_0", "split"] == "train"
    assert table.groupby("split").size().to_dict() == {"test": 2, "train": 4, "validation": 1}
    assert set(table["speaker"]) == {"aaaa0001", "bbbb0002", "cccc0003", "dddd0004"}
    assert set(table["content"]) == {"yes", "no", "bed"}


def test_speech_commands_12_classes(speech_commands):
    table = load_corpus(f"speech-commands-12:{speech_commands}")
    rows = table.set_index("utt_id")
    assert rows.loc["bed-bbbb0002_nohash_0", ["content", "text"]].tolist() == ["_unknown_", "bed"]
    assert rows.loc["yes-aaaa0001_nohash_1", "content"] == "yes"
    assert sorted(table["content"].unique()) == ["_unknown_", "no", "yes"]


def test_speech_commands_test_archive_layout(tmp_path):
    root = tmp_path / "speech_commands_test_set_v0.01"
    tone(root / "yes" / "eeee0005_nohash_0.wav", 0.2, 16000)
    tone(root / "_unknown_" / "ffff0006_nohash_2.wav", 0.2, 16000)
    tone(root / "_silence_" / "silence_0001.wav", 0.2, 16000)
    with pytest.raises(CorpusError, match="default_split='test'"):
        read_speech_commands(root, label_set="12")
    table = read_speech_commands(root, label_set="12", default_split="test")
    assert sorted(table["content"]) == ["_silence_", "_unknown_", "yes"]
    assert (table["split"] == "test").all()
    assert table.set_index("content").loc["_silence_", "speaker"] == ""
    # With every word as its own class, the silence and unknown folders are not words.
    assert read_speech_commands(root, default_split="test")["content"].tolist() == ["yes"]


def test_speech_commands_errors(speech_commands):
    (speech_commands / "testing_list.txt").write_text("no/cccc0003_nohash_0.wav\nno/zzzz_nohash_9.wav\n")
    with pytest.raises(CorpusError, match=r"testing_list.txt:2: lists no/zzzz_nohash_9.wav"):
        read_speech_commands(speech_commands)
    (speech_commands / "testing_list.txt").unlink()
    with pytest.raises(CorpusError, match="testing_list.txt: missing"):
        read_speech_commands(speech_commands)
    with pytest.raises(CorpusError, match="label_set"):
        read_speech_commands(speech_commands, label_set="35")
    tone(speech_commands / "yes" / "no_hash_here.wav")
    (speech_commands / "validation_list.txt").unlink()
    with pytest.raises(CorpusError, match="no_hash_here.wav.*nohash"):
        read_speech_commands(speech_commands, default_split="train")


def test_silence_clips_from_background_noise(speech_commands, tmp_path):
    table = write_silence_clips(speech_commands, tmp_path / "silence", 4, split="train", seconds=0.5, seed=3)
    check_manifest_columns(table)
    assert len(table) == 4
    assert (table["content"] == "_silence_").all() and (table["split"] == "train").all()
    assert table["duration_s"].tolist() == pytest.approx([0.5] * 4)
    assert sorted(p.name for p in (tmp_path / "silence" / "_silence_").iterdir()) == [
        f"train_silence_{i:05d}.wav" for i in range(4)
    ]
    noise = sf.read(str(speech_commands / "_background_noise_" / "white_noise.wav"), dtype="float32")[0]
    clip = sf.read(table.loc[0, "path"], dtype="float32")[0]
    # Each clip is a contiguous piece of the noise recording.
    starts = [s for s in range(len(noise) - len(clip) + 1) if abs(noise[s] - clip[0]) < 1e-4]
    assert any(abs(noise[s : s + len(clip)] - clip).max() < 1e-4 for s in starts)
    with pytest.raises(CorpusError, match="shorter than one 2.0 s clip"):
        write_silence_clips(speech_commands, tmp_path / "silence", 1, seconds=2.0)


# --- VoxCeleb1 -----------------------------------------------------------------------


@pytest.fixture
def voxceleb(tmp_path) -> Path:
    root = tmp_path / "voxceleb1"
    for speaker, video, utt in [
        ("id10270", "5r0dWxy17C8", "00001"), ("id10270", "5r0dWxy17C8", "00002"),
        ("id10270", "x6uYqmx31kE", "00001"), ("id10271", "1gtz-CUIygI", "00001"),
        ("id10271", "1gtz-CUIygI", "00003"),
    ]:
        tone(root / "wav" / speaker / video / f"{utt}.wav", 0.2, 16000)
    (root / "veri_test2.txt").write_text(
        "1 id10270/5r0dWxy17C8/00001.wav id10270/x6uYqmx31kE/00001.wav\n"
        "0 id10270/5r0dWxy17C8/00001.wav id10271/1gtz-CUIygI/00001.wav\n"
    )
    return root


def test_voxceleb1_all_and_by_trials(voxceleb):
    table = load_corpus(f"voxceleb1:{voxceleb}")
    check_manifest_columns(table)
    assert len(table) == 5
    assert set(table["speaker"]) == {"id10270", "id10271"}
    assert (table["content"] == "").all() and (table["split"] == "test").all()
    row = table.set_index("utt_id").loc["id10271-1gtz-CUIygI-00003"]
    assert (row["video"], row["trial_path"]) == ("1gtz-CUIygI", "id10271/1gtz-CUIygI/00003.wav")

    used = read_voxceleb1(voxceleb, trials=voxceleb / "veri_test2.txt")
    assert sorted(used["trial_path"]) == [
        "id10270/5r0dWxy17C8/00001.wav", "id10270/x6uYqmx31kE/00001.wav", "id10271/1gtz-CUIygI/00001.wav"
    ]
    # wav/ itself is accepted as the root.
    assert len(read_voxceleb1(voxceleb / "wav")) == 5


def test_voxceleb1_trial_naming_a_missing_file(voxceleb):
    trials = voxceleb / "bad_trials.txt"
    trials.write_text("1 id10270/5r0dWxy17C8/00001.wav id10270/nope/00009.wav\n")
    with pytest.raises(CorpusError, match=r"1 of 2 utterance\(s\) are not under .*id10270/nope/00009.wav"):
        read_voxceleb1(voxceleb, trials=trials)
    trials.write_text("1 id10270/5r0dWxy17C8/00001.wav ../wav/id10270/5r0dWxy17C8/00001.wav\n")
    with pytest.raises(CorpusError, match="trial paths must be"):
        read_voxceleb1(voxceleb, trials=trials)


def test_read_trials(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a/b/1.wav a/c/2.wav\n\n0 a/b/1.wav d/e/3.wav\n")
    trials = read_trials(path)
    assert trials.to_dict("list") == {"label": [1, 0], "enroll": ["a/b/1.wav"] * 2, "test": ["a/c/2.wav", "d/e/3.wav"]}
    assert trials["label"].dtype.kind == "i"

    path.write_text("1 a/b/1.wav a/c/2.wav\n1 a/b/1.wav\n")
    with pytest.raises(CorpusError, match=r"trials.txt:2: expected 3 fields"):
        read_trials(path)
    path.write_text("target a/b/1.wav a/c/2.wav\n")
    with pytest.raises(CorpusError, match=r"trials.txt:1: label must be 1 \(target\) or 0"):
        read_trials(path)
    path.write_text("\n")
    with pytest.raises(CorpusError, match="empty"):
        read_trials(path)
    with pytest.raises(CorpusError, match="no such trial list"):
        read_trials(tmp_path / "missing.txt")


# --- LibriSpeech and LibriTTS ------------------------------------------------------------


def test_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    chapters = {("test-clean", "84", "121123"): ["HELLO WORLD", "GOOD MORNING"], ("dev-clean", "174", "50561"): ["ONE"]}
    for (subset, speaker, chapter), lines in chapters.items():
        folder = root / subset / speaker / chapter
        transcript = []
        for i, line in enumerate(lines):
            utt_id = f"{speaker}-{chapter}-{i:04d}"
            tone(folder / f"{utt_id}.flac", 0.2, 16000, seed=i)
            transcript.append(f"{utt_id} {line}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(transcript) + "\n")
    table = load_corpus(f"librispeech:{root}")
    check_manifest_columns(table)
    rows = table.set_index("utt_id")
    assert rows.loc["84-121123-0001", ["speaker", "content", "text", "split", "subset", "chapter"]].tolist() == [
        "84", "GOOD MORNING", "GOOD MORNING", "test", "test-clean", "121123"
    ]
    assert rows.loc["174-50561-0000", "split"] == "validation"
    assert (table["sample_rate"] == 16000).all()
    # One subset folder alone works as the root.
    assert len(read_librispeech(root / "test-clean")) == 2

    (root / "test-clean" / "84" / "121123" / "84-121123-0001.flac").unlink()
    with pytest.raises(CorpusError, match=r"84-121123.trans.txt:2: no audio file .*84-121123-0001.flac"):
        read_librispeech(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no \*.trans.txt files; expected LibriSpeech"):
        read_librispeech(tmp_path / "empty")


def test_libritts(tmp_path):
    root = tmp_path / "LibriTTS" / "dev-clean"
    folder = root / "84" / "121123"
    stem = "84_121123_000007_000001"
    tone(folder / f"{stem}.wav", 0.2, 24000)
    (folder / f"{stem}.normalized.txt").write_text("Go, do you hear?\n")
    (folder / f"{stem}.original.txt").write_text("'Go, do you hear?'\n")
    table = load_corpus(f"libritts:{root.parent}")
    check_manifest_columns(table)
    assert table.loc[0, ["utt_id", "speaker", "content", "split", "sample_rate"]].tolist() == [
        stem, "84", "Go, do you hear?", "validation", 24000
    ]
    assert read_libritts(root, transcript="original").loc[0, "text"] == "'Go, do you hear?'"
    (folder / f"{stem}.normalized.txt").unlink()
    with pytest.raises(CorpusError, match=r"no transcript 84_121123_000007_000001.normalized.txt"):
        read_libritts(root)


# --- CSV ---------------------------------------------------------------------------------


def test_csv_corpus_fills_columns(tmp_path):
    tone(tmp_path / "audio" / "a.wav", 0.25, 16000)
    other = tone(tmp_path / "elsewhere" / "b.wav", 0.5, 8000)
    csv = tmp_path / "audio" / "mine.csv"
    csv.write_text(f"path,speaker,content,channel\na.wav,s1,yes,phone\n{other},s2,no,mic\n")
    table = load_corpus(f"csv:{csv}")
    check_manifest_columns(table)
    assert table["utt_id"].tolist() == ["a", "b"]
    assert table["text"].tolist() == ["yes", "no"]
    assert (table["split"] == "test").all() and (table["source"] == "mine").all()
    assert table["duration_s"].tolist() == pytest.approx([0.25, 0.5])
    assert table["sample_rate"].tolist() == [16000, 8000]
    assert table["channel"].tolist() == ["phone", "mic"]
    assert table.loc[0, "path"] == str((tmp_path / "audio" / "a.wav").resolve())


def test_csv_corpus_keeps_given_columns(tmp_path):
    tone(tmp_path / "a.wav")
    csv = tmp_path / "x.csv"
    csv.write_text("utt_id,path,speaker,content,text,split,duration_s\nclip-1,a.wav,s1,yes,Yes!,train,99\n")
    table = read_csv_corpus(csv)
    assert table.loc[0, ["utt_id", "text", "split"]].tolist() == ["clip-1", "Yes!", "train"]
    assert table.loc[0, "duration_s"] == pytest.approx(0.1)  # the header wins over the CSV


def test_csv_corpus_errors(tmp_path):
    tone(tmp_path / "a.wav")
    csv = tmp_path / "x.csv"
    csv.write_text("path,speaker\na.wav,s1\n")
    with pytest.raises(CorpusError, match="missing column.*content"):
        read_csv_corpus(csv)
    csv.write_text("path,speaker,content\na.wav,s1,yes\nb.wav,s1,no\n")
    with pytest.raises(CorpusError, match=r"1 audio file\(s\) not found, e.g. line 3: .*b.wav"):
        read_csv_corpus(csv)
    csv.write_text("path,speaker,content\na.wav,,yes\n")
    with pytest.raises(CorpusError, match="empty speaker on line.* 2"):
        read_csv_corpus(csv)
    (tmp_path / "sub").mkdir()
    tone(tmp_path / "sub" / "a.wav")
    csv.write_text("path,speaker,content\na.wav,s1,yes\nsub/a.wav,s2,yes\n")
    with pytest.raises(CorpusError, match="utt_id a repeated"):
        read_csv_corpus(csv)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    csv.write_text("path,speaker,content\nbroken.wav,s1,yes\n")
    with pytest.raises(CorpusError, match="broken.wav: cannot read the audio header"):
        read_csv_corpus(csv)


# --- Entry point and paths ---------------------------------------------------------------


def test_load_corpus_specs(tmp_path):
    assert CORPUS_KINDS == (
        "fsdd", "speech-commands", "speech-commands-12", "voxceleb1", "librispeech", "libritts", "csv",
        "klettres", "ktuberling",
    )
    assert len(load_corpus("fsdd", limit_per_speaker_digit=1)) == 60
    with pytest.raises(CorpusError, match="unknown corpus kind 'timit'.*valid kinds: fsdd, speech-commands"):
        load_corpus("timit:/x")
    with pytest.raises(CorpusError, match="needs a path: write it as voxceleb1:PATH"):
        load_corpus("voxceleb1")
    with pytest.raises(CorpusError, match="empty path"):
        load_corpus("csv:")
    missing = tmp_path / "not-here"
    with pytest.raises(CorpusError, match=f"{missing}: no such folder; expected a VoxCeleb1 folder with wav/"):
        load_corpus(f"voxceleb1:{missing}")
    with pytest.raises(CorpusError, match="no such CSV file"):
        load_corpus(f"csv:{missing}.csv")
    (tmp_path / "list.csv").mkdir()
    with pytest.raises(CorpusError, match=r"list\.csv: is a directory, not a CSV file"):
        load_corpus(f"csv:{tmp_path / 'list.csv'}")


def test_manifest_that_is_a_folder_or_has_numbers_for_paths(tmp_path):
    (tmp_path / "manifest.csv").mkdir()
    with pytest.raises(ManifestError, match=r"manifest\.csv: is a directory, not a manifest file"):
        read_manifest(tmp_path / "manifest.csv")
    table = load_corpus("fsdd", limit_per_speaker_digit=1).head(3).assign(path=[0, 1, 2])
    table.to_parquet(tmp_path / "numbers.parquet", index=False)
    with pytest.raises(ManifestError, match=r"numbers\.parquet: the path column must be text .*, got int64"):
        read_manifest(tmp_path / "numbers.parquet")


def test_relative_paths_round_trip_next_to_the_data(tmp_path):
    for index in (0, 5):
        tone(tmp_path / "recordings" / f"1_ann_{index}.wav")
    outside = tone(tmp_path.parent / f"{tmp_path.name}-outside" / "b.wav")
    table = read_fsdd(tmp_path)
    extra = table.iloc[[0]].assign(utt_id="outside", path=str(outside))
    table = pd.concat([table, extra], ignore_index=True)
    table.attrs["root"] = str(tmp_path)
    relative = relative_paths(table, tmp_path)
    assert relative["path"].tolist() == ["recordings/1_ann_0.wav", "recordings/1_ann_5.wav", str(outside.resolve())]
    write_manifest(relative, tmp_path / "manifest.csv")
    back = read_manifest(tmp_path / "manifest.csv")
    assert back["speaker"].tolist() == ["ann"] * 3
    assert back["duration_s"].tolist() == pytest.approx([0.1] * 3)
