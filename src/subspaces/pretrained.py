"""The model shipped in the package, and how it is made and checked.

`whisper-base-subspaces` (in `data/pretrained/`) is the model `subspaces demo` trains
(recipe `demo`, seed 0), with a speaker-verification threshold calibrated on the
development suite (KLettres + KTuberling, same-language trials), never on the test set.
Its folder's README.md is the model card, written here from the run that made it.

    python -m subspaces.pretrained --work runs/pretrained           # rebuild it into the package
    python -m subspaces.pretrained --work runs/pretrained --check   # rerun, compare with the shipped one

`check_pretrained` reruns the demo's training (synthesis, extraction, training; a few
minutes) and compares the result with the shipped model: the same config and the same
cosine scores on FSDD clips to within `SCORE_TOLERANCE`, so the shipped file cannot drift
from what the documented command makes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import SubspacesError
from .metrics import unit_rows
from .inference import DEFAULT_MODEL, PRETRAINED_FOLDER, THRESHOLDS_FILE, load_model, read_thresholds
from .model import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["SCORE_TOLERANCE", "build_pretrained", "check_pretrained", "compare_models", "model_card"]

# Scores of the rebuilt and the shipped model may differ by float rounding across CPUs
# (the LDA start and the matrix products are not bit-exact between instruction sets).
SCORE_TOLERANCE = 1e-3
DEV_DATA = "dev"  # as `subspaces calibrate MODEL --corpus dev` records it


class PretrainedError(SubspacesError, RuntimeError):
    """The shipped model is not what its documented command makes."""


def _check_clips(count: int = 12) -> list[Path]:
    from .corpora import fsdd_root

    files = sorted((fsdd_root() / "recordings").glob("*.wav"))
    return files[:: max(1, len(files) // count)][:count]


def compare_models(a: str | Path, b: str | Path, clips: list[Path] | None = None) -> dict[str, float]:
    """Largest difference, per subspace, between the two models' cosine scores over all
    pairs of `clips` (default: 12 FSDD clips). Per-direction sign flips (an LDA's
    eigenvectors have no sign) leave cosines unchanged, so they do not count."""
    clips = clips or _check_clips()
    first = load_model(a)
    second = load_model(b, backbone=first.backbone)
    out = {}
    for name in first.subspaces:
        scores = []
        for encoder in (first, second):
            vectors = unit_rows(encoder.embed(clips)[name])
            scores.append(vectors @ vectors.T)
        out[name] = float(np.abs(scores[0] - scores[1]).max())
    return out


def _config(folder: Path) -> dict:
    return json.loads((folder / CONFIG_FILE).read_text())


def check_pretrained(work: str | Path, shipped: str | Path | None = None) -> dict[str, float]:
    """Rerun the demo's training into `work` and compare it with the shipped model;
    raises `PretrainedError` if the config differs or a score moves by more than
    `SCORE_TOLERANCE`. Returns the largest score difference per subspace."""
    from .pipeline import DemoPlan, run_demo

    shipped = Path(shipped or PRETRAINED_FOLDER / DEFAULT_MODEL)
    work = Path(work)
    run_demo(work / "demo", DemoPlan(precision="float32"), evaluate=False)
    rebuilt = work / "demo" / "model"
    if _config(rebuilt)["config"] != _config(shipped)["config"]:
        raise PretrainedError(f"{shipped}: its config differs from the one `subspaces demo` trains now ({rebuilt}); "
                              "rebuild it with python -m subspaces.pretrained")
    differences = compare_models(rebuilt, shipped)
    moved = {name: value for name, value in differences.items() if value > SCORE_TOLERANCE}
    if moved:
        raise PretrainedError(f"{shipped}: scores differ from a rebuilt model's by up to {moved} (tolerance "
                              f"{SCORE_TOLERANCE}); rebuild it with python -m subspaces.pretrained")
    return differences


def model_card(folder: Path, results: dict | None) -> str:
    """The README.md of a shipped model: what it is, what it scored on what, how to remake it."""
    config = _config(folder)
    sizes = " + ".join(f"{name} {size}" for name, size in config["config"]["subspaces"])
    threshold = read_thresholds(folder).get("speaker")
    lines = [
        "---", "library_name: speech-subspaces", "license: mit", "tags: [speaker-verification, speech, whisper]", "---",
        "", f"# {folder.name}", "",
        "Speaker and content subspaces of Whisper base's encoder (`whisper-base`, "
        f"{config['metadata'].get('backbone_revision')}), trained by `subspaces demo` (recipe `demo`, seed 0) on "
        "synthetic speech only: 80 voices (48 espeak-ng, 32 flite) x 64 English words. Subspaces: " + sizes + ".",
        "", "```python", "import subspaces", f'model = subspaces.load_model("{folder.name}")',
        'model.verify("a.wav", "b.wav")   # (score, same speaker?)', "```", "",
    ]
    if threshold:
        lines += ["## Threshold", "",
                  f"Speaker threshold {threshold['threshold']:.4f} at the {threshold['operating_point']} operating point "
                  f"of {threshold['data']} (p_miss {threshold['p_miss']:.3f}, p_fa {threshold['p_fa']:.3f}); chosen on "
                  "the development suite, never on the test set.", ""]
    if results:
        lines += ["## Scores (FSDD, the test set: 6 speakers, 600 clips, all 179,700 pairs)", "",
                  "| system | speaker EER all | matched | mismatched | keyword probe |", "|---|---:|---:|---:|---:|"]
        for name in ("ours: speaker subspace", "ours: content subspace", "raw layer 0", "Resemblyzer d-vector"):
            if name in results["systems"]:
                row = results["systems"][name]
                cells = [row["verification"][group]["eer"] for group in ("all", "matched", "mismatched")]
                cells.append(row["keyword"]["accuracy"])
                lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in cells) + " |")
        lines += ["", "Dev-suite results over 3 seeds are in the project's README (`subspaces evaluate --suite dev`).", ""]
    lines += ["## Make it again", "", "```bash", "python -m subspaces.pretrained --work runs/pretrained          # rebuild",
              "python -m subspaces.pretrained --work runs/pretrained --check  # compare with this copy", "```", ""]
    return "\n".join(lines)


def build_pretrained(work: str | Path, dest: str | Path | None = None) -> Path:
    """Run the demo into `work`, calibrate its model on the dev suite, and install it
    (config, weights, threshold, model card) as the shipped model `dest`."""
    from .pipeline import DemoPlan, calibrate_model, run_demo
    from .suite import suite_corpus

    work, dest = Path(work), Path(dest or PRETRAINED_FOLDER / DEFAULT_MODEL)
    results = run_demo(work / "demo", DemoPlan(precision="float32"))
    model = work / "demo" / "model"
    calibrate_model(model, suite_corpus("dev"), data=DEV_DATA)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE):
        shutil.copyfile(model / name, dest / name)
    write_text_atomic(dest / "README.md", model_card(dest, results))
    return dest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m subspaces.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="working folder for the demo run")
    parser.add_argument("--check", action="store_true", help="compare a rebuilt model with the shipped one")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check:
        print(f"largest score difference per subspace: {check_pretrained(args.work)}")
    else:
        print(f"wrote {build_pretrained(args.work)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
