# Call 7 (session 2): the new default (recompute inside the compiled graph, CUDA graphs, chunked
# fused loss, fused AdamW) against the anchor in one call: batch-1 goal, the 2048 table, the
# 50-step loss curve against the plain recipe, then the fp32-reference gradients and the trainer
# on the GPU. run: bash bench/qlora_speed/call7.sh 2>&1 | tee $OUT/call7.log   (carry .whl, .gpu)
source bench/qlora_speed/gpu_prelude.sh
timeout 100 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
timeout 170 python3 $B speed --recipe ours --shapes 2048x1,2048x4,2048x8,2048x16 --profile
timeout 80 python3 $B speed --recipe ours+nocg --shapes 2048x1
timeout 80 python3 $B loss --recipe ours --steps 50
timeout 90 python3 $B loss --recipe off --steps 50
T=$((585 - SECONDS)); echo "left ${T}s"
[ $T -gt 60 ] && APPLIANCE_TEST_TOKENIZER=$PWD/.gpu/tok timeout $((T - 5)) python3 -m pytest -q -x -p no:cacheprovider tests/test_train_gpu.py tests/test_speedups.py -m gpu 2>&1 | tail -25
grep -h '^RESULT\|^PROFILE\|^SAME\|^DIFF' $OUT/*.log 2>/dev/null | cut -c1-1500
