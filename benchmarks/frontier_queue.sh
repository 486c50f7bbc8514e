#!/usr/bin/env bash
# One worker of the frontier study: about every N-th split, seed-major (seeds 0-2 of every dataset and k come before
# seeds 3-4, so a partial study is balanced), one thread, appending one record per (split, variant) to the committed
# records; a split already recorded is skipped, so a queue stopped anywhere resumes where it stopped. A split that
# fails is said in the log and the queue goes on (hours of other splits are not lost to one); the worker then exits 1
# naming the failed splits, which the next start runs again.
#
#   benchmarks/frontier_queue.sh W N ONLY            # e.g. on 2 cores: W = 0 and W = 1 with N = 2, in two shells
#   benchmarks/frontier_queue.sh 0 2 kadaptation     # the KAdaptation re-run
#   benchmarks/frontier_queue.sh 1 2 vera,pvera,fourierft,vblora,loha,ia3,oft,lily,tinylora,c3a   # the peers
#
# Environment: PYTHON (default .venv/bin/python), SEEDS (default "0 1 2 3 4"), RECORDS (default
# benchmarks/results/frontier.jsonl), LOGS (default outputs: the log is LOGS/frontier_queue_W.log), EXTEND (rounds of
# grid-edge extension, default 3; records made with fewer rounds, the study's first ones at 1, are topped up).
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 WORKER WORKERS ONLY (see the header)" >&2; exit 2; }
cd "$(dirname "$0")/.."
worker=$1 workers=$2 only=$3
python=${PYTHON:-.venv/bin/python}
records=${RECORDS:-benchmarks/results/frontier.jsonl}
logs=${LOGS:-outputs}
mkdir -p "$logs"
log="$logs/frontier_queue_$worker.log"
# the variants, computed once (building every size of every method to count its parameters takes a minute or two,
# which every split, also a recorded one, would spend again)
variants="$logs/frontier_variants_$worker.txt"
OMP_NUM_THREADS=1 "$python" benchmarks/frontier.py --only "$only" --list --names > "$variants"
failed=()
i=0
for seed in ${SEEDS:-0 1 2 3 4}; do
  d=0
  for dataset in mnist5k textiles fashion_mnist digits; do
    for k in 5 20; do
      # every other split, shifted by one on every other dataset: on 2 workers each takes both k of every seed and
      # one textiles split (every N-th alone put each k on one worker, and k = 20 takes longer)
      if [ $(((i + d) % workers)) -eq "$worker" ]; then
        OMP_NUM_THREADS=1 "$python" benchmarks/frontier.py --only "$only" --variants_file "$variants" \
          --extend_edges "${EXTEND:-3}" \
          --datasets "$dataset" --shots "$k" --seeds "$seed" --workers 1 --speed_rounds 0 --records "$records" \
          --output_dir "outputs/frontier_${only//,/_}_${dataset}_${k}_${seed}" >> "$log" 2>&1 ||
          { failed+=("$dataset k=$k seed=$seed"); echo "frontier_queue: $dataset k=$k seed=$seed failed" >> "$log"; }
      fi
      i=$((i + 1))
    done
    d=$((d + 1))
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'frontier_queue: worker %s: %d split(s) failed (see %s): %s\n' "$worker" ${#failed[@]} "$log" \
    "$(IFS=';'; echo "${failed[*]}")" >&2
  exit 1
fi
