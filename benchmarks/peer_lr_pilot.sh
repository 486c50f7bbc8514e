#!/usr/bin/env bash
# Where each tiny-adapter peer's learning rate lies, on validation, before the frontier study sets its grid (issue 29):
# two 56 px splits (k = 20, seed 0), each peer at its ~20k size on q/v (LoHa and VB-LoRA at their smallest), the head
# at 3e-3 as in the study. Records: benchmarks/results/peer_lr_pilot.jsonl; the map in docs/results.md is recomputed
# from them (benchmarks/tables.py --map). Resumes like any `kadapt bench` run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
KADAPT=${KADAPT:-.venv/bin/kadapt}
QV=targets=q_proj+v_proj
HI=3e-3,1e-2,3e-2,1e-1,3e-1,1
LO=3e-4,1e-3,3e-3,1e-2,3e-2,1e-1
common=(--datasets mnist5k,fashion_mnist --shots 20 --seeds 0 --head_lr 3e-3 --extend_edges 0 --workers 1
  --speed_rounds 0 --records benchmarks/results/peer_lr_pilot.jsonl)
# pass 1: six rates each, from 3e-3 up for the vector, spectral and circulant methods, from 3e-4 for the others; the
# scales written where the method table now searches one (Lily ran first unwritten, at its default 1.0: same runs)
V=("tinylora r=1 u=256 $QV=$HI" "ia3 $QV=$HI" "fourierft n_frequency=500 scaling=300 $QV=$HI" "c3a block_size=192 $QV=$HI"
  "vera r=512 $QV=$HI" "pvera r=256 $QV=$HI" "oft oft_block_size=4 $QV=$LO" "lily r=4 stride_A=4 num_B=3 scaling=1 $QV=$LO"
  "loha r=2 alpha=2 $QV=$LO" "vblora r=2 num_vectors=128 vector_length=128 $QV=$LO")
methods=""; grid=()
for v in "${V[@]}"; do methods="$methods,${v%=*}"; grid+=(--grid "$v"); done
"$KADAPT" bench "${common[@]}" --methods "${methods#,}" "${grid[@]}" --output_dir outputs/peer_lr_pilot
# pass 2: TinyLoRA below its pass-1 edge; FourierFT at PEFT's default scaling 150 and at 75
"$KADAPT" bench "${common[@]}" \
  --methods "tinylora r=1 u=256 $QV,fourierft n_frequency=500 scaling=150 $QV,fourierft n_frequency=500 scaling=75 $QV" \
  --grid "tinylora r=1 u=256 $QV=1e-5,3e-5,1e-4,3e-4,1e-3" \
  --grid "fourierft n_frequency=500 scaling=150 $QV=1e-3,3e-3,1e-2,3e-2,1e-1" \
  --grid "fourierft n_frequency=500 scaling=75 $QV=1e-3,3e-3,1e-2,3e-2,1e-1" --output_dir outputs/peer_lr_pilot2
# pass 3: TinyLoRA at the size the study takes (r = 4: a 4 × 4 core; r = 1 of passes 1-2 trains a scalar per layer)
"$KADAPT" bench "${common[@]}" --methods "tinylora r=4 u=256 $QV" \
  --grid "tinylora r=4 u=256 $QV=1e-4,3e-4,1e-3,3e-3,1e-2" --output_dir outputs/peer_lr_pilot3
