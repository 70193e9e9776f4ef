"""Grid planning, synthesis, resuming, failures, and channel interventions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from subspaces.synth.channel import ChannelError, add_noise, apply_channel, mu_law, parse_channel, room_reverb, telephone_band
from subspaces.manifest import read_manifest
from subspaces.synth import GridError, Voice, load_texts, plan_grid, sample_voices, synthesize, synthesize_grid

needs_engines = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="apt-get install espeak-ng flite",
)


def flite_voices(n: int) -> list[Voice]:
    """Voices made without running any engine (planning needs no synthesis). They are
    all variants of one base voice (slt), so the tests that hold out single voices from
    them say hold_out="voice"."""
    return [Voice("flite", {"voice": "slt", "stretch": 0.8 + 0.05 * i}) for i in range(n)]


# --- planning ----------------------------------------------------------------------------

def test_dense_grid_has_every_pair_and_holds_out_voices_and_texts():
    voices, texts = flite_voices(8), [t.text for t in load_texts("keywords")[:12]]
    plan = plan_grid(voices, texts, val_voices=2, val_texts=3, seed=5, hold_out="voice")
    assert len(plan) == 8 * 12
    assert len(plan.groupby(["speaker", "content"])) == 96
    held_v = set(plan.loc[plan.split == "val", "speaker"])
    held_t = set(plan.loc[plan.split == "val", "content"])
    assert len(held_v) == 2 and len(held_t) == 3
    train = plan[plan.split == "train"]
    assert not set(train.speaker) & held_v and not set(train.content) & held_t
    assert len(train) == 6 * 9
    assert set(plan.loc[plan.split == "val_voice", "speaker"]) == held_v
    assert not set(plan.loc[plan.split == "val_voice", "content"]) & held_t
    assert set(plan.loc[plan.split == "val_text", "content"]) == held_t
    assert (plan.split.value_counts().to_dict()) == {"train": 54, "val_voice": 18, "val_text": 18, "val": 6}
    # The same seed gives the same plan; another seed holds out other voices or texts.
    pd.testing.assert_frame_equal(plan, plan_grid(voices, texts, val_voices=2, val_texts=3, seed=5, hold_out="voice"))
    other = plan_grid(voices, texts, val_voices=2, val_texts=3, seed=6, hold_out="voice")
    assert not other.split.equals(plan.split)
    # Mixed rows can be left out altogether.
    lean = plan_grid(voices, texts, val_voices=2, val_texts=3, seed=5, keep_mixed=False, hold_out="voice")
    assert lean.split.value_counts().to_dict() == {"train": 54, "val": 6}
    # Fractions and explicit ids work too.
    by_fraction = plan_grid(voices, texts, val_voices=0.25, val_texts=0.25, seed=5, hold_out="voice")
    assert by_fraction[by_fraction.split == "val"].speaker.nunique() == 2
    chosen = plan_grid(voices, texts, val_voices=[voices[0].speaker], val_texts=["yes"], hold_out="voice")
    assert set(chosen[chosen.split == "val"].utt_id) == {f"{voices[0].speaker}__yes__clean"}


def test_channels_multiply_the_grid():
    plan = plan_grid(flite_voices(3), ["yes", "no"], channels=["clean", "telephone", "noise10"])
    assert len(plan) == 3 * 2 * 3
    assert plan.groupby(["speaker", "content"]).channel.apply(sorted).map(tuple).unique().tolist() == [
        ("clean", "noise10", "telephone")]
    assert plan.utt_id.is_unique and plan.path.is_unique
    with pytest.raises(ChannelError, match="unknown channel 'radio'"):
        plan_grid(flite_voices(2), ["yes"], channels=["radio"])


def test_sparse_grid_honours_its_minimums():
    voices, texts = flite_voices(10), [t.text for t in load_texts("words")[:37]]
    plan = plan_grid(voices, texts, dense=False, per_voice=9, min_per_text=2, seed=1)
    per_voice = plan.groupby("speaker").size()
    per_text = plan.groupby("content").size()
    assert (per_voice == 9).all() and len(per_voice) == 10
    assert len(per_text) == 37 and per_text.min() >= 2 and per_text.max() - per_text.min() <= 1
    assert not plan.duplicated(["speaker", "content"]).any()
    # Left to itself, per_voice is the fewest that meets min_per_text: ceil(37 * 3 / 10) = 12.
    auto = plan_grid(voices, texts, dense=False, min_per_text=3, seed=1)
    assert (auto.groupby("speaker").size() == 12).all() and auto.groupby("content").size().min() >= 3
    # Different voices get different subsets.
    subsets = {frozenset(g.content) for _, g in plan.groupby("speaker")}
    assert len(subsets) > 5
    with pytest.raises(GridError, match="raise per_voice to 8"):
        plan_grid(voices, texts, dense=False, per_voice=5, min_per_text=2)
    with pytest.raises(GridError, match="per_voice is for sparse grids"):
        plan_grid(voices, texts, per_voice=5)
    with pytest.raises(GridError, match="min_per_text=11 must be between 1 and the number of voices"):
        plan_grid(voices, texts, dense=False, min_per_text=11)


def test_bad_holdouts_and_repeats_are_errors():
    voices = flite_voices(3)
    with pytest.raises(GridError, match="hold out 0 to 2 of the 3 voices"):
        plan_grid(voices, ["a", "b"], val_voices=3)
    # One base voice (slt) for all three: held out whole, nothing would be left to train on.
    with pytest.raises(GridError, match="takes all 1 bases of the 3 voices; leave at least one base for training"):
        plan_grid(voices, ["a", "b"], val_voices=1)
    with pytest.raises(GridError, match="hold_out='speaker'; choose one of 'base', 'voice'"):
        plan_grid(voices, ["a", "b"], val_voices=1, hold_out="speaker")
    with pytest.raises(GridError, match="not in the grid's texts"):
        plan_grid(voices, ["a", "b"], val_texts=["c"])
    with pytest.raises(GridError, match="repeat the speaker id"):
        plan_grid([voices[0], voices[0]], ["a"])
    with pytest.raises(GridError, match="repeat the content id"):
        plan_grid(voices, ["Yes", "yes!"])


# --- synthesis ---------------------------------------------------------------------------

def small_voices() -> list[Voice]:
    return sample_voices("espeak-ng", 3, seed=0) + sample_voices("flite", 2, seed=0)


SMALL_TEXTS = ["yes", "left", "The soft cushion broke the man's fall.", "Rain tapped on the roof."]


@needs_engines
def test_grid_writes_normalised_flac_and_a_valid_manifest(tmp_path):
    table = synthesize_grid(small_voices(), SMALL_TEXTS, tmp_path / "grid", val_voices=1, val_texts=1,
                            channels=["clean", "telephone"])
    assert len(table) == 5 * 4 * 2 and table.attrs["failures"].empty
    manifest = read_manifest(tmp_path / "grid" / "manifest.csv")
    assert len(manifest) == 40 and set(manifest.source) == {"espeak-ng", "flite"}
    assert set(manifest.split) == {"train", "val", "val_voice", "val_text"}
    # grid.json records what was held out, and it is what the manifest's splits say.
    settings = json.loads((tmp_path / "grid" / "grid.json").read_text())
    held = manifest[manifest.split.isin(["val", "val_voice"])]
    assert settings["hold_out"] == "base" and settings["held_out"] == table.attrs["held_out"]
    assert settings["held_out"]["voices"] == sorted(held.speaker.unique())
    assert settings["held_out"]["bases"] == sorted(held.voice_base.unique())
    assert settings["held_out"]["texts"] == sorted(manifest.loc[manifest.split == "val", "content"].unique())
    assert not set(manifest.loc[manifest.split == "train", "voice_base"]) & set(settings["held_out"]["bases"])
    assert manifest.speaker.nunique() == 5 and manifest.content.nunique() == 4
    for row in manifest.itertuples():
        assert not Path(row.path).is_absolute()
        wave, rate = sf.read(tmp_path / "grid" / row.path)
        assert rate == 16000 and wave.ndim == 1 and len(wave) == round(row.duration_s * 16000)
        level = 20 * np.log10(np.sqrt(np.mean(wave**2)))
        # -23 dBFS RMS, unless the peak limit (0.99) holds it lower.
        assert level <= -22.9 and (level > -23.1 or np.abs(wave).max() > 0.98)
        assert np.abs(wave[:80]).max() < 0.5  # trimmed, but not cut mid-word: starts near silence
    sentence = manifest[(manifest.text == SMALL_TEXTS[2]) & (manifest.channel == "clean")]
    assert (sentence.duration_s > 1.0).all()
    assert (tmp_path / "grid" / "voices.json").is_file() and (tmp_path / "grid" / "grid.json").is_file()
    assert not (tmp_path / "grid" / "failures.csv").exists()


RUN_GRID = """
import sys
from subspaces.synth import load_texts, sample_voices, synthesize_grid
voices = sample_voices("espeak-ng", 6, seed=2) + sample_voices("flite", 2, seed=2)
texts = load_texts("words")[:20]
synthesize_grid(voices, texts, sys.argv[1], val_voices=2, val_texts=5, channels=["clean", "noise15"], seed=4)
"""


def run_grid(folder: Path) -> pd.DataFrame:
    voices = sample_voices("espeak-ng", 6, seed=2) + sample_voices("flite", 2, seed=2)
    return synthesize_grid(voices, load_texts("words")[:20], folder, val_voices=2, val_texts=5,
                           channels=["clean", "noise15"], seed=4)


def same_dataset(a: Path, b: Path) -> None:
    first, second = read_manifest(a / "manifest.csv"), read_manifest(b / "manifest.csv")
    first.attrs, second.attrs = {}, {}
    pd.testing.assert_frame_equal(first, second)
    for path in first.path:
        wave_a, _ = sf.read(a / path, dtype="int16")
        wave_b, _ = sf.read(b / path, dtype="int16")
        assert np.array_equal(wave_a, wave_b), path


@needs_engines
def test_killed_run_resumes_to_the_clean_result(tmp_path):
    clean = tmp_path / "clean"
    run_grid(clean)
    assert len(read_manifest(clean / "manifest.csv")) == 8 * 20 * 2

    killed = tmp_path / "killed"
    script = tmp_path / "run_grid.py"
    script.write_text(RUN_GRID)
    process = subprocess.Popen([sys.executable, str(script), str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(killed.rglob("*.flac"))) < 40:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    made = len(list(killed.rglob("*.flac")))
    assert 40 <= made < 320, "the run was killed part-way through"
    assert not (killed / "manifest.csv").exists()
    run_grid(killed)
    same_dataset(clean, killed)
    assert not list(killed.rglob("*.partial"))


@needs_engines
def test_deleted_clips_and_manifest_are_remade(tmp_path):
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    run_grid(clean)
    shutil.copytree(clean, damaged)
    (damaged / "manifest.csv").unlink()
    removed = sorted(damaged.rglob("*.flac"))[::7]
    for path in removed:
        path.unlink()
    # A temporary file left by a killed writer must not be taken for a clip.
    stale = removed[0].with_name(f".{removed[0].name}.999.1.partial")
    stale.write_bytes(b"half a clip")
    before = {p: p.stat().st_mtime_ns for p in damaged.rglob("*.flac")}
    run_grid(damaged)
    same_dataset(clean, damaged)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished clips are not rewritten"
    assert all(p.is_file() for p in removed) and not stale.exists()


@needs_engines
def test_a_failing_clip_is_recorded_and_the_grid_goes_on(tmp_path):
    voices = small_voices()[:2] + [Voice("command", {"command": "echo no gpu >&2; exit 7 # {text} {out}"})]
    with pytest.warns(UserWarning, match=r"3 of 9 clips failed"):
        table = synthesize_grid(voices, ["yes", "no", "stop"], tmp_path / "grid")
    assert len(table) == 6 and "command" not in set(table.source)
    failures = pd.read_csv(tmp_path / "grid" / "failures.csv")
    assert len(failures) == 3 and set(failures.speaker) == {voices[2].speaker}
    assert failures.error.str.contains("exit 7").all() and failures.error.str.contains("no gpu").all()
    assert len(read_manifest(tmp_path / "grid" / "manifest.csv")) == 6
    with pytest.raises(GridError, match=r"every one of the 1 clips failed.*exit 7"):
        synthesize_grid(voices[2:], ["yes"], tmp_path / "all-fail")


@needs_engines
def test_folder_with_another_voice_under_the_same_id_is_refused(tmp_path):
    synthesize_grid([Voice("flite", {"voice": "slt"}, speaker="anna")], ["yes"], tmp_path)
    with pytest.raises(GridError, match="different voice with the speaker id 'anna'"):
        synthesize_grid([Voice("flite", {"voice": "awb"}, speaker="anna")], ["yes"], tmp_path)


# --- one grid per folder, a full disk, one writer at a time (no engine needed) ------------

def tone_voices(n: int) -> list[Voice]:
    return [Voice("command", {"command": "unused {text} {out}"}, speaker=f"v{i}") for i in range(n)]


@pytest.fixture
def tone_tts(monkeypatch) -> list[tuple[str, str]]:
    """The grid's synthesis replaced by a tone per voice and text; returns the calls made."""
    import subspaces.synth.grid as grid

    calls = []

    def synthesize(voice, text):
        calls.append((voice.speaker, text))
        t = np.arange(8000) / 16000
        freq = 150 + 20 * int(voice.speaker[1:]) + 10 * len(text)
        return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000

    monkeypatch.setattr(grid, "synthesize", synthesize)
    return calls


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_grid_made_with_other_options_is_refused_unless_restarted(tmp_path, tone_tts):
    out, texts = tmp_path / "grid", ["yes", "no", "stop"]
    first = synthesize_grid(tone_voices(3), texts, out, val_voices=1, hold_out="voice")
    before = folder_bytes(out)
    with pytest.raises(GridError, match=rf"^{out} already holds a grid made with other options \(seed 0 -> 1; "
                                        r"channels \[clean\] -> \[clean, telephone\]\).*restart"):
        synthesize_grid(tone_voices(3), texts, out, val_voices=1, hold_out="voice", seed=1,
                        channels=["clean", "telephone"])
    with pytest.raises(GridError, match=r"num voices 3 -> 2; voices left out \[v2\]"):
        synthesize_grid(tone_voices(2), texts, out, val_voices=1, hold_out="voice")
    # A run stopped before its manifest still says which grid the folder holds (grid.json).
    (out / "manifest.csv").unlink()
    with pytest.raises(GridError, match=r"num texts 3 -> 2; texts left out \[stop\]"):
        synthesize_grid(tone_voices(3), texts[:2], out, val_voices=1, hold_out="voice")
    assert folder_bytes(out) == {k: v for k, v in before.items() if k != "manifest.csv"}
    # The same options resume: nothing is synthesised again and the manifest is the same.
    made = len(tone_tts)
    again = synthesize_grid(tone_voices(3), texts, out, val_voices=1, hold_out="voice", workers=1)
    assert len(tone_tts) == made and folder_bytes(out) == before
    pd.testing.assert_frame_equal(first, again)
    # restart=True deletes the old grid and makes the new one.
    new = synthesize_grid(tone_voices(2), texts[:2], out, seed=1, channels=["clean", "telephone"], restart=True)
    assert len(new) == 2 * 2 * 2 and set(new.split) == {"train"}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.flac")) == sorted(new.path)
    settings = json.loads((out / "grid.json").read_text())
    assert settings["seed"] == 1 and settings["text_ids"] == ["yes", "no"] and settings["clips"] == 8
    assert len(read_manifest(out / "manifest.csv")) == 8 and not (out / "UNFINISHED").exists()


