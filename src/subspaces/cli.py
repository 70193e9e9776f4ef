"""The `subspaces` command line: a thin layer over the Python API.

Each verb is one call a user could make from Python; this module only parses
arguments, prints results, and turns library errors into exit codes.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SubspacesError

# The verbs that run a backbone or a model, and so take --device.
DEVICE_VERBS = ("encode", "extract", "train", "evaluate", "embed", "verify", "score", "enroll", "identify", "calibrate")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


def _audio_files(items: list[str]) -> list[Path]:
    """Files as given, and the audio files inside any folder, sorted; refused, naming the
    folders, when that leaves nothing to read."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_dir()))
        else:
            files.append(path)
    if not files:
        folders = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
        raise SubspacesError(f"{folders}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in "
                             f"{'this folder' if len(items) == 1 else 'these folders'}")
    return files


def cmd_encode(args: argparse.Namespace) -> int:
    """Run a frozen backbone over audio files; save every layer's mean-pooled vector."""
    from .atomic import write_atomic
    from .backbones import load_backbone
    from .features import encode_files

    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix != ".npz" or out.is_dir()):
        raise SubspacesError(f"--out {out}: give a file name ending in .npz (the vectors are written as one .npz)")
    files = _audio_files(args.inputs)
    backbone = load_backbone(args.backbone, allow_download=args.allow_download, precision=args.precision,
                             device=args.device)
    info = backbone.describe()
    print(f"{info['name']} ({info['family']}, {info['revision']}): {info['num_layers']} hidden states "
          f"x {info['width']}, {info['frame_rate']:g} frames/s, {info['precision']}")
    started = time.perf_counter()
    encoded = encode_files(files, backbone, batch_size=args.batch_size)
    elapsed = time.perf_counter() - started
    for message in encoded.failures:
        print(f"skipped: {message}", file=sys.stderr)
    if not encoded.paths:
        raise SubspacesError(f"{', '.join(args.inputs[:3])}{', ...' if len(args.inputs) > 3 else ''}: "
                             f"none of the {len(files)} audio file(s) could be read (each is listed above)")
    pooled = encoded.pooled
    print(f"encoded {len(encoded.paths)} file(s), {encoded.audio_seconds:.1f} s of audio in {elapsed:.1f} s "
          f"({encoded.audio_seconds / elapsed:.0f}x real time); mean-pooled vectors: {pooled.shape} "
          "(files x hidden states x width)")
    norms = np.linalg.norm(pooled, axis=2).mean(axis=0)
    print("mean vector norm per hidden state: " + ", ".join(f"{i}:{n:.1f}" for i, n in enumerate(norms)))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a file handle: np.savez would append .npz to a name
                np.savez(handle, files=np.array([str(p) for p in encoded.paths]), pooled=pooled,
                         layers=np.arange(pooled.shape[1]))

        write_atomic(out, write)
        print(f"wrote {out}")
    return 0 if not encoded.failures else 2


def _csv_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def cmd_synth(args: argparse.Namespace) -> int:
    """Synthesise an interventional grid (voices x texts [x channels]) into OUT_DIR."""
    from .synth import load_texts, load_voices, sample_texts, sample_voice_mix, synthesize_grid

    if args.voices:
        voices = load_voices(args.voices)
    else:
        voices = sample_voice_mix(args.espeak, args.flite, seed=args.seed, kokoro=args.kokoro, piper=args.piper)
    if not voices:
        raise SubspacesError("no voices: give --voices BANK.json, or --espeak/--flite/--kokoro/--piper N")
    texts = [text for name in args.texts for text in load_texts(name)]
    if args.num_texts:
        texts = sample_texts(texts, args.num_texts, seed=args.seed)
    table = synthesize_grid(
        voices, texts, args.out_dir, dense=not args.sparse, per_voice=args.per_voice,
        min_per_text=args.min_per_text, val_voices=args.val_voices, val_texts=args.val_texts, hold_out=args.hold_out,
        workers=args.workers, seed=args.seed, channels=_csv_list(args.channels), keep_mixed=not args.no_mixed,
        restart=args.restart)
    print(f"{len(table)} clips from {len(voices)} voices x {len(texts)} texts in {args.out_dir}/manifest.csv")
    print(table["split"].value_counts().to_string())
    held = table.attrs.get("held_out", {})
    if held.get("bases"):
        print(f"held out whole base voices: {', '.join(held['bases'])}")
    failures = table.attrs.get("failures")
    if failures is not None and len(failures):
        print(f"{len(failures)} clip(s) failed; see {args.out_dir}/failures.csv", file=sys.stderr)
        return 2
    return 0


