"""Held-out voices are whole base voices: no held-out voice is a variant of a training voice."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from subspaces.synth import GridError, Voice, plan_grid, sample_voice_mix, sample_voices

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")

TEXTS = ["yes", "no", "left", "right", "up", "down"]


def mixed_bank() -> list[Voice]:
    """Voices of four engines, made without running any engine: 20 flite voices on 4 bases
    (kal and kal16 are one), 10 Kokoro mixes, 6 Piper warps of one model, 2 command voices."""
    command = [Voice("command", {"command": "tts --ref {ref} --text {text} --out {out}", "ref": ref}) for ref in ("a.wav", "b.wav")]
    return sample_voices("flite", 20, seed=3) + sample_voices("kokoro", 10, seed=3) + sample_voices("piper", 6, seed=3) + command


def test_base_voice_keys_drop_what_only_varies_a_voice():
    assert Voice("flite", {"voice": "kal", "f0_mean": 100}).base == "flite:kal"
    assert Voice("flite", {"voice": "kal16", "stretch": 1.2, "warp": 1.1}).base == "flite:kal"  # the same speaker
    assert Voice("flite", {"voice": "rms", "stretch": 0.8}).base == "flite:rms" != Voice("flite", {"voice": "slt"}).base
    assert Voice("kokoro", {"weights": {"jf_alpha": -0.4, "jf_nezumi": 0.6, "jm_kumo": 0.8}, "speed": 1.1}).base == "kokoro:jm_kumo"
    assert Voice("kokoro", {"style_file": "styles/anna.npy"}).base == "kokoro:anna"
    assert Voice("piper", {"warp": 0.9, "length_scale": 1.1}).base == "piper:en_US-joe-medium"
    assert Voice("piper", {"model": "/v/en_GB-vctk-medium.onnx", "speaker_id": 3}).base == "piper:en_GB-vctk-medium-sp3"
    command = Voice("command", {"command": "tts {text} {out}"}, speaker="anna")
    assert command.base == "command:anna"
    # A base key cannot be taken for a speaker id: ids have no ':'.
    assert all(":" not in v.speaker and ":" in v.base for v in mixed_bank())


@needs_espeak
def test_espeak_base_is_the_variant():
    a = Voice("espeak-ng", {"variant": "m3", "pitch": 30, "rate": 150})
    b = Voice("espeak-ng", {"variant": "m3", "pitch": 70, "gap": 3, "language": "en-us"})
    assert a.base == b.base == "espeak-ng:m3" != Voice("espeak-ng", {"variant": "f2"}).base
    assert Voice("espeak-ng", {"pitch": 40}).base == "espeak-ng:default"


def held_out_bases(plan: pd.DataFrame) -> set[str]:
    return set(plan.loc[plan.split.isin(["val", "val_voice"]), "voice_base"])


def test_held_out_voices_share_no_base_with_training_voices():
    voices = mixed_bank()
    sizes = pd.Series([v.base for v in voices]).value_counts()
    assert sizes["flite:kal"] >= 2 and len(sizes) >= 8  # near-copies exist to be kept apart
    for seed in range(20):
        for amount, at_least in ((1, 1), (4, 4), (9, 9), (0.25, round(0.25 * len(voices)))):
            plan = plan_grid(voices, TEXTS, val_voices=amount, val_texts=2, seed=seed)
            held = plan.attrs["held_out"]
            train = plan[plan.split.isin(["train", "val_text"])]
            assert not set(train.voice_base) & set(held["bases"]), (seed, amount)
            assert held_out_bases(plan) == set(held["bases"])
            assert set(plan.loc[plan.split.isin(["val", "val_voice"]), "speaker"]) == set(held["voices"])
            # every voice of a held-out base is held out, and the count is rounded up by less than one base
            assert set(held["voices"]) == {v.speaker for v in voices if v.base in held["bases"]}
            assert at_least <= len(held["voices"]) < at_least + sizes[list(held["bases"])].max()
            pd.testing.assert_frame_equal(plan, plan_grid(voices, TEXTS, val_voices=amount, val_texts=2, seed=seed))
    # Seeds pick different bases, the multi-voice ones among them.
    picks = {frozenset(plan_grid(voices, TEXTS, val_voices=4, seed=seed).attrs["held_out"]["bases"]) for seed in range(20)}
    assert len(picks) > 10 and any("flite:kal" in p for p in picks)
    # Sparse grids follow the same rule.
    sparse = plan_grid(voices, TEXTS, dense=False, per_voice=3, val_voices=4, val_texts=2, seed=1)
    assert not set(sparse.loc[sparse.split == "train", "voice_base"]) & held_out_bases(sparse)


def test_holding_out_single_voices_leaks_near_copies_into_training():
    """Why the rule exists: the old per-voice hold-out validates on variants of training voices."""
    voices = sample_voices("flite", 20, seed=3)
    leaks = 0
    for seed in range(10):
        plan = plan_grid(voices, TEXTS, val_voices=4, val_texts=2, seed=seed, hold_out="voice")
        leaks += bool(held_out_bases(plan) & set(plan.loc[plan.split == "train", "voice_base"]))
        assert len(plan.attrs["held_out"]["voices"]) == 4
    assert leaks == 10


def test_explicit_hold_outs_name_whole_bases():
    voices = mixed_bank()
    kal = sorted(v.speaker for v in voices if v.base == "flite:kal")
    command = voices[-1].speaker
    plan = plan_grid(voices, TEXTS, val_voices=["flite:kal", command], val_texts=["yes"])
    assert plan.attrs["held_out"] == {"voices": sorted(kal + [command]), "bases": ["command:" + command, "flite:kal"],
                                      "texts": ["yes"]}
    # Naming every voice of a base is the same as naming the base.
    same = plan_grid(voices, TEXTS, val_voices=kal + [command], val_texts=["yes"])
    pd.testing.assert_frame_equal(plan, same)
    with pytest.raises(GridError, match=f"include {kal[0]} but not {kal[1]}.*of the same base voice flite:kal"):
        plan_grid(voices, TEXTS, val_voices=[kal[0]])
    with pytest.raises(GridError, match="flite:nobody are neither speaker ids nor base keys"):
        plan_grid(voices, TEXTS, val_voices=["flite:nobody"])
    single = plan_grid(voices, TEXTS, val_voices=[kal[0]], hold_out="voice")
    assert single.attrs["held_out"]["voices"] == [kal[0]] and single.attrs["held_out"]["bases"] == ["flite:kal"]


@needs_espeak
def test_the_demo_grid_holds_out_whole_bases():
    """DemoPlan's voices (48 espeak-ng + 32 flite, seed 0) with its val_voices=4, val_texts=8."""
    voices = sample_voice_mix(48, 32, seed=0)
    texts = [f"word{i}" for i in range(64)]
    plan = plan_grid(voices, texts, val_voices=4, val_texts=8, seed=0, keep_mixed=False)
    held = plan.attrs["held_out"]
    assert len(held["voices"]) >= 4 and plan[plan.split == "val"].speaker.nunique() == len(held["voices"])
    assert not set(plan.loc[plan.split == "train", "voice_base"]) & set(held["bases"])
    # The old rule held out flite voices whose base (rms, slt) stayed in training.
    old = plan_grid(voices, texts, val_voices=4, val_texts=8, seed=0, keep_mixed=False, hold_out="voice")
    assert held_out_bases(old) & set(old.loc[old.split == "train", "voice_base"])