def test_a_full_disk_stops_the_grid_and_records_no_failures(tmp_path, tone_tts, monkeypatch):
    from subspaces.atomic import DiskFull

    out, voices, texts = tmp_path / "grid", tone_voices(4), ["yes", "no", "stop"]
    write_bytes, written = Path.write_bytes, []

    def full_after_two(self, data):
        if self.name.endswith(".partial") and len(written) >= 2:
            with open(self, "wb") as handle:  # half a clip, as a real full disk leaves it
                handle.write(data[:100])
            raise OSError(28, "No space left on device")
        written.append(self)
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_two)
    with pytest.raises(DiskFull, match=rf"^{out}/audio/clean/.*\.flac: no space left on the device"):
        synthesize_grid(voices, texts, out, workers=1)
    # The third clip met the full disk; the one worker may have begun a fourth, no more.
    assert len(tone_tts) in (3, 4), "the queued clips were not cancelled at the first full write"
    made = len(tone_tts)
    assert not (out / "failures.csv").exists() and not (out / "manifest.csv").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    finished = sorted(out.rglob("*.flac"))
    assert len(finished) == 2 and all(sf.info(str(p)).frames > 0 for p in finished)
    # Once there is room again the rerun resumes: only the missing clips are made.
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    table = synthesize_grid(voices, texts, out, workers=1)
    assert len(table) == 12 and table.attrs["failures"].empty and len(tone_tts) == made + 10


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, tone_tts):
    from subspaces.folders import FolderBusy, folder_lock

    with folder_lock(tmp_path / "grid", "a test"):
        with pytest.raises(FolderBusy, match=rf"{tmp_path / 'grid'}: another process \(pid {os.getpid()}\)"):
            synthesize_grid(tone_voices(2), ["yes"], tmp_path / "grid")
    assert not tone_tts and not (tmp_path / "grid" / "voices.json").exists()


