"""appliance: from a JSONL chat dataset to a signed, quantized model behind an OpenAI-compatible
endpoint, on one GPU or a laptop.

    appliance train                 # QLoRA/LoRA SFT of the embedded model on the sample data
    appliance chat --prompt "Hi"    # talk to the latest run
    appliance merge                 # adapter + base -> merged/<run>/
    appliance export --format gguf:q4_k_m,awq,gptq
    appliance serve                 # gateway + engine on http://127.0.0.1:8000/v1
"""

__version__ = "0.1.0"
