# Call 3: default plan with compiled layers: correctness vs fp32, anchor vs ours, the long-sequence
# table and the loss curve.  run: bash bench/qlora_speed/call3.sh 2>&1 | tee $OUT/call3.log
source bench/qlora_speed/gpu_prelude.sh
timeout 200 python3 bench/qlora_speed/check_equivalence.py qwen2
timeout 100 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
timeout 150 python3 $B speed --recipe ours --shapes 2048x1,2048x4,2048x8,2048x16 --profile
timeout 150 python3 $B speed --recipe ours --shapes 4096x1,4096x4,8192x1,8192x4
timeout 90 python3 $B loss --recipe ours --steps 50
grep -h '^RESULT' $OUT/*.log 2>/dev/null | cut -c1-400
