# Call 8 (session 2): fp32-reference gradients of the new default (Qwen2 and Llama; three steps of
# two accumulated micro-batches, so CUDA graphs replay), then the 7B long-sequence table.
# run: bash bench/qlora_speed/call8.sh 2>&1 | tee $OUT/call8.log   (carry .whl)
source bench/qlora_speed/gpu_prelude.sh
timeout 330 python3 bench/qlora_speed/check_equivalence.py qwen2 llama
T=$((585 - SECONDS)); echo "left ${T}s"
timeout $T python3 $B speed --recipe ours --shapes 4096x1,8192x1,4096x4,8192x4
grep -h '^RESULT\|^PROFILE\|^SAME\|^DIFF' $OUT/*.log 2>/dev/null | cut -c1-1500
