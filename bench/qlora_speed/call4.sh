# Call 4 (last): loss curve of the default plan vs kernels: off (same call, same random base), packing,
# the 8B Llama shape, and engineer B's AWQ/GPTQ export bench (bench/export_gpu/run_7b_quant.py).
# Export runs beside the loss curves only (those are not timed); timed runs run alone.
# run: bash bench/qlora_speed/call4.sh 2>&1 | tee $OUT/call4.log
source bench/qlora_speed/gpu_prelude.sh
python3 -c "import sys; sys.argv=['x']; sys.path.insert(0,'bench/qlora_speed'); import bench; bench.ensure_model('qwen7b')"
(timeout 200 python3 bench/export_gpu/run_7b_quant.py --method gptq --samples 32 --seq-len 512 > $OUT/export_gptq.log 2>&1; echo "gptq rc=$?" >> $OUT/export_gptq.log) &
GPTQ=$!
(python3 -c "import sys; sys.path.insert(0,'bench/qlora_speed'); import bench; bench.ensure_model('llama8b')" > $OUT/l8gen.log 2>&1) &
L8=$!
timeout 100 python3 $B loss --recipe off --steps 50
timeout 70 python3 $B loss --recipe ours --steps 50
wait $GPTQ $L8
timeout 110 python3 $B pack --recipe ours --bs 4
timeout 90 python3 $B speed --model llama8b --recipe ours --shapes 2048x1,2048x4
T=$((580 - SECONDS)); echo "awq budget ${T}s"
[ $T -gt 60 ] && (timeout $T python3 bench/export_gpu/run_7b_quant.py --method awq --samples 32 --seq-len 512 > $OUT/export_awq.log 2>&1; echo "awq rc=$?" >> $OUT/export_awq.log)
grep -h '^RESULT\|"event": "result"\|rc=' $OUT/*.log 2>/dev/null | cut -c1-600
