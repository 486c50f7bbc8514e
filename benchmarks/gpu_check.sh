#!/usr/bin/env bash
# The prepared check for a lent GPU (one H200-class device, under 8 minutes): one command, outputs under $OUT.
#   1. speed and memory table in bf16: KAdaptation defaults and n = 32 against LoRA r = 8 and LoKr, 224 px, batch 64,
#      with merged-inference parity (max |logit difference| merged vs unmerged) in bf16;
#   2. the factored-vs-materialised sweep that recalibrates the forward cost model for CUDA;
#   3. a one-GPU run of the Accelerate example (a few steps on the offline digits);
#   4. FSDP2 with one unit per block on the one GPU, against the same training unwrapped (benchmarks/scaleout_check.py);
#   5. KAdaptation on a 4-bit nf4 base in bf16: training steps and merged-vs-unmerged logits (skipped, and said so,
#      where bitsandbytes is not installed).
# PROFILE=tiny runs the same steps on the CPU with small shapes (tests/test_gpu_check.py does, in CI).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from the repository root
#   PROFILE=tiny OUT=/tmp/check bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-outputs/gpu_check}
PROFILE=${PROFILE:-gpu}
mkdir -p "$OUT"
if [ "$PROFILE" = tiny ]; then
  speed=(--device cpu --dtype float32 --batch 2 --steps 1 --image_size 32)
  sweep=(--device cpu --dtype float32 --batch 1 --steps 1 --image_size 32)
  accel=(--cpu --model_name_or_path "${TINY_BACKBONE:?set TINY_BACKBONE to a saved tiny ViT}" --resolution 32
         --kadapt_n 4 --max_train_steps 2)
  scale=(--model_name_or_path "$TINY_BACKBONE" --device cpu --dtype float32 --batch 2)
else
  speed=(--device cuda --dtype bfloat16 --batch 64 --steps 10 --image_size 224)
  sweep=(--device cuda --dtype bfloat16 --batch 64 --steps 10 --image_size 224)
  accel=(--resolution 224 --max_train_steps 30)
  scale=(--model_name_or_path "$("$PY" -c 'from peft_kadapt.training import resolve_model; print(resolve_model("dinov2-small-imgfocus"))')"
         --device cuda --dtype bfloat16 --batch 32)
fi
{ echo "# gpu_check ($PROFILE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; } > "$OUT/machine.txt"
"$PY" benchmarks/speed.py "${speed[@]}" | tee "$OUT/speed.md"
"$PY" benchmarks/speed.py --sweep "${sweep[@]}" | tee "$OUT/sweep.md"
"$PY" examples/image_classification/run_image_classification_no_trainer.py --dataset_name digits --shots 10 \
    --test_per_class 10 --per_device_train_batch_size 16 --output_dir "$OUT/accelerate" "${accel[@]}" \
    2>&1 | tail -n 5 | tee "$OUT/accelerate.log"
cp "$OUT/accelerate/metrics.json" "$OUT/accelerate_metrics.json"
{ "$PY" benchmarks/scaleout_check.py fsdp2 "${scale[@]}"; "$PY" benchmarks/scaleout_check.py qlora "${scale[@]}"; } \
    2>&1 | grep '^|' | tee "$OUT/scaleout.md"
echo "gpu_check done: $OUT"
