# Sourced at the start of every device call: install carried wheels, set up paths and logs.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export B=bench/qlora_speed/bench.py
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
