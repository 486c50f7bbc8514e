"""Merge `kadapt bench` runs of the same splits that tried different learning rates, as if one grid held them all
(see `peft_kadapt.bench.merge_results`), and write results.json / results.md / pareto.png for the union.

    python benchmarks/merge_grids.py outputs/bench_suite outputs/bench_grid --output_dir outputs/bench_merged
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft_kadapt.bench import merge_results, write_outputs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output directories of `kadapt bench` (their results.json)")
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    out = merge_results([json.loads((Path(d) / "results.json").read_text()) for d in args.runs])
    write_outputs(out, Path(args.output_dir))
    print((Path(args.output_dir) / "results.md").read_text())


if __name__ == "__main__":
    main()
