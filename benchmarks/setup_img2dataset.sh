#!/usr/bin/env bash
# Why: img2dataset pins its own dependency set (albumentations, fsspec, ...), which must not leak
# into the project venv; bench_download.py runs it from this separate venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.bench/img2dataset
if [ ! -x "$VENV/bin/img2dataset" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "img2dataset==1.47.0" 2>&1 | grep -v "is ignored: it is neither" || true
fi
NO_ALBUMENTATIONS_UPDATE=1 "$VENV/bin/python" -c "import img2dataset; print('img2dataset ready')"
