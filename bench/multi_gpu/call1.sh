# 2-GPU FSDP + QLoRA run of a random-init Qwen2.5-7B-shaped model through `appliance train --gpus 2`
# (the shipped accelerate config), per-GPU memory sampled by nvidia-smi, then `appliance merge` of
# the adapter it saved. run on nvidia-h200-x2: bash bench/multi_gpu/call1.sh 2>&1 | tee $OUT/call1.log
# (carry .whl and .gpu)
source bench/multi_gpu/prelude.sh
timeout 330 python3 -m appliance.cli train --home /tmp/ws --model /tmp/q7 --gpus 2 --packing --max-steps 12 \
  --run-name q7-fsdp --set batch_size=2 --set max_seq_len=2048 --set save_every=6 --set lr=1e-4 2>&1 \
  | grep -v "Loading weights\|Warning\|warn(" | tail -40
kill $SMI
cp /tmp/ws/runs/q7-fsdp/run.json /tmp/ws/runs/q7-fsdp/metrics.jsonl $OUT/ 2>/dev/null
python3 bench/multi_gpu/summarise.py $OUT/gpu_mem.csv /tmp/ws/runs/q7-fsdp/metrics.jsonl
ls -la /tmp/ws/runs/q7-fsdp/adapter /tmp/ws/runs/q7-fsdp/checkpoints 2>&1 | head -20
T=$((585 - SECONDS)); echo "left ${T}s"
timeout $T python3 -m appliance.cli merge --home /tmp/ws --run q7-fsdp 2>&1 | grep -v "Loading weights\|Warning\|warn(" | tail -15
ls -la /tmp/ws/merged/q7-fsdp 2>&1 | head
