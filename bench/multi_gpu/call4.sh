# 2-GPU FSDP + QLoRA after the fix (multi-process plan: peft's LoRA forward, no fp32 upcast):
# the default plan, per-GPU memory, tokens/s, checkpoint save, then merge of the saved adapter.
# run on nvidia-h200-x2: bash bench/multi_gpu/call4.sh 2>&1 | tee $OUT/call4.log   (carry .whl, .gpu)
source bench/multi_gpu/prelude.sh
timeout 170 python3 -m appliance.cli train --home /tmp/ws4 --model /tmp/q7 --gpus 2 --packing --max-steps 8 \
  --run-name q7-fsdp --set batch_size=2 --set max_seq_len=2048 --set save_every=4 > $OUT/train.log 2>&1
echo "train rc $?"; kill $SMI
grep -v "Loading weights" $OUT/train.log | grep -i "error\|done\|optimizer\|speed-ups\|processes\|rank" | grep -v "\^\^" | cut -c1-300 | tail -14
python3 bench/multi_gpu/summarise.py $OUT/gpu_mem.csv /tmp/ws4/runs/q7-fsdp/metrics.jsonl
ls /tmp/ws4/runs/q7-fsdp/adapter /tmp/ws4/runs/q7-fsdp/checkpoints 2>&1 | head
cp /tmp/ws4/runs/q7-fsdp/run.json $OUT/ 2>/dev/null
T=$((330 - SECONDS)); echo "left ${T}s"
[ -d /tmp/ws4/runs/q7-fsdp/adapter ] && timeout $T python3 -m appliance.cli merge --home /tmp/ws4 --run q7-fsdp > $OUT/merge.log 2>&1; echo "merge rc $?"
grep -v "Loading weights" $OUT/merge.log | tail -6 | cut -c1-300; ls /tmp/ws4/merged/q7-fsdp 2>&1 | head
