# Call 6 (session 2): batch-1 overhead. Anchor, then the shipped default and one change at a time:
# fused AdamW, 1024-token loss chunks, recompute inside the compiled graph, CUDA graphs.
# run: bash bench/qlora_speed/call6.sh 2>&1 | tee $OUT/call6.log
source bench/qlora_speed/gpu_prelude.sh
timeout 100 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
for r in ours ours+adamw ours+adamw+chunk ours+adamw+chunk+ckg; do
  timeout 90 python3 $B speed --recipe $r --shapes 2048x1 --profile
done
TORCH_LOGS=perf_hints timeout 120 python3 $B speed --recipe ours+adamw+chunk+ckg+cg --shapes 2048x1,2048x4 --profile 2>&1 | grep -v '^\s*$' | cut -c1-600 | tail -60
T=$((560 - SECONDS)); echo "left ${T}s"
[ $T -gt 70 ] && timeout $T python3 $B speed --recipe ours+adamw+chunk+ckg --shapes 2048x4,2048x16
grep -h '^RESULT\|^PROFILE' $OUT/*.log 2>/dev/null | cut -c1-1500
