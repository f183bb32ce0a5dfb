# Call 2: correctness vs fp32 reference, anchor vs ours (with fused LoRA), what each change gives,
# the loss curve over 50 steps, and the torch.compile experiment.
# run: bash bench/qlora_speed/call2.sh 2>&1 | tee $OUT/call2.log
source bench/qlora_speed/gpu_prelude.sh
timeout 150 python3 bench/qlora_speed/check_equivalence.py
timeout 100 python3 bench/qlora_speed/anchor_qlora.py '[2048,1,true]'
timeout 120 python3 $B speed --recipe ours --shapes 2048x1,2048x4,2048x8,2048x16 --profile
timeout 60 python3 $B speed --recipe ours-nofl --shapes 2048x1,2048x4
timeout 90 python3 $B loss --recipe off --steps 50
timeout 60 python3 $B loss --recipe ours --steps 50
timeout 150 python3 $B speed --recipe ours-compile --shapes 2048x1,2048x4
grep -h '^RESULT' $OUT/*.log 2>/dev/null | cut -c1-400
