"""The `subspaces` command line: a thin layer over the Python API.

Each verb is one call a user could make from Python; this module only parses
arguments, prints results, and turns library errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


def _audio_files(items: list[str]) -> list[Path]:
    """Files as given, and the audio files inside any folder, sorted."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(path)
    return files


def cmd_encode(args: argparse.Namespace) -> int:
    """Run a frozen backbone over audio files; save every layer's mean-pooled vector."""
    from tqdm import tqdm

    from .audio import AudioError, load_audio
    from .backbones import load_backbone

    backbone = load_backbone(args.backbone, allow_download=args.allow_download, precision=args.precision)
    info = backbone.describe()
    print(f"{info['name']} ({info['family']}, {info['revision']}): {info['num_layers']} hidden states "
          f"x {info['width']}, {info['frame_rate']:g} frames/s, {info['precision']}")
    files = _audio_files(args.inputs)
    if not files:
        raise SystemExit("error: no audio files among the inputs")
    names, vectors, failed = [], [], []
    audio_seconds, started = 0.0, time.perf_counter()
    for start in tqdm(range(0, len(files), args.batch_size), desc="encode", unit="batch", disable=None):
        waves, batch_names = [], []
        for path in files[start : start + args.batch_size]:
            try:
                waves.append(load_audio(path, backbone.sample_rate, min_samples=backbone.min_samples,
                                        max_duration_s=backbone.max_samples / backbone.sample_rate
                                        if backbone.max_samples else None))
                batch_names.append(str(path))
            except AudioError as error:
                failed.append(str(error))
        if not waves:
            continue
        output = backbone.encode(waves)
        vectors.append(output.mean_pool().permute(1, 0, 2).numpy())
        names.extend(batch_names)
        audio_seconds += sum(len(w) for w in waves) / backbone.sample_rate
    elapsed = time.perf_counter() - started
    for message in failed:
        print(f"skipped: {message}", file=sys.stderr)
    if not names:
        print("error: no file could be read", file=sys.stderr)
        return 1
    pooled = np.concatenate(vectors)
    print(f"encoded {len(names)} file(s), {audio_seconds:.1f} s of audio in {elapsed:.1f} s "
          f"({audio_seconds / elapsed:.0f}x real time); mean-pooled vectors: {pooled.shape} "
          "(files x hidden states x width)")
    norms = np.linalg.norm(pooled, axis=2).mean(axis=0)
    print("mean vector norm per hidden state: " + ", ".join(f"{i}:{n:.1f}" for i, n in enumerate(norms)))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, files=np.array(names), pooled=pooled, layers=np.arange(pooled.shape[1]))
        print(f"wrote {out}")
    return 0 if not failed else 2


def build_parser() -> argparse.ArgumentParser:
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
    encode.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    encode.add_argument("--batch-size", type=int, default=16)
    encode.add_argument("--out", help="write files, pooled [files, layers, width] to this .npz")
    encode.set_defaults(func=cmd_encode)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .audio import AudioError
    from .backbones import BackboneUnavailable
    from .manifest import ManifestError

    try:
        return args.func(args)
    except (AudioError, BackboneUnavailable, ManifestError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
