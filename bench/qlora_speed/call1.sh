# Call 1: anchor vs our default, where the time goes, and candidate changes (seq 2048, Qwen2.5-7B shape).
# run: bash bench/qlora_speed/call1.sh 2>&1 | tee $OUT/call1.log
source bench/qlora_speed/gpu_prelude.sh
timeout 150 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
timeout 150 python3 $B speed --recipe ours --shapes 2048x1,2048x4,2048x8 --profile
timeout 90 python3 $B speed --recipe ours-adamw --shapes 2048x1,2048x4
timeout 90 python3 $B speed --recipe ours-skip28 --shapes 2048x1,2048x4
timeout 150 python3 $B speed --recipe ours-compile --shapes 2048x1
grep -h '^RESULT' $OUT/*.log 2>/dev/null | cut -c1-220
