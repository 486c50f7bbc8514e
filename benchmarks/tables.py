"""Recompute the tables of docs/benchmarks.md from committed benchmark records (JSON lines of `kadapt bench`).

    python benchmarks/tables.py benchmarks/results/frontier.jsonl              # results, paired differences, frontier
    python benchmarks/tables.py benchmarks/results/alpha_lr_map.jsonl --map     # validation accuracy over alpha x lr

Frontier: each variant is put in the smallest budget class (adapter parameters, head excluded) it fits, up to 10 %
over; per class and dataset, test accuracy (mean ± 95 % t-interval over sampling seeds) of every variant, and its
paired difference against the class's LoRA on the same splits.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from peft_kadapt.training.bench.protocol import RunRecord, read_records
from peft_kadapt.training.bench.report import mean_interval, paired_differences, results_markdown


BUDGETS = (20_000, 80_000, 150_000)
REFERENCES = ("linear", "bitfit", "full")  # methods without adapter: reported as references, in no budget class
TOLERANCE = 1.1


def budget_class(adapter_parameters: int, budgets=BUDGETS) -> int | None:
    """The smallest budget the variant fits (up to 10 % over); None for references (no adapter) or above all."""
    if adapter_parameters == 0:
        return None
    return next((b for b in budgets if adapter_parameters <= TOLERANCE * b), None)


def _pm(mean: float, half: float) -> str:
    return f"{mean:.3f} ± {half:.3f}" if half == half else f"{mean:.3f} (one split)"


def frontier_markdown(records: list[RunRecord], budgets=BUDGETS) -> str:
    lines = [
        "| budget | dataset | px | k | variant | adapter params | test accuracy (mean ± 95 % CI) | seeds "
        "| vs LoRA of the class (paired, ± 95 % CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for r in records:
        budget = None if r.method in REFERENCES else budget_class(r.adapter_parameters, budgets)
        groups[(budget, r.dataset, r.settings["resolution"], str(r.shots))].append(r)
    for (budget, dataset, px, shots), group in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, *kv[0][1:])):
        # the class's LoRA: the one on q/v when the class has several
        lora = sorted({r.variant for r in group if r.method == "lora"}, key=lambda v: ("q_proj+v_proj" not in v, v))
        paired = {}
        for reference in lora[:1]:
            split = [r for r in records if r.dataset == dataset and str(r.shots) == shots]
            paired = {p["variant"]: p for p in paired_differences(split, reference) if p["dataset"] == dataset}
        for variant in sorted({r.variant for r in group}):
            runs = [r for r in group if r.variant == variant]
            mean, half = mean_interval([r.test_accuracy for r in runs])
            p = paired.get(variant)
            versus = f"{p['difference']:+.3f} ± {p['interval']:.3f} ({lora[0]})" if p else "-"
            label = f"~{budget // 1000}k" if budget else "reference"
            lines.append(
                f"| {label} | {dataset} | {px} | {shots} | {variant} | {runs[0].adapter_parameters:,d} "
                f"| {_pm(mean, half)} | {len(runs)} | {versus} |"
            )
    return "\n".join(lines) + "\n"


def alpha_lr_map_markdown(records: list[RunRecord]) -> str:
    """Validation accuracy of every (alpha, learning rate) grid point, mean over splits, one table per variant."""
    out = []
    for variant in sorted({r.variant for r in records}):
        cells = defaultdict(list)
        for r in records:
            if r.variant == variant:
                for g in r.grid:
                    cells[(g["alpha"], g["learning_rate"])].append(g["validation_accuracy"])
        alphas = sorted({a for a, _ in cells if a is not None})
        lrs = sorted({lr for _, lr in cells})
        if not alphas:
            continue
        splits = len([r for r in records if r.variant == variant])
        out += [f"{variant} (validation accuracy, mean over {splits} split(s)):", ""]
        out += ["| alpha \\ lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for a in alphas:
            row = [f"{statistics.mean(cells[(a, lr)]):.3f}" if cells.get((a, lr)) else "-" for lr in lrs]
            out.append(f"| {a:g} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="JSON-lines record files of `kadapt bench`")
    p.add_argument("--map", action="store_true", help="print the alpha x learning-rate map of validation accuracy")
    p.add_argument(
        "--reference", default="lora r=8 targets=q_proj+v_proj", help="variant the results table pairs against"
    )
    args = p.parse_args(argv)
    records = [r for path in args.records for r in read_records(Path(path))]
    if args.map:
        print(alpha_lr_map_markdown(records))
        return
    print(results_markdown(records, reference=args.reference))
    print(frontier_markdown(records))


if __name__ == "__main__":
    main()
