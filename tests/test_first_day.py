"""A new user's first day, end to end with the shipped model and the real whisper-base backbone.

The clips are real speech: FSDD's spoken digits (`{digit}_{speaker}_{index}.wav`). Each CLI
call goes through `subspaces.cli.main` in-process; the model it loads is cached for the
module (the `cached_loads` fixture: the real `load_model`, run once per folder) so the file
costs one backbone load, not one per call.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

import subspaces
from subspaces import inference
from subspaces.cli import main
from subspaces.inference import DEFAULT_MODEL, THRESHOLDS_FILE, load_model, model_folder, pretrained_models
from subspaces.metrics import eer

from conftest import FSDD

SHIPPED = Path(subspaces.__file__).parent / "data" / "pretrained" / "whisper-base-subspaces"
SHIPPED_THRESHOLD = json.loads((SHIPPED / THRESHOLDS_FILE).read_text())["speaker"]["threshold"]  # 0.4842


def clip(digit: int, speaker: str, index: int) -> Path:
    return FSDD / f"{digit}_{speaker}_{index}.wav"


@pytest.fixture(scope="module")
def cached_loads():
    """Make `inference.load_model` (which the CLI calls) load each model folder once: the
    real function the first time, the same encoder after. Yields the names it was called with."""
    real, encoders, names = inference.load_model, {}, []

    def load(name_or_dir=DEFAULT_MODEL, *, device="cpu", **options):
        names.append(str(name_or_dir))
        key = (model_folder(name_or_dir).resolve(), device)
        if key not in encoders:
            encoders[key] = real(name_or_dir, device=device, **options)
        return encoders[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "load_model", load)
        yield names


@pytest.fixture(scope="module")
def encoder(cached_loads):
    """The shipped model, loaded with the Python API as a user would: `load_model()`."""
    return inference.load_model()


def unit_cosines(encoder, pairs: list[tuple[Path, Path]], subspace: str = "speaker") -> np.ndarray:
    """float64[len(pairs)]: the cosine of each pair's vectors, computed with the Python API."""
    files = list(dict.fromkeys(f for pair in pairs for f in pair))
    vectors = encoder.embed(files)[subspace].astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    row = {f: i for i, f in enumerate(files)}
    return np.array([vectors[row[a]] @ vectors[row[b]] for a, b in pairs])


# --- the shipped model ----------------------------------------------------------------------------

def test_one_model_ships_and_is_the_default():
    assert pretrained_models() == ["whisper-base-subspaces"]
    assert DEFAULT_MODEL == "whisper-base-subspaces"
    assert model_folder("whisper-base-subspaces") == SHIPPED
    for name in ("config.json", "model.safetensors", THRESHOLDS_FILE, "README.md"):
        assert (SHIPPED / name).is_file(), name


def test_the_shipped_threshold_was_calibrated_on_enough_dev_trials():
    record = json.loads((SHIPPED / THRESHOLDS_FILE).read_text())["speaker"]
    assert "dev" in record["data"]  # the development suite, never the test set (FSDD)
    assert "fsdd" not in record["data"].lower()
    assert record["operating_point"] == "eer"
    assert record["num_target_trials"] >= inference.MIN_TARGET_TRIALS == 50
    assert record["num_nontarget_trials"] >= inference.MIN_NONTARGET_TRIALS == 500
    assert -1 < record["threshold"] < 1


def test_the_model_card_names_the_stored_threshold():
    card = (SHIPPED / "README.md").read_text()
    threshold = json.loads((SHIPPED / THRESHOLDS_FILE).read_text())["speaker"]["threshold"]
    assert card.startswith("---\nlibrary_name: speech-subspaces\n")
    assert f"Speaker threshold {threshold:.4f}" in card
    assert 'subspaces.load_model("whisper-base-subspaces")' in card


def test_load_model_without_a_name_loads_the_shipped_model(encoder):
    assert encoder.folder == SHIPPED
    assert encoder.subspaces == {"speaker": 384, "content": 384}
    assert encoder.threshold("speaker") == SHIPPED_THRESHOLD


# --- verify ---------------------------------------------------------------------------------------

VERIFY_LINE = re.compile(rf"score (-?\d\.\d{{4}})  threshold {SHIPPED_THRESHOLD:.4f} \(eer on (.*dev.*)\)  "
                         r"-> (same speaker|different speakers)")


def verify(capsys, *argv: str) -> tuple[float, str]:
    assert main(["verify", *argv]) == 0
    out = capsys.readouterr().out.strip()
    found = VERIFY_LINE.fullmatch(out)
    assert found, out
    return float(found[1]), found[3]


