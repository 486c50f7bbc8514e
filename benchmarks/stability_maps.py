"""Stability maps: validation accuracy over alpha × learning rate, per method and target set, from bench records.

    python benchmarks/stability_maps.py benchmarks/results/stability_maps.jsonl --plot docs/images/stability_maps.png

For each variant: the mean validation accuracy of every (alpha, lr) cell over the splits that have it, the best cell,
how many cells lie within 3 points of the best, where LoRA r = 8 on the same targets has its best cell (and how far
below its own best the variant is there), and how many cells collapse (below half the map's best) where LoRA r = 8
trains. Records come from `kadapt bench --alphas ... --adapter_lrs ...
--extend_edges 0` (docs/benchmarks.md); nothing here is chosen on test data.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from peft_kadapt.training.bench.protocol import read_records
from peft_kadapt.training.plotting import save


WITHIN = 0.03  # "within 3 points of the best"
TRAINS = 0.5  # a cell "trains" at half its map's best or more, else it collapsed (near chance in these maps)
REFERENCE = "lora r=8"


def mean_maps(records) -> dict[str, dict[tuple[float, float], tuple[float, int]]]:
    """variant -> (alpha, lr) -> (mean validation accuracy, number of splits), over the splits every variant has (so
    that every map averages the same splits)."""
    variants = {r.variant for r in records}
    splits = defaultdict(set)
    for r in records:
        splits[(r.dataset, r.shots, r.seed)].add(r.variant)
    complete = {s for s, vs in splits.items() if vs == variants}
    cells = defaultdict(lambda: defaultdict(list))
    for r in (r for r in records if (r.dataset, r.shots, r.seed) in complete):
        for g in r.grid:
            cells[r.variant][(g["alpha"], g["learning_rate"])].append(g["validation_accuracy"])
    return {v: {c: (statistics.fmean(a), len(a)) for c, a in m.items()} for v, m in cells.items()}


def targets_of(variant: str) -> str:
    return next((p.split("=", 1)[1] for p in variant.split() if p.startswith("targets=")), "default")


def summary(maps: dict) -> list[dict]:
    rows = []
    for variant, cells in maps.items():
        best_cell, (best, _) = max(cells.items(), key=lambda kv: kv[1][0])
        reference = next((v for v in maps if v.startswith(REFERENCE) and targets_of(v) == targets_of(variant)), None)
        ref_cell = max(maps[reference].items(), key=lambda kv: kv[1][0])[0] if reference else None
        rows.append(
            {
                "variant": variant,
                "splits": max(n for _, n in cells.values()),
                "best": best,
                "best_cell": best_cell,
                "within": sum(acc >= best - WITHIN for acc, _ in cells.values()),
                "reference_cell": ref_cell,
                "at_reference_cell": cells.get(ref_cell, (float("nan"),))[0] if ref_cell else float("nan"),
                "collapses_where_reference_trains": _disagreements(cells, maps.get(reference)),
            }
        )
    return rows


def _trains(cells: dict) -> set:
    """The cells whose mean validation accuracy is at least half the map's best (the others collapsed)."""
    best = max(acc for acc, _ in cells.values())
    return {c for c, (acc, _) in cells.items() if acc >= TRAINS * best}


def _disagreements(cells: dict, reference: dict | None) -> int | None:
    """How many cells collapse in this map where the reference (LoRA r = 8, same targets) trains."""
    return len(_trains(reference) - _trains(cells)) if reference else None


def markdown(maps: dict) -> str:
    lines = []
    for variant, cells in maps.items():
        alphas = sorted({a for a, _ in cells})
        lrs = sorted({lr for _, lr in cells})
        splits = max(n for _, n in cells.values())
        lines += ["", f"{variant} (mean validation accuracy over {splits} split(s)):", ""]
        lines += ["| alpha \\ lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
        for a in alphas:
            row = [f"{cells[(a, lr)][0]:.3f}" if (a, lr) in cells else "" for lr in lrs]
            lines.append(f"| {a:g} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| variant | splits | best (alpha, lr) | best | cells within 3 points | at LoRA r=8's best cell | cells that "
        "collapse where LoRA r=8 trains |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary(maps):
        ref = s["reference_cell"]
        at_ref = f"{s['at_reference_cell']:.3f} at ({ref[0]:g}, {ref[1]:g})" if ref else "–"
        best_cell = f"({s['best_cell'][0]:g}, {s['best_cell'][1]:g})"
        collapses = "–" if s["collapses_where_reference_trains"] is None else s["collapses_where_reference_trains"]
        lines.append(
            f"| {s['variant']} | {s['splits']} | {best_cell} | {s['best']:.3f} | {s['within']} | {at_ref} | {collapses} |"
        )
    return "\n".join(lines)


def plot(maps: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target_sets = sorted({targets_of(v) for v in maps}, key=len)
    methods = sorted({v.replace(f"targets={targets_of(v)}", "").strip() for v in maps})
    fig, axes = plt.subplots(
        len(target_sets), len(methods), figsize=(3.4 * len(methods), 3.2 * len(target_sets)), squeeze=False
    )
    for row, targets in enumerate(target_sets):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            variant = next((v for v in maps if v.replace(f"targets={targets}", "").strip() == method), None)
            if variant is None or targets_of(variant) != targets:
                ax.axis("off")
                continue
            cells = maps[variant]
            alphas, lrs = sorted({a for a, _ in cells}), sorted({lr for _, lr in cells})
            grid = [[cells.get((a, lr), (float("nan"), 0))[0] for lr in lrs] for a in alphas]
            ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
            for i, a in enumerate(alphas):
                for j, lr in enumerate(lrs):
                    if (a, lr) in cells:
                        ax.text(j, i, f"{cells[(a, lr)][0]:.2f}", ha="center", va="center", fontsize=7, color="w")
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=7, rotation=45)
            ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
            ax.set_xlabel("learning rate", fontsize=8)
            ax.set_ylabel("alpha", fontsize=8)
            short = "q/v" if targets == "q_proj+v_proj" else "all linear" if "fc1" in targets else targets
            ax.set_title(f"{method}\n{short}", fontsize=8)
    fig.suptitle("Validation accuracy, mean over splits", fontsize=10)
    save(fig, Path(path))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+")
    p.add_argument("--plot", default=None, help="write the heat maps to this PNG")
    args = p.parse_args(argv)
    records = [r for path in args.records for r in read_records(Path(path))]
    maps = dict(sorted(mean_maps(records).items()))
    print(markdown(maps))
    if args.plot:
        plot(maps, args.plot)


if __name__ == "__main__":
    main()
