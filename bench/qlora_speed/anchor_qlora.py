"""(Copy of ../shared/gpu/anchor_qlora.py, carried to the GPU with the tree.)
Anchor: plain HF transformers + peft + bitsandbytes QLoRA on a random-init
Qwen2.5-7B-shaped model (speed and memory do not depend on weight values).
Prints tokens/s and peak GPU memory per configuration."""
import json, os, sys, time, gc
import torch

def log(*a):
    print(*a, flush=True)

import transformers, peft, bitsandbytes as bnb
log("versions", json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
    "peft": peft.__version__, "bnb": bnb.__version__, "gpu": torch.cuda.get_device_name()}))
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
    rms_norm_eps=1e-6, tie_word_embeddings=False, torch_dtype="bfloat16")
path = "/tmp/q7"
if not os.path.exists(path + "/config.json"):
    t = time.time()
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    m.save_pretrained(path, max_shard_size="5GB")
    del m; gc.collect(); torch.cuda.empty_cache()
    log(f"random model saved in {time.time()-t:.0f}s")

def run(seq, bs, gc_on, steps=8, warm=3):
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    t = time.time()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    load_s = time.time() - t
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc_on,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                           target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    x = torch.randint(0, cfg.vocab_size, (bs, seq), device="cuda")
    times = []
    for i in range(warm + steps):
        torch.cuda.synchronize(); t0 = time.time()
        out = model(input_ids=x, labels=x)
        out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); times.append(time.time() - t0)
    st = sorted(times[warm:]); med = st[len(st)//2]
    r = {"seq": seq, "bs": bs, "grad_ckpt": gc_on, "load_s": round(load_s, 1), "step_s": round(med, 3),
         "tok_per_s": round(bs * seq / med), "peak_alloc_GiB": round(torch.cuda.max_memory_allocated()/2**30, 2),
         "peak_reserved_GiB": round(torch.cuda.max_memory_reserved()/2**30, 2)}
    log("RESULT", json.dumps(r))
    del model, opt, out; gc.collect(); torch.cuda.empty_cache()
    return r

configs = [(2048, 1, True), (2048, 4, True), (2048, 1, False), (2048, 4, False)]
if len(sys.argv) > 1:
    configs = [tuple(json.loads(a)) for a in sys.argv[1:]]
for c in configs:
    try:
        run(*c)
    except torch.cuda.OutOfMemoryError as e:
        log("RESULT", json.dumps({"cfg": c, "oom": True}))
