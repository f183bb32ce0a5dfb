# 2-GPU FSDP + QLoRA, Qwen2.5-7B shape: the plain recipe (kernels=off) with per-GPU memory, tokens/s
# and merge; then the default plan with CUDA_LAUNCH_BLOCKING=1 and its full log (it failed in call 1).
# run on nvidia-h200-x2: bash bench/multi_gpu/call3.sh 2>&1 | tee $OUT/call3.log   (carry .whl, .gpu)
source bench/multi_gpu/prelude.sh
timeout 180 python3 -m appliance.cli train --home /tmp/ws2 --model /tmp/q7 --gpus 2 --packing --max-steps 8 \
  --run-name q7-off --set kernels=off --set batch_size=2 --set max_seq_len=2048 --set save_every=4 > $OUT/off.log 2>&1
echo "off rc $?"; kill $SMI
grep -v "Loading weights" $OUT/off.log | grep -i "error\|step \|done\|optimizer\|speed-ups\|launching" | cut -c1-300 | head -20
python3 bench/multi_gpu/summarise.py $OUT/gpu_mem.csv /tmp/ws2/runs/q7-off/metrics.jsonl
ls /tmp/ws2/runs/q7-off/adapter /tmp/ws2/runs/q7-off/checkpoints 2>&1 | head
CUDA_LAUNCH_BLOCKING=1 timeout 75 python3 -m appliance.cli train --home /tmp/ws3 --model /tmp/q7 --gpus 2 --packing --max-steps 3 \
  --run-name q7-default --set batch_size=2 --set max_seq_len=2048 --set save_every=0 > $OUT/default.log 2>&1
echo "default rc $?"
grep "rank1\]" $OUT/default.log | grep -v "\^\^\^" | tail -30 | cut -c1-300
T=$((390 - SECONDS)); echo "left ${T}s"
[ -d /tmp/ws2/runs/q7-off/adapter ] && timeout $T python3 -m appliance.cli merge --home /tmp/ws2 --run q7-off > $OUT/merge.log 2>&1; echo "merge rc $?"
grep -v "Loading weights" $OUT/merge.log | tail -8 | cut -c1-300; ls /tmp/ws2/merged/q7-off 2>&1 | head
