#!/usr/bin/env bash
# The frontier study (benchmarks/frontier.py) at 224 px in bf16 on one GPU, bounded to under 8 minutes: one prepared
# command for a lent H200-class device. Every dataset at 224 px (MNIST's 28 px upscaled, textiles' 250 px shrunk less
# than 2x), k = 5 and 20, seeds 0-4 taken seed-major (all data at seed 0 first), the budget-matched variants with the
# alpha x lr grid and one round of grid-edge extension, several bench workers sharing the GPU. Records are appended as
# each run finishes to $OUT/frontier_gpu.jsonl; the study stops at $LIMIT seconds and what finished is kept (rerun with
# the records file to resume); the tables and the Pareto plot are then recomputed from the records.
# PROFILE=tiny runs the same steps on the CPU with a tiny backbone and small shapes (tests/test_gpu_suite.py, in CI).
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu_suite.sh       # on the GPU machine, from the repository root
#   PROFILE=tiny TINY_BACKBONE=/path/to/tiny_vit OUT=/tmp/suite bash benchmarks/gpu_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-outputs/gpu_suite}
PROFILE=${PROFILE:-gpu}
LIMIT=${LIMIT:-420}  # seconds for the study itself; start-up and tables take the rest of the 8 minutes
mkdir -p "$OUT"
if [ "$PROFILE" = tiny ]; then
  study=(--model_name_or_path "${TINY_BACKBONE:?set TINY_BACKBONE to a saved tiny ViT}" --budgets 300,1200,5000
         --datasets digits --shots 5 --seeds 0 --resolution 32 --steps 2 --test_per_class 7 --val_per_class 3
         --alphas 1,4 --adapter_lrs 1e-3,1e-2 --device cpu --workers 1 --bf16)
else
  study=(--datasets mnist5k,fashion_mnist,textiles,digits --shots 5,20 --seeds 0,1,2,3,4 --resolution 224 --bf16
         --device cuda --workers "${WORKERS:-6}")
fi
{ echo "# gpu_suite ($PROFILE), $(date -u +%Y-%m-%dT%H:%M:%SZ), limit ${LIMIT}s"
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true; } > "$OUT/machine.txt"
status=0
timeout -k 15 "$LIMIT" "$PY" benchmarks/frontier.py "${study[@]}" --extend_edges 1 --speed_rounds 0 \
    --records "$OUT/frontier_gpu.jsonl" --output_dir "$OUT/bench" > "$OUT/study.log" 2>&1 || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then tail -n 30 "$OUT/study.log"; exit "$status"; fi
[ "$status" -eq 124 ] && echo "study stopped at ${LIMIT}s; rerun with the same OUT to resume" | tee -a "$OUT/machine.txt"
if [ ! -s "$OUT/frontier_gpu.jsonl" ]; then echo "no run finished within ${LIMIT}s: nothing to tabulate"; exit 0; fi
"$PY" benchmarks/tables.py "$OUT/frontier_gpu.jsonl" --verdict --plot "$OUT/frontier_gpu.png" | tee "$OUT/frontier_gpu.md"
echo "gpu_suite done: $OUT ($(wc -l < "$OUT/frontier_gpu.jsonl") records)"
