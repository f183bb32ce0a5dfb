# Call 5: packing vs padding on a long-tailed length mix (eager default and compiled default, which
# sees many padded widths), then the Llama equivalence check if time is left.
# run: bash bench/qlora_speed/call5.sh 2>&1 | tee $OUT/call5.log
source bench/qlora_speed/gpu_prelude.sh
timeout 120 python3 $B pack --recipe ours-eager --bs 4
timeout 170 python3 $B pack --recipe ours --bs 4
T=$((350 - SECONDS)); echo "equivalence budget ${T}s"
[ $T -gt 60 ] && timeout $T python3 bench/qlora_speed/check_equivalence.py llama
grep -h '^RESULT\|^SAME\|^DIFF' $OUT/*.log 2>/dev/null | cut -c1-900
