# Call 10 (session 2): the batch-1 ratio again on a fresh machine (anchor and default in one call),
# then packing vs padding timed after two warm-up passes (every width compiled and its CUDA graph
# recorded), so the timed pass replays. run: bash bench/qlora_speed/call10.sh 2>&1 | tee $OUT/call10.log
source bench/qlora_speed/gpu_prelude.sh
timeout 100 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
timeout 90 python3 $B speed --recipe ours --shapes 2048x1
T=$((585 - SECONDS)); echo "left ${T}s"
timeout $T python3 $B pack --recipe ours --bs 4 --warm-passes 2
grep -h '^RESULT\|^PROFILE\|^SAME\|^DIFF' $OUT/*.log 2>/dev/null | cut -c1-1500