# --- channels ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A real TTS sentence at 16 kHz, or a harmonic-rich noise burst without engines."""
    from subspaces.audio import resample

    if shutil.which("espeak-ng"):
        wave, rate = synthesize(Voice("espeak-ng", {"variant": "f2"}), "The juice of lemons makes fine punch.")
        return resample(wave, rate, 16000)
    return np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1


def band_energy(wave: np.ndarray, low: float, high: float, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def test_telephone_band_removes_energy_outside_300_3400_hz(speech):
    wide = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    for wave in (speech, wide):
        phone = telephone_band(wave, 16000)
        assert phone.shape == wave.shape
        above = band_energy(phone, 4000, 8000) / band_energy(wave, 4000, 8000)
        below = band_energy(phone, 0, 250) / band_energy(wave, 0, 250)
        inside = band_energy(phone, 500, 3000) / band_energy(wave, 500, 3000)
        assert above < 1e-4 and below < 1e-2 and 0.9 < inside < 1.1


def test_noise_is_added_at_the_asked_snr(speech):
    for snr in (0.0, 10.0, 25.0):
        noisy = add_noise(speech, snr, seed=3)
        noise = noisy.astype(np.float64) - speech
        measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2))
        assert abs(measured - snr) < 0.5
        # Mostly white: about half its energy above 4 kHz.
        assert 0.4 < band_energy(noise, 4000, 8000) / band_energy(noise, 0, 8000) < 0.6
    assert np.array_equal(add_noise(speech, 10, seed=3), add_noise(speech, 10, seed=3))
    assert not np.array_equal(add_noise(speech, 10, seed=3), add_noise(speech, 10, seed=4))
    with pytest.raises(ChannelError, match="silent"):
        add_noise(np.zeros(100, dtype=np.float32), 10, seed=0)


