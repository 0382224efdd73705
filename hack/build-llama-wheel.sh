#!/usr/bin/env bash
# Builds (once) a portable CPU wheel of llama-cpp-python and caches it outside the checkout.
#
# Why: the source build takes minutes on 2 cores, and CI clones afresh every time. The wheel is
# keyed by version and build flags under ~/.cache/slm-operator/wheels so a warm machine reuses it.
# GGML_NATIVE=OFF: a native build targets this machine's AMX units and segfaults on the first
# decode of a Q4_0/Q8_0 model (../shared/FACTS.md); we target x86-64-v3 (AVX2/FMA/F16C) instead,
# which also runs on any CPU a user's cluster is likely to have.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CMAKE_ARGS_DEFAULT="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
export CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$CMAKE_ARGS_DEFAULT}"
KEY=$(printf '%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$(python3 -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-12)
CACHE="${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/wheels/llama-cpp-python-$VERSION-$KEY"
if ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "$CACHE"; exit 0
fi
# One build at a time: a second caller (another worktree, a parallel `make`) waits, then reuses it.
mkdir -p "$(dirname "$CACHE")"
exec 9>"$(dirname "$CACHE")/.lock"
flock 9
if ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "$CACHE"; exit 0
fi
rm -rf "$CACHE.tmp"
mkdir -p "$CACHE.tmp"
echo "building llama-cpp-python $VERSION wheel (CMAKE_ARGS=$CMAKE_ARGS); this takes several minutes" >&2
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip wheel --no-deps --no-binary llama-cpp-python \
  -w "$CACHE.tmp" "llama-cpp-python==$VERSION" >&2
rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
echo "$CACHE"