def cmd_voices(args: argparse.Namespace) -> int:
    """Sample a reproducible voice bank (JSON) to reuse across grids."""
    from .synth import sample_voice_mix, save_voices

    voices = sample_voice_mix(args.espeak, args.flite, seed=args.seed, kokoro=args.kokoro, piper=args.piper)
    if not voices:
        raise SubspacesError("no voices asked for: give --espeak/--flite/--kokoro/--piper N")
    save_voices(voices, args.out)
    styles = sum(v.engine == "kokoro" for v in voices)
    print(f"wrote {len(voices)} voices to {args.out}"
          + (f" (and {styles} Kokoro style tensors in {Path(args.out).parent / 'styles'})" if styles else ""))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    """Turn a real corpus (KIND:PATH, or plain `fsdd` for the bundled one) into a manifest."""
    from .corpora import load_corpus, relative_paths
    from .manifest import write_manifest

    options = {}
    if args.limit_per_speaker_digit:
        options.update(limit_per_speaker_digit=args.limit_per_speaker_digit, seed=args.seed)
    if args.trials:
        options["trials"] = args.trials
    if args.default_split:
        options["default_split"] = args.default_split
    table = load_corpus(args.spec, **options)
    out = Path(args.out)
    if args.relative:
        table = relative_paths(table, out.parent)
    write_manifest(table, out)
    print(f"wrote {len(table)} rows ({table['speaker'].nunique()} speakers, {table['content'].nunique()} contents) to {out}")
    return 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SubspacesError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    return index, count


