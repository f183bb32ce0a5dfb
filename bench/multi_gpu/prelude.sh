# Sourced at the start of every 2-GPU call: carried wheels, NVLink multicast off, the random
# Qwen2.5-7B-shaped model in /tmp/q7 with SmolLM2's tokenizer (.gpu/tok, carried; its ids < the
# model's vocab), and per-GPU memory sampled by nvidia-smi into $OUT/gpu_mem.csv (stop: kill $SMI).
source bench/qlora_speed/gpu_prelude.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -f /tmp/q7/config.json ] || python3 -c "import sys; sys.path.insert(0, 'bench/qlora_speed'); import bench; bench.ensure_model('qwen7b')" 2>&1 | grep -v Writing
cp .gpu/tok/* /tmp/q7/
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > $OUT/gpu_mem.csv &
SMI=$!
