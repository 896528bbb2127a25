#!/usr/bin/env bash
# Why: the reference download_images.py runs as it ships, with its own requirements (which must
# not leak into the project venv) and ImageMagick's mogrify, which it calls to shrink images.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mogrify >/dev/null \
    || { if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
           echo "installing imagemagick (the reference calls mogrify)"
           apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick >/dev/null
         else echo "mogrify is missing: install ImageMagick (Debian/Ubuntu: sudo apt-get install imagemagick)"; exit 1; fi; }
VENV=.bench/reference
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import magic, lapjv, scipy" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r benchmarks/requirements-reference.txt 2>&1 | grep -v "is ignored: it is neither" || true
fi
"$VENV/bin/python" -c "import magic, pandas, PIL; print('reference environment ready')"
