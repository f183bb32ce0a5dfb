#!/usr/bin/env bash
# llama.cpp for the image, the way bootstrap.sh's install_llama_cpp_tools builds it:
#   1. llama-cpp-python (the Python binding the exporter quantizes with), compiled from its sdist;
#   2. the HF->GGUF converter from the same sdist (convert_hf_to_gguf.py + conversion/ + gguf-py/)
#      into <venv>/share/llama.cpp, where appliance/toolchain.py looks;
#   3. the native llama-server, built from the same vendored sources, next to the converter.
# GGML_NATIVE=OFF so the binaries run on any x86-64 CPU, not only the build machine's; on the GPU
# image GGML_CUDA=ON for CUDA_ARCHITECTURES.
#
#   LLAMA_CPP_VERSION=0.3.36 bash docker/llama-tools.sh /opt/appliance/venv gpu|cpu
set -euo pipefail

venv="${1:?usage: llama-tools.sh VENV gpu|cpu}"
variant="${2:?usage: llama-tools.sh VENV gpu|cpu}"
version="${LLAMA_CPP_VERSION:?set LLAMA_CPP_VERSION}"
share="$venv/share/llama.cpp"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

flags=(-DGGML_NATIVE=OFF)
if [ "$variant" = gpu ]; then
  flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-80;86;89;90}")
fi

"$venv/bin/pip" download --no-cache-dir --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version"
vendor="$src/vendor/llama.cpp"

CMAKE_ARGS="${flags[*]}" "$venv/bin/pip" install --no-cache-dir "$src[server]"

mkdir -p "$share"
cp -r "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" "$share/"
if [ -d "$vendor/models" ]; then
  mkdir -p "$share/models"
  cp "$vendor"/models/*.jinja "$share/models/" 2>/dev/null || true
fi

cmake -S "$vendor" -B "$work/build" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
cmake --build "$work/build" --target llama-server -j "$(nproc)"
install -m 0755 "$work/build/bin/llama-server" "$share/llama-server"
# A CUDA build needs the driver (libcuda) to start, which a build has no access to: check CPU builds only.
if [ "$variant" != gpu ]; then "$share/llama-server" --version; fi
