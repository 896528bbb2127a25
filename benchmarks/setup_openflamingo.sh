#!/usr/bin/env bash
# Why: OpenFlamingo's code runs from venvs of its own, apart from the project's:
#   .bench/openflamingo-venv         what scripts/convert_mmc4_to_wds.py needs (bench_training_shards.py)
#   .bench/openflamingo-loader-venv  with --loader: what open_flamingo/train/data.py needs, on the
#                                    CPU (openflamingo_loader_check.py); torch is several GB
# webdataset is pinned below 0.2.96 (OpenFlamingo's group_by_keys_nothrow fails with
# KeyError: 'fname' on later releases) and transformers below 5 (data.py reads
# tokenizer.additional_special_tokens). Neither source ships in the open-flamingo package, so pass
# a checkout of OpenFlamingo's repository (git clone https://github.com/mlfoundations/open_flamingo);
# it is copied to .bench/open_flamingo.
set -euo pipefail
cd "$(dirname "$0")/.."
LOADER=0
if [ "${1:-}" = "--loader" ]; then LOADER=1; shift; fi
CHECKOUT=${1:-.bench/open_flamingo}
if [ ! -f "$CHECKOUT/open_flamingo/scripts/convert_mmc4_to_wds.py" ]; then
    echo "usage: $0 [--loader] PATH_TO_AN_OPEN_FLAMINGO_CHECKOUT (default .bench/open_flamingo)" >&2
    exit 1
fi
if [ "$(realpath "$CHECKOUT")" != "$(realpath -m .bench/open_flamingo)" ]; then
    rm -rf .bench/open_flamingo && mkdir -p .bench && cp -r "$CHECKOUT" .bench/open_flamingo
fi

pip_install() {  # venv, packages...
    local venv=$1; shift
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/pip" install --quiet --upgrade pip "$@" 2>&1 | grep -v "is ignored: it is neither" || true
}

COMMON=("webdataset==0.2.86" "braceexpand==0.1.7" "Pillow>=10.4,<13")
pip_install .bench/openflamingo-venv "${COMMON[@]}"
.bench/openflamingo-venv/bin/python -c "import webdataset, braceexpand, PIL; print('converter venv ready')"

if [ "$LOADER" = 1 ]; then
    case "$(uname -m)" in
        aarch64) TORCH=("torch==2.9.1" "torchvision==0.24.1") ;;
        *) TORCH=("torch==2.14.1" "torchvision==0.29.1") ;;
    esac
    pip_install .bench/openflamingo-loader-venv "${COMMON[@]}" "${TORCH[@]}" \
        "transformers>=4.28.1,<5" "tokenizers" "scipy" "numpy"
    .bench/openflamingo-loader-venv/bin/python -c \
        "import torch, torchvision, transformers, scipy, webdataset; print('loader venv ready: torch', torch.__version__, 'transformers', transformers.__version__)"
fi