def cmd_extract(args: argparse.Namespace) -> int:
    """Run a frozen backbone over a manifest; store pooled features of every layer (resumable)."""
    from .backbones import load_backbone
    from .features import FeatureStore, extract_features

    backbone = load_backbone(args.backbone, allow_download=args.allow_download, precision=args.precision,
                             device=args.device)
    layers = [int(x) for x in _csv_list(args.layers)] if args.layers else None
    out = extract_features(args.manifest, backbone, args.out, layers=layers, pooling=_csv_list(args.pooling),
                           batch_seconds=args.batch_seconds, workers=args.workers, shard=_parse_shard(args.shard))
    store = FeatureStore(out)
    print(f"{out}: {len(store)} utterances, layers {store.layers}, {backbone.describe()['name']}")
    failures = store.failures
    for error in failures["error"].head(10):
        print(f"skipped: {error}", file=sys.stderr)
    if len(failures) > 10:
        print(f"skipped: {len(failures) - 10} more, listed in {Path(out) / 'failures.csv'}", file=sys.stderr)
    return 0 if not len(failures) else 2


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the part stores of `extract --shard i/N` into one store."""
    from .features import merge_feature_stores

    print(f"merged into {merge_feature_stores(args.parts, args.out)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a subspace model on a feature store and its manifest."""
    from .features import FeatureStore, load_features
    from .manifest import read_manifest
    from .training import TrainConfig, TrainError, load_recipe, train

    if args.steps is not None and args.steps < 1:
        raise TrainError(f"--steps must be a positive number of training steps, got {args.steps}")
    config = load_recipe(args.recipe)
    overrides = {key: value for key, value in (("steps", args.steps), ("device", args.device)) if value is not None}
    if overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides}, source=config.source)
    table = read_manifest(args.manifest)
    features = load_features(args.features, table, pooling=config.pooling)
    info = FeatureStore(args.features).info
    backbone = info.get("backbone", {})
    out = train(features, table, config, args.out,
                metadata={"backbone": backbone.get("name"), "backbone_revision": backbone.get("revision")})
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        print(f"model written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate trained models (e.g. one per seed) on real speech beside the raw backbone
    layers and the Resemblyzer baseline; write a report per model and, for several, their
    mean and standard deviation."""
    from .corpora import load_corpus, read_trials
    from .manifest import read_manifest, write_manifest
    from .pipeline import evaluate_models

    out = Path(args.out)
    if args.suite:
        from .suite import evaluate_suite

        if args.corpus or args.trials or args.official_split:
            raise SubspacesError("--suite scores its own corpora; drop --corpus/--trials/--official-split, or drop --suite")
        evaluate_suite(args.model, args.suite, out, max_trials=args.max_trials, device=args.device)
        print(f"report: {out / 'report.md'}")
        return 0
    args.corpus = args.corpus or "fsdd"
    kind = args.corpus.split(":")[0]
    options = {"limit_per_speaker_digit": args.limit_per_speaker_digit} if kind == "fsdd" and args.limit_per_speaker_digit else {}
    if args.trials and kind == "voxceleb1":
        options["trials"] = args.trials  # read only the utterances the list names
    table = load_corpus(args.corpus, **options)
    write_manifest(table, out / "manifest.csv")
    table = read_manifest(out / "manifest.csv")
    trial_list = read_trials(args.trials) if args.trials else None
    official = args.official_split or kind.startswith("speech-commands")
    runs, _, markdown = evaluate_models(args.model, table, out, name=args.corpus, max_trials=args.max_trials,
                                     trial_list=trial_list, official_split=official, device=args.device)
    print(markdown)
    print(f"report: {out / ('report.md' if len(runs) == 1 else 'summary.md')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole default pipeline offline: synthesise, extract, train, evaluate on FSDD."""
    from .pipeline import DEMO_PLANS, run_demo

    started = time.perf_counter()
    run_demo(args.out, DEMO_PLANS[args.size])
    print(f"[demo] finished in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed audio files with a trained model (default: the shipped one): one vector per
    file and subspace, as .npz, .parquet or a Kaldi .ark (+ .scp)."""
    from .atomic import write_atomic
    from .audio import AudioError
    from .inference import load_model

    args.model, args.inputs = _model_and_inputs(args.inputs, 1)
    out = Path(args.out)
    if out.suffix not in (".npz", ".parquet", ".ark") or out.is_dir():
        raise SubspacesError(f"--out {out}: give a file name ending in .npz, .parquet or .ark (the formats written)")
    if args.batch_size < 1:
        raise SubspacesError(f"--batch-size must be a positive integer, got {args.batch_size}")
    files = _audio_files(args.inputs)
    encoder = load_model(args.model, allow_download=args.allow_download, allow_unfinished=args.allow_unfinished,
                         device=args.device)
    readable, waves, failed = [], [], []
    for path in files:
        try:
            waves.append(encoder.read(path))  # decoded once, here; embed takes the arrays
            readable.append(path)
        except AudioError as error:
            failed.append(error)
    if not readable and len(failed) == 1:
        raise failed[0]  # the one file given, and why it cannot be read
    for error in failed:
        print(f"skipped: {error}", file=sys.stderr)
    if not readable:
        raise SubspacesError(f"{', '.join(args.inputs[:3])}{', ...' if len(args.inputs) > 3 else ''}: "
                             f"none of the {len(files)} audio files could be read (each is listed above)")
    vectors = encoder.embed(waves, batch_size=args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pandas as pd

        table = pd.DataFrame({"path": [str(p) for p in readable]})
        for name, matrix in vectors.items():
            table[name] = list(matrix)
        write_atomic(out, lambda tmp: table.to_parquet(tmp, index=False))
    elif out.suffix == ".ark":
        from .scoring import write_kaldi_vectors

        ids = [path.stem for path in readable]
        if len(set(ids)) < len(ids):  # Kaldi ids are file stems; fall back to the paths as given
            ids = [str(path).replace(" ", "_") for path in readable]
        # one archive per subspace, as Kaldi keeps one vector kind per table: x.speaker.ark + .scp, ...
        arks = [write_kaldi_vectors(out.with_name(f"{out.stem}.{name}.ark"), ids, matrix)[0]
                for name, matrix in vectors.items()]
        out = ", ".join(str(ark) for ark in arks) + " (+ .scp)"
    else:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a file handle: np.savez would append .npz to a name
                np.savez(handle, files=np.array([str(p) for p in readable]), **vectors)

        write_atomic(out, write)
    shapes = ", ".join(f"{name} {matrix.shape[1]}" for name, matrix in vectors.items())
    print(f"embedded {len(readable)} file(s) ({shapes}) into {out}")
    return 0 if not failed else 2


def cmd_verify(args: argparse.Namespace) -> int:
    """Score two recordings in a subspace and decide same / different speaker, with a model
    (default: the shipped one) and the threshold calibrated for it."""
    from .inference import load_model, model_folder, read_thresholds, stored_threshold

    model, (a, b) = _model_and_inputs(args.inputs, 2, exactly=True)
    if (model_folder(model) / "config.json").is_file():
        with warnings.catch_warnings():  # warned of once, when verify reads it again below
            warnings.simplefilter("ignore")
            stored_threshold(model, args.subspace)  # refuse before the backbone takes seconds to load
    encoder = load_model(model, allow_download=args.allow_download, allow_unfinished=args.allow_unfinished,
                         device=args.device)
    score, same = encoder.verify(a, b, subspace=args.subspace)
    record = read_thresholds(model)[args.subspace]
    print(f"score {score:.4f}  threshold {record['threshold']:.4f} ({record['operating_point']} on "
          f"{record['data'] or 'unnamed data'})  -> {'same speaker' if same else 'different speakers'}")
    return 0


def _model_and_inputs(inputs: list[str], least: int, *, exactly: bool = False) -> tuple[str, list[str]]:
    """(model, the rest): the first of `inputs` is a model when it is a model folder or a
    shipped model's name, any other path that is neither a folder nor named as audio (so a
    mistyped model folder is reported as such), or when there is one more input than the
    verb takes; else the shipped default model is used."""
    from .inference import DEFAULT_MODEL, pretrained_models

    first = Path(inputs[0]) if inputs else Path()
    is_model = (str(first) in pretrained_models() or (first / "config.json").is_file()
                or (not first.is_dir() and first.suffix.lower() not in AUDIO_SUFFIXES))
    if exactly and len(inputs) == least + 1 or is_model:
        model, rest = str(first), inputs[1:]
    else:
        model, rest = DEFAULT_MODEL, inputs
    if len(rest) < least or (exactly and len(rest) != least):
        raise SubspacesError(f"expected {'' if exactly else 'at least '}{least} audio input(s) after the optional "
                             f"MODEL, got {len(rest)}: {' '.join(inputs)}")
    return model, rest


def cmd_score(args: argparse.Namespace) -> int:
    """Score a trial list (VoxCeleb `1 a b`, Kaldi `a b target`, or unlabelled `a b`) in a
    subspace; write `enroll test score [target|nontarget]` lines, and the EER when labelled."""
    from .inference import load_model
    from .manifest import read_manifest
    from .metrics import eer
    from .scoring import read_trial_list, read_wav_scp, resolver, score_trials, write_scores

    trials = read_trial_list(args.trials)
    manifest = None
    if args.corpus:
        from .corpora import load_corpus

        manifest = read_manifest(args.corpus) if Path(args.corpus).suffix in (".csv", ".parquet") else load_corpus(args.corpus)
    resolve = resolver(root=args.root, wav_scp=read_wav_scp(args.wav_scp) if args.wav_scp else None, manifest=manifest)
    encoder = load_model(args.model, allow_download=args.allow_download, device=args.device)
    scored = score_trials(encoder, trials, resolve, subspace=args.subspace, batch_size=args.batch_size)
    out = write_scores(args.out, scored)
    labelled = scored[scored["label"] >= 0]
    line = f"{len(scored)} trials scored in the {args.subspace} subspace into {out}"
    if len(labelled) and labelled["label"].nunique() == 2:
        line += f"; EER {100 * eer(labelled['score'], labelled['label']):.2f} %"
    print(line)
    return 0


def _speaker_database(args: argparse.Namespace, *, create: bool):
    from .inference import load_model
    from .speakers import INDEX_FILE, SpeakerDatabase

    encoder = load_model(args.model, allow_download=args.allow_download, device=args.device)
    if (Path(args.db) / INDEX_FILE).is_file():
        return SpeakerDatabase.load(args.db, encoder)
    if not create:
        raise SubspacesError(f"{args.db}: no speaker database here; make one with `subspaces enroll {args.db} NAME FILES`")
    return SpeakerDatabase(encoder, subspace=args.subspace)


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll a speaker (one or more recordings) into a speaker database folder (made if new)."""
    database = _speaker_database(args, create=True)
    files = _audio_files(args.files)
    replaced = args.name in database
    database.register(args.name, files)
    database.save(args.db)
    print(f"{'re-enrolled' if replaced else 'enrolled'} {args.name} from {len(files)} recording(s); "
          f"{len(database)} speaker(s) in {args.db}")
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    """Rank the enrolled speakers of a database by cosine score for each recording."""
    database = _speaker_database(args, create=False)
    for path in _audio_files(args.files):
        ranked = database.identify(path, top_k=args.top_k)
        print(f"{path}: " + ", ".join(f"{name} {score:.3f}" for name, score in ranked))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Choose and store a verification threshold from a labelled corpus."""
    from .corpora import load_corpus
    from .pipeline import calibrate_model

    from .suite import SUITES, suite_corpus

    options = {}
    if args.corpus.split(":")[0] == "fsdd" and args.limit_per_speaker_digit:
        options["limit_per_speaker_digit"] = args.limit_per_speaker_digit
    table = suite_corpus(args.corpus) if args.corpus in SUITES else load_corpus(args.corpus, **options)
    if args.split:
        table = table[table["split"] == args.split].reset_index(drop=True)
        if table.empty:
            raise SubspacesError(f"{args.corpus}: no rows with split {args.split!r}")
    record = calibrate_model(args.model, table, subspace=args.subspace, operating_point=args.operating_point,
                             data=f"{args.corpus}" + (f", split {args.split}" if args.split else ""),
                             allow_unfinished=args.allow_unfinished, device=args.device)
    print(f"{args.subspace} threshold {record['threshold']:.4f} at {record['operating_point']} "
          f"(p_miss {record['p_miss']:.3f}, p_fa {record['p_fa']:.3f}) stored in {args.model}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a model to ONNX (waveform in, one output per subspace) and check it."""
    from .corpora import fsdd_root
    from .export import check_onnx, export_onnx

    out = export_onnx(args.model, args.out, head_only=args.head_only, opset=args.opset,
                      allow_unfinished=args.allow_unfinished)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    if args.no_check:
        return 0
    clips = args.check_clips or sorted((fsdd_root() / "recordings").glob("*.wav"))[::300]
    differences = check_onnx(args.model, out, clips, head_only=args.head_only, allow_unfinished=args.allow_unfinished)
    print(f"onnxruntime vs PyTorch on {len(clips)} clips of different lengths in one batch, max abs difference: "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .suite import SUITES

    parser = argparse.ArgumentParser(
        prog="subspaces",
        description="Post-train frozen speech foundation models into speaker and content subspaces.",
    )
    parser.add_argument("--version", action="version", version=f"speech-subspaces {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    encode = verbs.add_parser("encode", help="run a frozen backbone over audio files (every layer, mean-pooled)",
                              description=cmd_encode.__doc__)
    encode.add_argument("inputs", nargs="+", help="audio files or folders")
    encode.add_argument("--backbone", default="whisper-base",
                        help="whisper-base, whisper-tiny.en, a local model folder, or a hub id (default: whisper-base)")
    encode.add_argument("--allow-download", action="store_true", help="allow fetching a hub id from the Hugging Face hub")
    encode.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                         help="auto (default): bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), else float32")
    encode.add_argument("--batch-size", type=int, default=16)
    encode.add_argument("--out", help="write files, pooled [files, layers, width] to this .npz")
    encode.set_defaults(func=cmd_encode)

    demo = verbs.add_parser("demo", help="the whole default pipeline offline (synth, extract, train, evaluate)",
                            description=cmd_demo.__doc__)
    demo.add_argument("--out", default="runs/demo", help="output folder; a rerun reuses finished stages")
    demo.add_argument("--size", choices=("small", "large"), default="small",
                      help="small: espeak-ng + flite voices, minutes; large: + 48 Kokoro and 9 Piper voices (~30 min)")
    demo.set_defaults(func=cmd_demo)

    voices = verbs.add_parser("voices", help="sample a reproducible voice bank", description=cmd_voices.__doc__)
    voices.add_argument("out", help="voice bank .json to write")
    voices.add_argument("--espeak", type=int, default=0, help="espeak-ng voices to sample")
    voices.add_argument("--flite", type=int, default=0, help="flite voices to sample")
    voices.add_argument("--kokoro", type=int, default=0, help="Kokoro voices to sample (mixes of its 5 styles)")
    voices.add_argument("--piper", type=int, default=0, help="Piper voices to sample (warped en_US-joe-medium)")
    voices.add_argument("--seed", type=int, default=0)
    voices.set_defaults(func=cmd_voices)

    synth = verbs.add_parser("synth", help="synthesise an interventional voices x texts grid", description=cmd_synth.__doc__)
    synth.add_argument("out_dir")
    synth.add_argument("--voices", help="voice bank .json (else sample with --espeak/--flite/--kokoro/--piper)")
    synth.add_argument("--espeak", type=int, default=0)
    synth.add_argument("--flite", type=int, default=0)
    synth.add_argument("--kokoro", type=int, default=0)
    synth.add_argument("--piper", type=int, default=0)
    synth.add_argument("--texts", nargs="+", default=["sentences"],
                       help="built-in sets (keywords, words, sentences) or text files, one text per line")
    synth.add_argument("--num-texts", type=int, default=0, help="keep a seeded random subset of this many texts")
    synth.add_argument("--sparse", action="store_true", help="each voice says --per-voice texts, not all")
    synth.add_argument("--per-voice", type=int)
    synth.add_argument("--min-per-text", type=int, default=2)
    synth.add_argument("--val-voices", type=int, default=0, help="voices held out for validation")
    synth.add_argument("--val-texts", type=int, default=0, help="texts held out for validation")
    synth.add_argument("--hold-out", choices=("base", "voice"), default="base",
                       help="hold out whole base voices (default: no held-out voice is a pitch or rate variant "
                            "of a training voice) or single voices")
    synth.add_argument("--channels", help="comma list: clean, telephone, mulaw8, noise20, reverb0.4")
    synth.add_argument("--no-mixed", action="store_true", help="skip held-out-voice x train-text rows and the reverse")
    synth.add_argument("--workers", type=int, default=2)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--restart", action="store_true",
                       help="delete the grid OUT_DIR holds (made with other options) and make this one")
    synth.set_defaults(func=cmd_synth)

    corpus = verbs.add_parser("corpus", help="make a manifest from a real corpus", description=cmd_corpus.__doc__)
    corpus.add_argument("spec", help="fsdd | fsdd:PATH | speech-commands:PATH | speech-commands-12:PATH | "
                                     "voxceleb1:PATH | librispeech:PATH | libritts:PATH | klettres[:PATH] | "
                                     "ktuberling[:PATH] | csv:FILE")
    corpus.add_argument("-o", "--out", required=True, help="manifest .csv or .parquet")
    corpus.add_argument("--limit-per-speaker-digit", type=int, help="FSDD: a seeded subset per speaker x digit")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--trials", help="VoxCeleb1: read only the utterances of this trial list")
    corpus.add_argument("--default-split", help="Speech Commands: split for a folder without split lists")
    corpus.add_argument("--relative", action="store_true", help="store paths relative to the manifest's folder")
    corpus.set_defaults(func=cmd_corpus)

    extract = verbs.add_parser("extract", help="store a backbone's pooled features of a manifest", description=cmd_extract.__doc__)
    extract.add_argument("manifest")
    extract.add_argument("--out", required=True, help="feature store folder")
    extract.add_argument("--backbone", default="whisper-base")
    extract.add_argument("--allow-download", action="store_true")
    extract.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                         help="auto (default): bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), else float32")
    extract.add_argument("--layers", help="comma list of hidden states to keep (default: all)")
    extract.add_argument("--pooling", default="mean,std", help="mean and/or std (default: mean,std)")
    extract.add_argument("--batch-seconds", type=float, default=30.0)
    extract.add_argument("--workers", type=int, default=2, help="audio decoding threads")
    extract.add_argument("--shard", help="i/N: extract only the i-th of N parts (merge them with `merge`)")
    extract.set_defaults(func=cmd_extract)

    merge = verbs.add_parser("merge", help="merge sharded feature stores", description=cmd_merge.__doc__)
    merge.add_argument("parts", nargs="+")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=cmd_merge)

    train = verbs.add_parser("train", help="train a subspace model", description=cmd_train.__doc__)
    train.add_argument("--features", required=True, help="feature store folder")
    train.add_argument("--manifest", required=True, help="the manifest the features were extracted from")
    train.add_argument("--out", required=True, help="model folder (a rerun resumes)")
    train.add_argument("--recipe", default="demo",
                       help="a shipped recipe (demo, paper) or a TOML file (default: demo, the demo's training)")
    train.add_argument("--steps", type=int, help="override the recipe's steps (a positive integer)")
    train.set_defaults(func=cmd_train)

    evaluate = verbs.add_parser("evaluate", help="evaluate a model on real speech; write a report",
                                description=cmd_evaluate.__doc__)
    evaluate.add_argument("--model", required=True, nargs="+", help="model folder(s); several (e.g. seeds) are summarised")
    evaluate.add_argument("--corpus", help="KIND:PATH (default: the bundled FSDD, the test set)")
    evaluate.add_argument("--suite", choices=tuple(SUITES),
                          help="a named suite instead of --corpus: dev = KLettres + KTuberling (choose settings "
                               "here), test = FSDD; one table per corpus")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--limit-per-speaker-digit", type=int, default=10, help="FSDD subset size (0 = all)")
    evaluate.add_argument("--max-trials", type=int, help="a seeded sample of trials instead of all pairs")
    evaluate.add_argument("--trials", help="a trial list (label enroll test), e.g. VoxCeleb1's veri_test2.txt")
    evaluate.add_argument("--official-split", action="store_true",
                          help="keyword probe on the corpus' train/test split (default for Speech Commands)")
    evaluate.set_defaults(func=cmd_evaluate)

    embed = verbs.add_parser("embed", help="embed audio with a trained model", description=cmd_embed.__doc__)
    embed.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                       help="a model folder or shipped name (optional; default: the shipped whisper-base-subspaces), "
                            "then audio files or folders")
    embed.add_argument("--out", required=True, help="vectors.npz, vectors.parquet or vectors.ark (Kaldi, + .scp)")
    embed.add_argument("--batch-size", type=int, default=16)
    embed.add_argument("--allow-download", action="store_true")
    embed.add_argument("--allow-unfinished", action="store_true",
                       help="use a model whose training did not finish (marked UNFINISHED)")
    embed.set_defaults(func=cmd_embed)

    verify = verbs.add_parser("verify", help="same speaker or not, for two recordings", description=cmd_verify.__doc__)
    verify.add_argument("inputs", nargs="+", metavar="[MODEL] A B",
                        help="a model folder or shipped name (optional; default: the shipped whisper-base-subspaces), "
                             "then two recordings")
    verify.add_argument("--subspace", default="speaker")
    verify.add_argument("--allow-download", action="store_true")
    verify.add_argument("--allow-unfinished", action="store_true",
                        help="use a model whose training did not finish (marked UNFINISHED)")
    verify.set_defaults(func=cmd_verify)

    score = verbs.add_parser("score", help="score a trial list; write enroll test score [target]",
                             description=cmd_score.__doc__)
    score.add_argument("model", nargs="?", default="whisper-base-subspaces",
                       help="model folder or shipped name (default: whisper-base-subspaces)")
    score.add_argument("--trials", required=True, help="VoxCeleb (1 a b), Kaldi (a b target) or unlabelled (a b) list")
    score.add_argument("--out", required=True, help="score file to write")
    score.add_argument("--root", help="folder the list's paths are relative to (default: as written)")
    score.add_argument("--wav-scp", help="Kaldi wav.scp mapping the list's utterance ids to files")
    score.add_argument("--corpus", help="a manifest (.csv/.parquet) or corpus spec whose utt_id/trial_path name the clips")
    score.add_argument("--subspace", default="speaker")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--allow-download", action="store_true")
    score.set_defaults(func=cmd_score)

    for verb, func, what in (("enroll", cmd_enroll, "enroll a speaker into a speaker database"),
                             ("identify", cmd_identify, "rank enrolled speakers for recordings")):
        parser_ = verbs.add_parser(verb, help=what, description=func.__doc__)
        parser_.add_argument("db", help="speaker database folder (speakers.safetensors + speakers.json)")
        if verb == "enroll":
            parser_.add_argument("name", help="the speaker's name")
        parser_.add_argument("files", nargs="+", help="audio files or folders")
        parser_.add_argument("--model", default="whisper-base-subspaces",
                             help="model folder or shipped name (default: whisper-base-subspaces)")
        parser_.add_argument("--subspace", default="speaker")
        if verb == "identify":
            parser_.add_argument("--top-k", type=int, default=5)
        parser_.add_argument("--allow-download", action="store_true")
        parser_.set_defaults(func=func)

    calibrate = verbs.add_parser("calibrate", help="store a verification threshold chosen on a labelled corpus",
                                 description=cmd_calibrate.__doc__)
    calibrate.add_argument("model")
    calibrate.add_argument("--corpus", default="dev",
                           help="KIND:PATH, or a suite name (default: dev, the KLettres + KTuberling development "
                                "suite; never calibrate on the test set)")
    calibrate.add_argument("--split", help="use only this split of the corpus (e.g. test)")
    calibrate.add_argument("--limit-per-speaker-digit", type=int, default=0)
    calibrate.add_argument("--subspace", default="speaker")
    calibrate.add_argument("--operating-point", default="eer", choices=["eer", "min_dcf"])
    calibrate.add_argument("--allow-unfinished", action="store_true",
                           help="use a model whose training did not finish (marked UNFINISHED)")
    calibrate.set_defaults(func=cmd_calibrate)

    export = verbs.add_parser("export", help="export to ONNX (checked with onnxruntime when installed)",
                              description=cmd_export.__doc__)
    export.add_argument("model")
    export.add_argument("--out", required=True, help="model.onnx")
    export.add_argument("--head-only", action="store_true", help="pooled features in, instead of waveform in")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--check-clips", nargs="+", help="audio files to check the export on (default: 10 FSDD clips)")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    export.add_argument("--allow-unfinished", action="store_true",
                        help="use a model whose training did not finish (marked UNFINISHED)")
    export.set_defaults(func=cmd_export)
    for name, sub in verbs.choices.items():
        if name in DEVICE_VERBS:
            sub.add_argument("--device", default=None if name == "train" else "cpu",
                             help="cpu, cuda or cuda:N" + (" (default: the recipe's)" if name == "train" else
                                                           " (default: cpu)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit codes: 0 done; 1 an error the user can fix, printed as one line
    `error: ...` (a `SubspacesError`, or a file the system refused: missing, unreadable, a
    full disk); 2 done, but some inputs were skipped (each listed), or bad arguments
    (argparse); 130 interrupted, finished work kept. Anything else is a bug in this
    package and shows its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            # A warning is one line, as an error is (e.g. "warning: a.wav: digital silence ...").
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            if getattr(args, "device", None):
                from .devices import check_device

                check_device(args.device, "--device")  # before any file is read
            return args.func(args)
    except SubspacesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.filename and error.strerror:
            message = f"{error.filename}: {error.strerror}"
        else:
            message = f"{error.filename}: {type(error).__name__}: {error}" if error.filename else str(error)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        # The process is about to end and every output is written atomically: keep the
        # interpreter's shutdown from sweeping torch's and transformers' many objects, which
        # took 1-1.7 s of the 2 s a Ctrl-C may take (0.2-0.3 s frozen; tests/test_interrupts.py).
        gc.freeze()
        return 130
    except Exception:
        traceback.print_exc()
        print("error: the above is a bug in speech-subspaces, not in your input; please report it with the "
              "command you ran", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
