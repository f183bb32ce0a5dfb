# Call 9 (session 2): the Llama-3.1-8B shape table and packing vs padding with the new default.
# run: bash bench/qlora_speed/call9.sh 2>&1 | tee $OUT/call9.log   (carry .whl)
source bench/qlora_speed/gpu_prelude.sh
timeout 300 python3 $B speed --model llama8b --recipe ours --shapes 2048x1,4096x1,8192x1,2048x4,4096x4,8192x4
T=$((585 - SECONDS)); echo "left ${T}s"
timeout $T python3 $B pack --recipe ours --bs 4
grep -h '^RESULT\|^PROFILE\|^SAME\|^DIFF' $OUT/*.log 2>/dev/null | cut -c1-1500
