#!/usr/bin/env bash
# Set up speech-subspaces on a fresh Debian machine (root, Python 3.11, no GPU):
# system packages (espeak-ng, flite, klettres-data, ktuberling-data), a virtual environment
# in .venv, torch 2.13.0 (CPU wheel) first, then the project. Safe to rerun: what is already there is kept.
#   bash scripts/install.sh          # the package and its command-line tool
#   bash scripts/install.sh --test   # ... plus what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[baselines,export]"
[ "${1:-}" = "--test" ] && extras="[baselines,export,test]"

# Text-to-speech engines for the synthetic grid, and the development corpora of real speech
# (KDE's recorded letters and words, Debian main, GPL-2+: read in place, never bundled).
missing=()
for package in espeak-ng flite klettres-data ktuberling-data; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "warning: not root and no sudo; install these yourself (speech synthesis and the dev corpora): ${missing[*]}" >&2
    fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: speech-subspaces needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
# The Resemblyzer speaker baseline, without its stale requirements (see pyproject.toml).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps resemblyzer==0.1.4
echo "speech-subspaces installed in .venv ($(.venv/bin/subspaces --version))"
