"""KLettres and KTuberling readers (the dev suite's corpora): fixture folders laid out like
the Debian packages, and the real packages when they are installed."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from subspaces.corpora import (
    KLETTRES_ROOT, KTUBERLING_ROOT, SPEAKER_CONFIDENCE, CorpusError, load_corpus, read_klettres, read_ktuberling,
)
from subspaces.suite import SuiteError, suite_corpus


def _tone(path: Path, frequency: float, *, artist: str = "", rate: int = 16000, seconds: float = 0.4,
          channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.2 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    if channels == 2:
        wave = np.stack([wave, wave], axis=1)
    kind = ("OGG", "VORBIS") if path.suffix == ".ogg" else ("WAV", "PCM_16")
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, format=kind[0], subtype=kind[1]) as handle:
        if artist:
            handle.artist = artist
        handle.write(wave)


def _klettres(root: Path) -> Path:
    """en (credited: Robert Wadley), en_GB (uncredited), es (credited to two people),
    a locale whose sounds are absent (id), and a byte-identical copy in de of an en file."""
    locales = {
        "en": {"alphabet": ["A", "B", "C"], "syllables": ["BA"]},
        "en_GB": {"alphabet": ["A", "B"], "syllables": []},
        "es": {"alphabet": ["A", "Ñ"], "syllables": ["LA"]},
        "de": {"alphabet": ["A", "Ä"], "syllables": []},
    }
    for n, (locale, sections) in enumerate(locales.items()):
        lines = ["<!-- a comment, as the real files have -->", "<klettres>", f'<language code="{locale}">']
        for section, names in sections.items():
            lines.append(f"<{section}>")
            folder = "alpha" if section == "alphabet" else "syllab"
            for k, name in enumerate(names):
                file = f"{locale}/{folder}/{k}.ogg"
                _tone(root / file, 150 + 40 * n + 7 * k + (60 if folder == "syllab" else 0), channels=2 if n == 1 else 1)
                lines.append(f'<sound name="{name}" file="{file}" />')
            lines.append(f"</{section}>")
        lines += ["</language>", "</klettres>"]
        (root / locale / "sounds.xml").write_text("\n".join(lines), encoding="utf-8")
    shutil.copy(root / "en" / "alpha" / "0.ogg", root / "de" / "alpha" / "1.ogg")  # a byte-identical copy
    (root / "id").mkdir()
    (root / "id" / "sounds.xml").write_text('<klettres><alphabet><sound name="A" file="id/alpha/a.wav"/>'
                                            "</alphabet></klettres>")
    return root


def _ktuberling(root: Path) -> Path:
    """ca: two tagged people (one under a short name too); da: one tagged person and a
    larger untagged part; wa: one person with one untagged file; el: a tag naming two
    people; sr and sr@latin byte-identical; en untagged (credited in the handbook)."""
    sounds = root / "sounds"
    themes = {
        "ca": [("ball", "Otger Mas"), ("hat", "Bernat"), ("nose", "Bernat Mas"), ("eye", "Otger Mas")],
        "da": [("ball", "Martha Schou"), ("hat", ""), ("nose", ""), ("eye", "")],
        "wa": [(f"w{k}", "Djan Cayron") for k in range(11)] + [("ball", "")],
        "el": [("ball", "clavisound.gr and patty"), ("hat", "clavisound.gr and patty")],
        "en": [("ball", ""), ("hat", "")],
        "sr": [("ball", ""), ("hat", "")],
    }
    for n, (locale, items) in enumerate(themes.items()):
        lines = ['<?xml version="1.0"?>', f'<language code="{locale}">']
        for k, (concept, artist) in enumerate(items):
            file = f"{locale}/{concept}.{'wav' if locale == 'en' else 'ogg'}"
            _tone(sounds / file, 120 + 30 * n + 5 * k, artist=artist, rate=22050 if locale == "en" else 44100)
            lines.append(f'  <sound name="{concept}" file="{file}"/>')
        lines.append(f'  <sound name="tux-{items[0][0]}" file="{locale}/{items[0][0]}.{"wav" if locale == "en" else "ogg"}"/>')
        lines.append("</language>")
        (sounds / f"{locale}.soundtheme").write_text("\n".join(lines), encoding="utf-8")
    shutil.copytree(sounds / "sr", sounds / "sr@latin")
    (sounds / "sr@latin.soundtheme").write_text((sounds / "sr.soundtheme").read_text().replace("sr/", "sr@latin/"))
    (sounds / "id.soundtheme").write_text('<language code="id"><sound name="ball" file="id/ball.wav"/></language>')
    return root


def test_klettres_reader_labels_speakers_from_the_credits_and_drops_copies(tmp_path):
    table = read_klettres(_klettres(tmp_path / "klettres"))
    assert table.attrs["dropped_duplicates"] == 1
    assert len(table) == 4 + 2 + 3 + 1  # en, en_GB, es, de without its copy; id has no sounds
    by_locale = table.groupby("locale")["speaker"].unique().map(list).to_dict()
    assert by_locale == {"en": ["Robert Wadley"], "en_GB": ["klettres-en_GB"], "es": ["klettres-es"],
                         "de": ["Helmut Kriege"]}
    confidence = table.groupby("locale")["confidence"].first().to_dict()
    assert confidence == {"en": "credited", "en_GB": "assumed", "es": "mixed", "de": "credited"}
    assert set(table["confidence"]) <= set(SPEAKER_CONFIDENCE)
    # en and en_GB are one language: their letters share a content label.
    assert table.loc[table["locale"] == "en_GB", "content"].tolist() == ["en:A", "en:B"]
    assert set(table["language"]) == {"en", "es", "de"}
    assert set(table["kind"]) == {"alphabet", "syllable"}
    assert (table["split"] == "dev").all() and (table["source"] == "klettres").all()
    assert table["utt_id"].is_unique
    assert table.loc[table["locale"] == "es", "text"].tolist() == ["A", "Ñ", "LA"]


def test_klettres_reader_skips_listed_files_that_are_absent_with_a_warning(tmp_path):
    root = _klettres(tmp_path / "klettres")
    (root / "en" / "alpha" / "2.ogg").unlink()
    with pytest.warns(UserWarning, match=r"en/sounds.xml: 1 listed file"):
        table = read_klettres(root)
    assert "en:C" not in set(table["content"])


def test_klettres_reader_errors_name_the_file(tmp_path):
    with pytest.raises(CorpusError, match="apt-get install klettres-data"):
        read_klettres(tmp_path / "missing")
    root = _klettres(tmp_path / "klettres")
    (root / "en" / "sounds.xml").write_text("<klettres><alphabet><sound name=")
    with pytest.raises(CorpusError, match=r"en/sounds.xml: not a readable sound list"):
        read_klettres(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no <locale>/sounds.xml with sounds"):
        read_klettres(empty)


def test_ktuberling_reader_takes_speakers_from_artist_tags(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a theme whose sounds are all absent (id) is skipped silently
        table = read_ktuberling(_ktuberling(tmp_path / "ktuberling"))
    assert table.attrs["dropped_duplicates"] == 2  # sr@latin's two files
    assert "sr@latin" not in set(table["locale"])
    speakers = table.groupby("locale")["speaker"].unique().map(sorted).to_dict()
    assert speakers["ca"] == ["Bernat Mas", "Otger Mas"]  # "Bernat" is the short form of one name
    assert speakers["da"] == ["Martha Schou", "ktuberling-da"]  # the untagged majority is someone else
    assert speakers["wa"] == ["Djan Cayron"]  # 1 untagged file of 12 in a one-person folder
    assert speakers["el"] == ["ktuberling-el"] and set(table.loc[table["locale"] == "el", "confidence"]) == {"mixed"}
    assert speakers["en"] == ["John Calhoun"]
    wa = table[table["locale"] == "wa"].set_index("concept")["confidence"]
    assert wa["ball"] == "assumed" and wa["w0"] == "tagged"
    # A file listed under two names is one row; concepts are shared across languages.
    assert len(table[table["locale"] == "ca"]) == 4
    assert table.loc[table["concept"] == "ball", "content"].tolist() == ["ca:ball", "da:ball", "el:ball", "en:ball",
                                                                        "sr:ball", "wa:ball"]
    assert sorted(table["sample_rate"].unique()) == [22050, 44100]


def test_a_folder_tagged_with_two_names_stays_one_mixed_label(tmp_path):
    # 11 files tagged "A and B" and one untagged: the untagged file is not given the label
    # "A and B" as if it were one person; the folder stays one "mixed" label.
    sounds = tmp_path / "ktuberling" / "sounds"
    lines = ['<language code="el">']
    for k in range(12):
        _tone(sounds / "el" / f"w{k}.ogg", 150 + 9 * k, artist="" if k == 11 else "Anna and Bea")
        lines.append(f'<sound name="w{k}" file="el/w{k}.ogg"/>')
    (sounds / "el.soundtheme").write_text("\n".join(lines + ["</language>"]))
    table = read_ktuberling(tmp_path / "ktuberling")
    assert set(table["speaker"]) == {"ktuberling-el"}
    assert table.set_index("concept").loc["w11", "confidence"] == "assumed"
    assert (table.set_index("concept").drop(index="w11")["confidence"] == "mixed").all()


def test_ktuberling_reader_accepts_the_sounds_folder_itself_and_reports_bad_themes(tmp_path):
    root = _ktuberling(tmp_path / "ktuberling")
    assert len(read_ktuberling(root / "sounds")) == len(read_ktuberling(root))
    (root / "sounds" / "ca.soundtheme").write_text('<language><sound file="ca/ball.ogg"/></language>')
    with pytest.raises(CorpusError, match=r"ca.soundtheme: a <sound> without name="):
        read_ktuberling(root)
    with pytest.raises(CorpusError, match="apt-get install ktuberling-data"):
        read_ktuberling(tmp_path / "nothing")


def test_load_corpus_reads_both_kinds_by_path(tmp_path):
    klettres = _klettres(tmp_path / "k1")
    ktuberling = _ktuberling(tmp_path / "k2")
    assert len(load_corpus(f"klettres:{klettres}")) == len(read_klettres(klettres))
    assert len(load_corpus(f"ktuberling:{ktuberling}")) == len(read_ktuberling(ktuberling))


def test_the_cli_writes_a_manifest_of_a_fixture_corpus(tmp_path):
    from subspaces.cli import main
    from subspaces.manifest import read_manifest

    root = _ktuberling(tmp_path / "ktuberling")
    assert main(["corpus", f"ktuberling:{root}", "-o", str(tmp_path / "m.csv")]) == 0
    table = read_manifest(tmp_path / "m.csv")
    assert {"language", "concept", "confidence", "credit"} <= set(table.columns)
    assert table["speaker"].nunique() == 8


needs_packages = pytest.mark.skipif(
    not ((KLETTRES_ROOT / "en" / "sounds.xml").is_file() and (KTUBERLING_ROOT / "sounds").is_dir()),
    reason="klettres-data / ktuberling-data not installed (scripts/install.sh installs them)")


@needs_packages
def test_the_installed_packages_give_about_fifty_people():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the packages list a few files they do not ship
        klettres, ktuberling = read_klettres(), read_ktuberling()
    assert 1500 < len(klettres) < 2500 and 1500 < len(ktuberling) < 2500
    assert 15 <= klettres["speaker"].nunique() <= 25 and 25 <= ktuberling["speaker"].nunique() <= 35
    # Catalan is the one language several tagged people share.
    catalan = ktuberling[ktuberling["language"] == "ca"]
    assert catalan["speaker"].nunique() >= 5 and set(catalan["confidence"]) == {"tagged"}
    assert ktuberling.attrs["dropped_duplicates"] > 0  # the Serbian script copies
    for table in (klettres, ktuberling):
        assert table["utt_id"].is_unique and table["path"].is_unique
        assert (table["duration_s"] > 0.1).all() and (table["duration_s"] < 10).all()


@needs_packages
def test_the_dev_suite_pools_both_corpora_without_shared_labels():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = suite_corpus("dev")
    assert set(table["source"]) == {"klettres", "ktuberling"}
    assert table["speaker"].nunique() >= 40


def test_suite_names_are_checked():
    with pytest.raises(SuiteError, match="valid suites: dev, test"):
        suite_corpus("train")


def _untrained_model(folder: Path, backbone) -> Path:
    """A tiny untrained subspace model over every layer of `backbone`."""
    import torch

    from subspaces.model import SubspaceConfig, SubspaceModel

    torch.manual_seed(0)
    config = SubspaceConfig(input_dim=backbone.width, num_layers=backbone.num_layers, layer="mix", pooling="mean",
                            hidden=(16,), subspaces=(("speaker", 4), ("content", 6)))
    return SubspaceModel(config).save(folder, metadata={"backbone": backbone.name,
                                                        "backbone_revision": backbone.revision})


def test_evaluate_suite_writes_one_table_per_corpus(tmp_path, monkeypatch, tiny_whisper, one_thread):
    import json

    import subspaces.suite as suite

    klettres, ktuberling = _klettres(tmp_path / "k1"), _ktuberling(tmp_path / "k2")
    monkeypatch.setitem(suite.SUITES, "dev", (f"klettres:{klettres}", f"ktuberling:{ktuberling}"))
    model = _untrained_model(tmp_path / "model", tiny_whisper)
    results = suite.evaluate_suite([model], "dev", tmp_path / "out", baseline=False, backbone=tiny_whisper)
    assert set(results["corpora"]) == {f"klettres:{klettres}", f"ktuberling:{ktuberling}"}
    for kind in ("klettres", "ktuberling"):
        assert (tmp_path / "out" / kind / "report.md").is_file()
        assert (tmp_path / "out" / kind / "features" / "store.json").is_file()
    # Folders credited to two people (KLettres es, KTuberling el) are not scored; their
    # features are still in the store, which keeps every row of the corpus.
    from subspaces.manifest import read_manifest

    scored = read_manifest(tmp_path / "out" / "klettres" / "manifest.csv")
    everything = read_manifest(tmp_path / "out" / "klettres" / "manifest-all.csv")
    assert "es" not in set(scored["locale"]) and "es" in set(everything["locale"])
    assert results["corpora"][f"klettres:{klettres}"]["utterances"] == len(scored) == len(everything) - 3
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    ours = written["corpora"][f"ktuberling:{ktuberling}"]["systems"]["ours: speaker subspace"]
    assert ours["verification"]["all"]["eer"] is not None
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| ours: speaker subspace |") == 2 and "| raw layer 2 |" in report
    assert "3 clips of folders credited to two people left out" in report
    # Two models (e.g. seeds): one mean +- std table per corpus; the features are extracted once.
    again = _untrained_model(tmp_path / "model2", tiny_whisper)
    results = suite.evaluate_suite([model, again], "dev", tmp_path / "out", baseline=False, backbone=tiny_whisper)
    summary = results["corpora"][f"klettres:{klettres}"]
    assert summary["runs"] == 2 and summary["systems"]["ours: speaker subspace"]["EER all"][1] == 0.0
    assert (tmp_path / "out" / "klettres" / "summary.md").is_file()
