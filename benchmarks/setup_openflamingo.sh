#!/usr/bin/env bash
# Why: OpenFlamingo's scripts/convert_mmc4_to_wds.py needs webdataset, braceexpand and Pillow in a
# venv of their own (webdataset pinned as OpenFlamingo's loader needs it), apart from the project's.
# Its source is not in the open-flamingo package; pass a checkout of OpenFlamingo's repository
# (git clone https://github.com/mlfoundations/open_flamingo), which is copied to .bench/open_flamingo.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=${1:-.bench/open_flamingo}
VENV=.bench/openflamingo-venv
if [ ! -f "$CHECKOUT/open_flamingo/scripts/convert_mmc4_to_wds.py" ]; then
    echo "usage: $0 PATH_TO_AN_OPEN_FLAMINGO_CHECKOUT (default .bench/open_flamingo)" >&2
    exit 1
fi
if [ "$(realpath "$CHECKOUT")" != "$(realpath -m .bench/open_flamingo)" ]; then
    rm -rf .bench/open_flamingo && mkdir -p .bench && cp -r "$CHECKOUT" .bench/open_flamingo
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/pip" install --quiet "webdataset==0.2.86" "braceexpand==0.1.7" "Pillow>=10.4,<13" \
        2>&1 | grep -v "is ignored: it is neither" || true
fi
"$VENV/bin/python" -c "import webdataset, braceexpand, PIL; print('converter venv ready')"