def test_verify_with_the_default_model_decides_same_and_different_speakers(capsys, encoder, cached_loads):
    same_a, same_b = clip(0, "george", 0), clip(1, "george", 0)
    other = clip(0, "jackson", 0)
    score, decision = verify(capsys, str(same_a), str(same_b))
    assert cached_loads[-1] == DEFAULT_MODEL
    assert score == pytest.approx(encoder.verify(same_a, same_b)[0], abs=5e-5)
    assert decision == "same speaker"  # seen: 0.79 against a threshold of 0.48
    score, decision = verify(capsys, str(same_a), str(other))
    assert score == pytest.approx(encoder.verify(same_a, other)[0], abs=5e-5)
    assert decision == "different speakers"  # seen: 0.25


def test_verify_with_the_model_named_or_its_folder_gives_the_same_score(capsys, cached_loads):
    a, b = str(clip(0, "george", 0)), str(clip(1, "george", 0))
    default = verify(capsys, a, b)
    named = verify(capsys, "whisper-base-subspaces", a, b)
    by_folder = verify(capsys, str(SHIPPED), a, b)
    assert cached_loads[-3:] == [DEFAULT_MODEL, "whisper-base-subspaces", str(SHIPPED)]
    assert named == by_folder == default


# --- score ----------------------------------------------------------------------------------------

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo"]


