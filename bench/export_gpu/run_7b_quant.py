"""AWQ and GPTQ W4A16 of a 7B-shaped model on one GPU: wall time and peak memory, as JSON lines.

Runs the appliance's own exporters (export.awq / export.gptq -> export.compress: llm-compressor
`oneshot`, group size picked to divide every Linear, compressed-tensors output) on a random-init
Qwen2.5-7B-shaped model (speed and memory do not depend on weight values), saved once to /tmp/q7
(the same shape and folder as ../shared/gpu/anchor_qlora.py). The model gets a small word-level
tokenizer with a ChatML template so calibration rows go through the real code path.

    PYTHONPATH=. python bench/export_gpu/run_7b_quant.py --method gptq --samples 32 --seq-len 512
    PYTHONPATH=. python bench/export_gpu/run_7b_quant.py --method awq  --samples 32 --seq-len 512

Needs (beyond torch + transformers + accelerate): llmcompressor==0.14.0.1, compressed-tensors==0.19.0,
loguru, nvidia-ml-py, datasets (+ pyarrow, pandas, dill, multiprocess, xxhash), pyyaml.
Each JSON line: {"event": "result", "method", "samples", "seq_len", "group_size", "wall_s", "oneshot_s",
"peak_gpu_alloc_gib", "peak_gpu_reserved_gib", "peak_rss_gib", "out_gib", ...}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root (export/, appliance/)

MODEL_DIR = Path(os.environ.get("Q7_DIR", "/tmp/q7"))
WORDS = [f"w{i}" for i in range(4000)]


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


def make_model(path: Path, tiny: bool = False) -> None:
    """Random-init Qwen2.5-7B shape in bf16 (weights irrelevant for speed/memory) + a word-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if not (path / "config.json").exists():
        t = time.time()
        shape = (dict(vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2) if tiny else
                 dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4))
        cfg = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                          tie_word_embeddings=False, torch_dtype="bfloat16")
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
        model.save_pretrained(path, max_shard_size="5GB")
        del model
        gc.collect()
        torch.cuda.empty_cache()
        log(event="model_saved", seconds=round(time.time() - t, 1), path=str(path))
    if not (path / "tokenizer.json").exists():
        make_tokenizer(path)


def make_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + ["system", "user", "assistant", "\n"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, additional_special_tokens=specials)
    fast.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    fast.save_pretrained(path)


def calibration_texts(n: int, seq_len: int, seed: int = 0) -> list[str]:
    """n ChatML conversations of about seq_len tokens of random words (the exporter's row shape)."""
    rng = random.Random(seed)
    half = max(8, seq_len // 2 - 8)
    return [f"<|im_start|>user\n{' '.join(rng.choices(WORDS, k=half))}<|im_end|>\n"
            f"<|im_start|>assistant\n{' '.join(rng.choices(WORDS, k=half))}<|im_end|>\n" for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=["gptq", "awq"], required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", default="/tmp/q7-out")
    ap.add_argument("--keep", action="store_true", help="keep the quantized folder")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of the same family (checks the script, CPU ok)")
    args = ap.parse_args()

    import torch
    import transformers

    import llmcompressor
    import compressed_tensors

    log(event="versions", torch=torch.__version__, transformers=transformers.__version__,
        llmcompressor=llmcompressor.__version__, compressed_tensors=compressed_tensors.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, python=sys.version.split()[0])
    if not torch.cuda.is_available() and not args.tiny:
        log(event="error", message="no CUDA device")
        return 1
    model_dir = Path(str(MODEL_DIR) + "-tiny") if args.tiny else MODEL_DIR
    make_model(model_dir, tiny=args.tiny)

    from export.awq import export_awq
    from export.gptq import export_gptq

    out = Path(args.out) / args.method
    shutil.rmtree(out, ignore_errors=True)
    texts = calibration_texts(args.samples, args.seq_len)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    exporter = export_awq if args.method == "awq" else export_gptq
    info = exporter(model_dir, out, texts, max_seq_length=args.seq_len)
    wall = time.time() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    src_size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    log(event="result", method=args.method, samples=info["calibration_samples"], seq_len=args.seq_len,
        group_size=info["group_size"], wall_s=round(wall, 1), oneshot_s=info["seconds"],
        peak_gpu_alloc_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        peak_gpu_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        out_gib=round(size / 2**30, 2), src_gib=round(src_size / 2**30, 2), model=str(model_dir))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