def test_mu_law_quantises_to_256_levels_with_codec_snr(speech):
    loud = speech / np.abs(speech).max() * 0.9
    coded = mu_law(loud, bits=8)
    assert len(np.unique(coded)) <= 256
    error = coded.astype(np.float64) - loud
    snr = 10 * np.log10(np.mean(loud.astype(np.float64) ** 2) / np.mean(error**2))
    # G.711 mu-law gives about 38 dB SNR on speech over a wide range of levels.
    assert 30 < snr < 45
    coarse = mu_law(loud, bits=4)
    assert len(np.unique(coarse)) <= 16
    assert np.mean((coarse - loud) ** 2) > 10 * np.mean(error**2)


def test_room_reverb_decays_by_60_db_in_rt60():
    rate, rt60 = 16000, 0.5
    impulse = np.zeros(rate, dtype=np.float32)
    impulse[0] = 1.0
    response = room_reverb(impulse, rate, rt60, seed=0).astype(np.float64)
    assert response[0] == pytest.approx(1.0, abs=1e-4)
    tail = response[1:] ** 2
    # Schroeder backward integration: energy left after t, in dB; fit -5..-35 dB.
    decay = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum() + 1e-30)
    t = np.arange(1, len(response)) / rate
    fit = (decay < -5) & (decay > -35)
    slope = np.polyfit(t[fit], decay[fit], 1)[0]
    assert -60 / slope == pytest.approx(rt60, rel=0.1)
    assert np.abs(response[int(rt60 * rate) + 1:]).max() == pytest.approx(0.0, abs=1e-6)


def test_channel_specs():
    assert parse_channel("noise-5").value == -5.0 and parse_channel("mulaw6").value == 6.0
    for bad, message in [("noise", "give the SNR"), ("reverb9", "between 0.05 and 5"), ("mulaw1", "from 2 to 16"),
                         ("telephone2", "takes no number"), ("echo", "unknown channel")]:
        with pytest.raises(ChannelError, match=message):
            parse_channel(bad)
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    assert np.array_equal(apply_channel(wave, 16000, "clean"), wave)
    assert np.array_equal(apply_channel(wave, 16000, "reverb0.3", seed=1), apply_channel(wave, 16000, "reverb0.3", seed=1))
