"""Speaker enrollment, identification and verification, and saving a speaker database.

A tiny untrained model on a tiny random Whisper: its scores are cosines like any
model's, but which speaker wins is arbitrary, so the tests check the scores against
numpy, never the winner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FSDD, tiny_whisper_encoder
from test_inference import make_model, repeated

from subspaces.audio import AudioError
from subspaces.backbones import WhisperBackbone
from subspaces.inference import InferenceError, SubspaceEncoder, calibrate_threshold, load_model
from subspaces.speakers import INDEX_FILE, MATRIX_FILE, SpeakerDatabase, SpeakerDatabaseError

# Three FSDD speakers: three enrollment clips each and one held-out clip.
ENROLL = {speaker: [FSDD / f"{digit}_{speaker}_{index}.wav" for digit, index in ((0, 1), (4, 2), (8, 3))]
          for speaker in ("george", "jackson", "theo")}
HELD_OUT = {speaker: FSDD / f"6_{speaker}_4.wav" for speaker in ENROLL}


@pytest.fixture(scope="module")
def backbone() -> WhisperBackbone:
    return WhisperBackbone(tiny_whisper_encoder(), name="tiny-whisper", revision="random-seed-0")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, backbone) -> SubspaceEncoder:
    return load_model(make_model(tmp_path_factory.mktemp("model") / "model", backbone), backbone=backbone)


@pytest.fixture(scope="module")
def database(encoder) -> SpeakerDatabase:
    database = SpeakerDatabase(encoder)
    for speaker, files in ENROLL.items():
        database.register(speaker, files)
    return database


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(vectors).astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_enrollment_is_the_mean_of_unit_vectors(encoder, database):
    assert database.names == ["george", "jackson", "theo"]
    assert database.counts == {"george": 3, "jackson": 3, "theo": 3}
    assert database.means.dtype == np.float32 and database.means.shape == (3, encoder.subspaces["speaker"])
    for row, files in zip(database.means, ENROLL.values()):
        expected = unit(encoder.embed(files)["speaker"]).mean(axis=0)
        np.testing.assert_allclose(row, expected, atol=1e-6)


def test_identify_ranks_every_speaker_by_cosine_with_their_mean(encoder, database):
    for clip in HELD_OUT.values():
        ranking = database.identify(clip)  # top_k 5 > 3 speakers: all 3 come back
        assert len(ranking) == 3 and {name for name, _ in ranking} == set(ENROLL)
        scores = [score for _, score in ranking]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0 and isinstance(s, float) for s in scores)
        query = unit(encoder.embed(clip)["speaker"])[0]
        for name, score in ranking:
            mean = database.means[database.names.index(name)]
            assert score == pytest.approx(float(query @ unit(mean)[0]), abs=1e-6)
        assert database.identify(clip, top_k=2) == ranking[:2]
        assert database.identify(encoder.read(clip), top_k=1)[0] == pytest.approx(ranking[0], abs=1e-6)


def test_compare_is_the_cosine_of_two_clips(encoder, database):
    a, b = HELD_OUT["george"], HELD_OUT["theo"]
    vectors = unit(encoder.embed([a, b])["speaker"])
    assert database.compare(a, b) == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-6)
    assert database.compare(a, a) == pytest.approx(1.0, abs=1e-6)


def test_save_and_load_give_the_same_identities(tmp_path, backbone, encoder, database):
    folder = database.save(tmp_path / "speakers")
    assert sorted(p.name for p in folder.iterdir()) == [INDEX_FILE, MATRIX_FILE]  # no temporary files left
    index = json.loads((folder / INDEX_FILE).read_text())
    assert [s["name"] for s in index["speakers"]] == database.names and index["subspace"] == "speaker"
    assert index["model"]["folder"] == str(encoder.folder.resolve())
    assert (index["model"]["backbone"], index["model"]["backbone_revision"]) == (backbone.name, backbone.revision)
    assert index["model"]["digest"].startswith("sha256:")

    loaded = SpeakerDatabase.load(folder, encoder)
    assert loaded.names == database.names and loaded.counts == database.counts
    np.testing.assert_array_equal(loaded.means, database.means)
    for clip in HELD_OUT.values():
        assert loaded.identify(clip) == database.identify(clip)


def test_an_empty_database_saves_loads_and_refuses_to_identify(tmp_path, encoder):
    empty = SpeakerDatabase.load(SpeakerDatabase(encoder).save(tmp_path / "empty"), encoder)
    assert empty.names == [] and empty.means.shape == (0, encoder.subspaces["speaker"])
    with pytest.raises(SpeakerDatabaseError, match="database is empty: register"):
        empty.identify(HELD_OUT["george"])


def test_a_database_is_refused_by_another_model_or_backbone(tmp_path, backbone, encoder, database):
    folder = database.save(tmp_path / "speakers")
    other = load_model(make_model(tmp_path / "other", backbone, seed=1), backbone=backbone)
    with pytest.raises(SpeakerDatabaseError, match=rf"{INDEX_FILE}: enrolled with the model at .*register the "
                                                    "speakers again"):
        SpeakerDatabase.load(folder, other)
    # The same model weights fed by other backbone weights: refused too.
    other_backbone = WhisperBackbone(tiny_whisper_encoder(seed=1), name="tiny-whisper", revision="random-seed-1")
    with pytest.raises(SpeakerDatabaseError, match="revision random-seed-0.*revision random-seed-1"):
        SpeakerDatabase.load(folder, SubspaceEncoder(encoder.model, other_backbone, encoder.folder))


def test_damaged_files_are_refused_naming_them(tmp_path, encoder, database):
    folder = database.save(tmp_path / "speakers")
    matrix = (folder / MATRIX_FILE).read_bytes()
    (folder / MATRIX_FILE).write_bytes(matrix[: len(matrix) // 2])
    with pytest.raises(SpeakerDatabaseError, match=rf"{MATRIX_FILE}: not a readable safetensors file"):
        SpeakerDatabase.load(folder, encoder)

    # A matrix from another save (theo enrolled from two clips) does not pass for this one.
    smaller = SpeakerDatabase.load(database.save(tmp_path / "copy"), encoder)
    smaller.register("theo", ENROLL["theo"][:2])
    smaller.save(tmp_path / "copy")
    (folder / MATRIX_FILE).write_bytes((tmp_path / "copy" / MATRIX_FILE).read_bytes())
    with pytest.raises(SpeakerDatabaseError, match=rf"{MATRIX_FILE}: does not match .*{INDEX_FILE}"):
        SpeakerDatabase.load(folder, encoder)

    (folder / INDEX_FILE).write_text('{"format": "speech-subspaces speaker database", "form')
    with pytest.raises(SpeakerDatabaseError, match=rf"{INDEX_FILE}: not valid JSON"):
        SpeakerDatabase.load(folder, encoder)
    (folder / INDEX_FILE).unlink()
    with pytest.raises(SpeakerDatabaseError, match=f"{INDEX_FILE} is missing"):
        SpeakerDatabase.load(folder, encoder)
    with pytest.raises(SpeakerDatabaseError, match="no such speaker database folder"):
        SpeakerDatabase.load(tmp_path / "nowhere", encoder)


def test_verify_needs_a_calibrated_threshold_then_uses_it(tmp_path, backbone):
    folder = make_model(tmp_path / "model", backbone)
    encoder = load_model(folder, backbone=backbone)
    database = SpeakerDatabase(encoder)
    database.register("george", ENROLL["george"])
    with pytest.raises(InferenceError, match="no decision threshold calibrated.*calibrate_threshold"):
        database.verify("george", HELD_OUT["george"])

    calibrate_threshold(folder, *repeated([0.9, 0.5, 0.6, 0.4, 0.2, 0.1], [1, 1, 0, 0, 0, 0], 125))  # 0.55
    score, accepted = database.verify("george", HELD_OUT["george"])
    query = unit(encoder.embed(HELD_OUT["george"])["speaker"])[0]
    assert score == pytest.approx(float(query @ unit(database.means[0])[0]), abs=1e-6)
    assert accepted == (score >= 0.55)
    with pytest.raises(SpeakerDatabaseError, match="no speaker 'nobody'.*'george'"):
        database.verify("nobody", HELD_OUT["george"])


def test_register_replaces_remove_forgets_and_bad_requests_say_why(tmp_path, encoder):
    database = SpeakerDatabase(encoder)
    for speaker, files in ENROLL.items():
        database.register(speaker, files)
    database.register("george", ENROLL["george"][0])  # one path, not a list: one clip
    assert database.names == ["george", "jackson", "theo"] and database.counts["george"] == 1
    np.testing.assert_allclose(database.means[0], unit(encoder.embed(ENROLL["george"][0])["speaker"])[0], atol=1e-6)
    database.remove("jackson")
    assert database.names == ["george", "theo"] and "jackson" not in database

    with pytest.raises(SpeakerDatabaseError, match="no enrollment clips given for speaker 'lucas'"):
        database.register("lucas", [])
    with pytest.raises(SpeakerDatabaseError, match="non-empty string"):
        database.register(" ", ENROLL["theo"])
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav"):
        database.register("lucas", [ENROLL["theo"][0], missing])
    assert database.names == ["george", "theo"]  # nothing changed
    with pytest.raises(SpeakerDatabaseError, match="no speaker 'jackson'.*'george', 'theo'"):
        database.remove("jackson")
    with pytest.raises(SpeakerDatabaseError, match="top_k must be a positive integer, got 0"):
        database.identify(HELD_OUT["george"], top_k=0)
    with pytest.raises(SpeakerDatabaseError, match="expected one clip"):
        database.identify([HELD_OUT["george"], HELD_OUT["theo"]])
    with pytest.raises(SpeakerDatabaseError, match="no subspace 'pitch'.*speaker, content"):
        SpeakerDatabase(encoder, subspace="pitch")