def fsdd_trials() -> list[tuple[str, str, int]]:
    """20 trials (file names under FSDD's recordings), 10 target, interleaved: a speaker's
    two digits, then two other speakers saying the same digit."""
    trials = []
    for k, speaker in enumerate(SPEAKERS):
        for digit in (k, k + 5):
            trials.append((f"{digit}_{speaker}_0.wav", f"{(digit + 1) % 10}_{speaker}_2.wav", 1))
            other = SPEAKERS[(k + 1 + digit // 5) % len(SPEAKERS)]
            trials.append((f"{digit}_{speaker}_0.wav", f"{digit}_{other}_4.wav", 0))
    return trials


def read_score_file(path: Path) -> list[list[str]]:
    return [line.split(" ") for line in path.read_text().splitlines()]


def test_score_voxceleb_and_kaldi_lists_give_the_same_cosines_in_list_order(tmp_path, capsys, encoder):
    trials = fsdd_trials()
    assert len(trials) == 20 and sum(label for *_, label in trials) == 10
    vox = tmp_path / "veri_test.txt"
    vox.write_text("".join(f"{label} {a} {b}\n" for a, b, label in trials))
    utt = {name: f"{name.split('_')[1]}-{Path(name).stem}" for a, b, _ in trials for name in (a, b)}
    scp = tmp_path / "data" / "wav.scp"
    scp.parent.mkdir()
    scp.write_text("".join(f"{utt[name]} {FSDD / name}\n" for name in sorted(utt)))
    kaldi = tmp_path / "data" / "trials"
    kaldi.write_text("".join(f"{utt[a]} {utt[b]} {'target' if label else 'nontarget'}\n" for a, b, label in trials))

    started = time.perf_counter()
    assert main(["score", "--trials", str(vox), "--root", str(FSDD), "--out", str(tmp_path / "vox.scores")]) == 0
    printed_vox = capsys.readouterr().out
    assert main(["score", DEFAULT_MODEL, "--trials", str(kaldi), "--wav-scp", str(scp),
                 "--out", str(tmp_path / "kaldi.scores")]) == 0
    printed_kaldi = capsys.readouterr().out
    print(f"two score runs: {time.perf_counter() - started:.1f} s")

    eers = []
    for printed, out in ((printed_vox, "vox.scores"), (printed_kaldi, "kaldi.scores")):
        found = re.fullmatch(rf"20 trials scored in the speaker subspace into {re.escape(str(tmp_path / out))}; "
                             r"EER (\d+\.\d\d) %\n", printed)
        assert found, printed
        eers.append(float(found[1]))
    by_path, by_id = read_score_file(tmp_path / "vox.scores"), read_score_file(tmp_path / "kaldi.scores")
    assert [line[:2] for line in by_path] == [[a, b] for a, b, _ in trials]
    assert [line[:2] for line in by_id] == [[utt[a], utt[b]] for a, b, _ in trials]
    for lines in (by_path, by_id):
        assert [line[3] for line in lines] == ["target" if label else "nontarget" for *_, label in trials]
        assert all(len(line) == 4 and re.fullmatch(r"-?\d\.\d{6}", line[2]) for line in lines)
    assert [line[2] for line in by_path] == [line[2] for line in by_id]

    scores = np.array([float(line[2]) for line in by_path])
    assert np.all((-1 <= scores) & (scores <= 1))
    expected = unit_cosines(encoder, [(FSDD / a, FSDD / b) for a, b, _ in trials])
    print(f"largest difference from the Python API's cosines: {np.abs(scores - expected).max():.2e}")
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    labels = np.array([label for *_, label in trials], bool)
    assert eers[0] == eers[1] == pytest.approx(100 * eer(expected, labels.astype(int)), abs=0.005)
    print(f"target scores {np.round(scores[labels], 3)}, non-target {np.round(scores[~labels], 3)}")


def test_score_an_unlabelled_list_writes_three_fields_and_no_eer(tmp_path, capsys):
    pairs = [(a, b) for a, b, _ in fsdd_trials()[:3]]
    listed = tmp_path / "pairs.txt"
    listed.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    out = tmp_path / "pairs.scores"
    assert main(["score", "--trials", str(listed), "--root", str(FSDD), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"3 trials scored in the speaker subspace into {out}\n"
    lines = read_score_file(out)
    assert [line[:2] for line in lines] == [list(pair) for pair in pairs]
    assert all(len(line) == 3 and -1 <= float(line[2]) <= 1 for line in lines)


# --- enroll and identify --------------------------------------------------------------------------

ENROLLED = ["george", "lucas", "theo"]


def test_enrolled_speakers_are_ranked_and_the_right_one_comes_first(tmp_path, capsys):
    db = tmp_path / "speakers"
    for name in ENROLLED:
        files = [str(clip(digit, name, 0)) for digit in (0, 1, 2)]
        assert main(["enroll", str(db), name, *files]) == 0
        assert capsys.readouterr().out.startswith(f"enrolled {name} from 3 recording(s); ")
    assert sorted(p.name for p in db.iterdir()) == ["speakers.json", "speakers.safetensors"]

    held_out = [clip(7, name, 10) for name in ENROLLED]  # a digit and a take not enrolled
    assert main(["identify", str(db), *map(str, held_out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    print("\n".join(lines))
    assert len(lines) == len(held_out)
    for line, path, name in zip(lines, held_out, ENROLLED):
        head, _, ranking = line.partition(": ")
        assert head == str(path)
        ranked = [(item.rsplit(" ", 1)[0], float(item.rsplit(" ", 1)[1])) for item in ranking.split(", ")]
        assert sorted(n for n, _ in ranked) == sorted(ENROLLED)
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        # Seen: george 0.859 / theo 0.554, lucas 0.788 / theo 0.533, theo 0.904 / lucas 0.552.
        assert ranked[0][0] == name


# --- embed ----------------------------------------------------------------------------------------

def test_embed_writes_one_kaldi_table_per_subspace_with_the_api_vectors(tmp_path, capsys, encoder, cached_loads):
    import kaldiio

    files = [clip(3, "george", 5), clip(4, "nicolas", 6), clip(8, "yweweler", 7)]
    out = tmp_path / "vectors" / "x.ark"
    assert main(["embed", *map(str, files), "--out", str(out)]) == 0
    assert cached_loads[-1] == DEFAULT_MODEL  # no MODEL given: the shipped one
    printed = capsys.readouterr().out
    assert printed.startswith("embedded 3 file(s) (speaker 384, content 384) into ")
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.content.ark", "x.content.scp",
                                                            "x.speaker.ark", "x.speaker.scp"]
    expected = load_model().embed(files)
    for name, matrix in expected.items():
        table = kaldiio.load_scp(str(out.parent / f"x.{name}.scp"))
        assert list(table) == [f.stem for f in files]
        np.testing.assert_allclose(np.stack([table[f.stem] for f in files]), matrix, atol=1e-5)


# --- the shipped model is what its documented command makes -----------------------------------------

@pytest.mark.slow
def test_rebuilding_the_shipped_model_gives_its_scores(tmp_path):
    from subspaces.pretrained import SCORE_TOLERANCE, check_pretrained

    started = time.perf_counter()
    differences = check_pretrained(tmp_path)
    print(f"check_pretrained: {time.perf_counter() - started:.0f} s, largest score differences {differences}")
    assert set(differences) == {"speaker", "content"}
    assert all(value <= SCORE_TOLERANCE for value in differences.values()), differences


def test_evaluate_takes_a_kaldi_trial_list_of_utterance_ids_for_any_corpus(tmp_path, capsys):
    from subspaces.corpora import read_fsdd

    table = read_fsdd(limit_per_speaker_digit=2, seed=0)
    first = table.groupby("speaker").head(2)  # two clips of each of the 6 speakers
    ids = first["utt_id"].tolist()
    speaker = dict(zip(first["utt_id"], first["speaker"]))
    lines = [f"{a} {b} {'target' if speaker[a] == speaker[b] else 'nontarget'}"
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    code = main(["evaluate", "--model", DEFAULT_MODEL, "--corpus", "fsdd", "--limit-per-speaker-digit", "2",
                 "--trials", str(tmp_path / "trials.txt"), "--out", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    counts = metrics["systems"]["ours: speaker subspace"]["verification"]["all"]
    assert (counts["targets"], counts["nontargets"]) == (6, len(lines) - 6)
