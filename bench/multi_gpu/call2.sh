# Diagnose the 2-GPU failure: the plain recipe (kernels: off) first, then the default plan with
# CUDA_LAUNCH_BLOCKING=1 for the exact failing call. run: bash bench/multi_gpu/call2.sh 2>&1 | tee $OUT/call2.log
source bench/multi_gpu/prelude.sh
timeout 200 python3 -m appliance.cli train --home /tmp/ws2 --model /tmp/q7 --gpus 2 --packing --max-steps 8 \
  --run-name q7-off --set kernels=off --set batch_size=2 --set max_seq_len=2048 --set save_every=4 2>&1 \
  | grep -v "Loading weights\|Warning\|warn(" | grep -i "error\|step\|done\|optimizer\|speed\|Traceback\|  File" | head -30
kill $SMI
python3 bench/multi_gpu/summarise.py $OUT/gpu_mem.csv /tmp/ws2/runs/q7-off/metrics.jsonl
ls /tmp/ws2/runs/q7-off/adapter /tmp/ws2/runs/q7-off/checkpoints 2>&1 | head
T=$((560 - SECONDS)); echo "left ${T}s"
CUDA_LAUNCH_BLOCKING=1 timeout $T python3 -m appliance.cli train --home /tmp/ws3 --model /tmp/q7 --gpus 2 --packing --max-steps 4 \
  --run-name q7-default --set batch_size=2 --set max_seq_len=2048 --set save_every=0 2>&1 \
  | grep -v "Loading weights\|Warning\|warn(" | grep -B2 -A30 "Traceback" | head -60
