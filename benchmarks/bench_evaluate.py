"""Time and memory of `evaluate_systems` on a large synthetic manifest, all pairs.

Builds a manifest in memory (default 20,000 rows: 50 speakers x 400 clips; 5 languages of
10 speakers each, 5 of the speakers bilingual; 300 content classes, 60 per language) and
10 synthetic embedding systems (float32, widths 384-512: a speaker direction of varying
strength, a weaker content direction and Gaussian noise), then runs `evaluate_systems`
on ALL pairs (the streamed path: 200 M pairs at 20,000 rows) with both probes, and prints
the wall time and the peak resident memory of the whole call. `--report DIR` then also
times `report.write_report` (plots on a bounded sample of trials).

    python benchmarks/bench_evaluate.py                 # 20,000 rows, 10 systems
    python benchmarks/bench_evaluate.py --rows 3000
    python benchmarks/bench_evaluate.py --report /tmp/bench-report
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from subspaces.evaluate import evaluate_systems, summary_table


def rss_mib() -> float:
    """The process' resident memory now (Linux /proc), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(rows: int, speakers: int, languages: int, contents: int, systems: int, seed: int):
    """A manifest and `systems` embedding matrices float32[rows, D] aligned with it."""
    rng = np.random.default_rng(seed)
    per_speaker = rows // speakers
    speaker = np.repeat(np.arange(speakers), per_speaker)[:rows]
    speaker = np.concatenate([speaker, rng.integers(0, speakers, rows - len(speaker))])
    home = speaker % languages
    # Every 10th speaker is bilingual: half of their clips in the next language.
    bilingual = (speaker % 10 == 0) & (rng.random(rows) < 0.5)
    language = np.where(bilingual, (home + 1) % languages, home)
    words = max(1, contents // languages)
    word = rng.integers(0, words, rows)
    content_id = language * words + word
    table = pd.DataFrame({
        "utt_id": [f"u{i:06d}" for i in range(rows)], "speaker": [f"spk{s:03d}" for s in speaker],
        "content": [f"lang{lang}:w{w:03d}" for lang, w in zip(language, word)],
        "language": [f"lang{lang}" for lang in language], "split": "test",
    })
    widths = np.linspace(384, 512, systems).round().astype(int)
    strengths = np.linspace(0.15, 0.6, systems)
    vectors = {}
    for k, (width, strength) in enumerate(zip(widths, strengths)):
        speaker_axis = rng.standard_normal((speakers, width), dtype=np.float32)
        content_axis = rng.standard_normal((languages * words, width), dtype=np.float32)
        x = rng.standard_normal((rows, width), dtype=np.float32)
        x += strength * speaker_axis[speaker]
        x += 0.5 * strength * content_axis[content_id]
        vectors[f"system {k} (d={width})"] = x
    return table, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--speakers", type=int, default=50)
    parser.add_argument("--languages", type=int, default=5)
    parser.add_argument("--contents", type=int, default=300)
    parser.add_argument("--systems", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probes", action="store_true",
                        help="verification only (the keyword probe's logistic regressions on 300 classes "
                             "take most of the time)")
    parser.add_argument("--no-speaker-probe", action="store_true", help="skip the speaker-ID probe")
    parser.add_argument("--report", help="also write the report (plots) into this folder and time it")
    args = parser.parse_args()

    started = time.perf_counter()
    table, systems = build(args.rows, args.speakers, args.languages, args.contents, args.systems, args.seed)
    embedding_mib = sum(v.nbytes for v in systems.values()) / 2**20
    pairs = args.rows * (args.rows - 1) // 2
    print(f"built {args.rows:,} rows ({table['speaker'].nunique()} speakers, {table['language'].nunique()} "
          f"languages, {table['content'].nunique()} contents), {len(systems)} systems of widths "
          f"{min(v.shape[1] for v in systems.values())}-{max(v.shape[1] for v in systems.values())} "
          f"({embedding_mib:.0f} MiB of float32 embeddings) in {time.perf_counter() - started:.1f} s; "
          f"{pairs:,} pairs", flush=True)
    before, peak_before = rss_mib(), peak_rss_mib()
    print(f"RSS before evaluate_systems: {before:.0f} MiB (peak so far {peak_before:.0f} MiB)", flush=True)

    started = time.perf_counter()
    results = evaluate_systems(systems, table, probes=not args.no_probes, speaker_id_probe=not args.no_speaker_probe)
    wall = time.perf_counter() - started
    peak = peak_rss_mib()
    print(summary_table(results))
    print(f"trials: {results['trials']}")
    what = "verification only" if args.no_probes else "verification and probes"
    print(f"evaluate_systems ({what}), all {pairs:,} pairs, {len(systems)} systems: wall {wall:.1f} s; "
          f"peak RSS {peak:.0f} MiB (+{peak - before:.0f} MiB over the {before:.0f} MiB before the call)", flush=True)

    if args.report:
        from subspaces.report import write_report

        started = time.perf_counter()
        write_report(results, args.report, systems=systems, table=table, title="bench_evaluate")
        print(f"write_report: wall {time.perf_counter() - started:.1f} s; peak RSS {peak_rss_mib():.0f} MiB; "
              f"{Path(args.report) / 'report.md'}", flush=True)


if __name__ == "__main__":
    main()
