#!/usr/bin/env bash
# The prepared check for a lent GPU (one H200-class device, under 8 minutes): one command, outputs under $OUT.
#   1. speed and memory table in bf16: KAdaptation defaults and n = 32 against LoRA r = 8 and LoKr, 224 px, batch 64,
#      with merged-inference parity (max |logit difference| merged vs unmerged) in bf16;
#   2. the factored-vs-materialised sweep that recalibrates the forward cost model for CUDA;
#   3. a one-GPU run of the Accelerate example (a few steps on the offline digits, written out as an image folder);
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
  accel=(--cpu --model_name_or_path "$OUT/backbone" --kadapt_n 4 --max_train_steps 2)
  : "${TINY_BACKBONE:?set TINY_BACKBONE to a saved tiny ViT}"
  scale=(--model_name_or_path "$TINY_BACKBONE" --device cpu --dtype float32 --batch 2)
else
  speed=(--device cuda --dtype bfloat16 --batch 64 --steps 10 --image_size 224)
  sweep=(--device cuda --dtype bfloat16 --batch 64 --steps 10 --image_size 224)
  accel=(--model_name_or_path "$("$PY" -c 'from peft_kadapt.training import resolve_model; print(resolve_model("dinov2-small-imgfocus"))')"
         --max_train_steps 30)
  scale=(--model_name_or_path "$("$PY" -c 'from peft_kadapt.training import resolve_model; print(resolve_model("dinov2-small-imgfocus"))')"
         --device cuda --dtype bfloat16 --batch 32)
fi
{ echo "# gpu_check ($PROFILE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; } > "$OUT/machine.txt"
"$PY" benchmarks/speed.py "${speed[@]}" | tee "$OUT/speed.md"
"$PY" benchmarks/speed.py --sweep "${sweep[@]}" | tee "$OUT/sweep.md"
# the Accelerate example reads an image folder and an image processor: write 10 + 10 offline digits per class, and
# (tiny profile) a processor beside a copy of the tiny backbone
"$PY" - "$OUT" "${TINY_BACKBONE:-}" <<'PY'
import shutil, sys
from pathlib import Path
from peft_kadapt.training import few_shot, load_image_dataset
out, tiny = Path(sys.argv[1]), sys.argv[2]
splits = few_shot(load_image_dataset("digits"), 20, seed=0, val_shots=10, test_per_class=1)
for split in ("train", "validation"):
    names = splits[split].features["label"].names
    for i, row in enumerate(splits[split]):
        folder = out / "digits" / split / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{i}.png")
if tiny:
    from transformers import ViTImageProcessor
    shutil.copytree(tiny, out / "backbone", dirs_exist_ok=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out / "backbone")
PY
"$PY" examples/image_classification/run_image_classification_no_trainer.py --train_dir "$OUT/digits/train" \
    --validation_dir "$OUT/digits/validation" --metric peft_kadapt/training/evaluate_metrics/accuracy.py \
    --per_device_train_batch_size 16 --output_dir "$OUT/accelerate" "${accel[@]}" 2>&1 | tail -n 5 | tee "$OUT/accelerate.log"
cp "$OUT/accelerate/all_results.json" "$OUT/accelerate_results.json"
{ "$PY" benchmarks/scaleout_check.py fsdp2 "${scale[@]}"; "$PY" benchmarks/scaleout_check.py qlora "${scale[@]}"; } \
    2>&1 | grep '^|' | tee "$OUT/scaleout.md"
echo "gpu_check done: $OUT"
