"""Tables and plots recomputed from benchmark records: per-setting means, paired differences, speed, Pareto plot."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from .protocol import RunRecord


# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (normal beyond)
# fmt: off
_T95 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,  # 1..10
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,  # 11..20
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,  # 21..30
]
# fmt: on


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.960


def mean_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of its 95 % t-interval); half-width nan from one value."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def shots_order(shots) -> tuple[int, int]:
    """k ascending, full shot last."""
    return (0, int(shots)) if str(shots).isdigit() else (1, 0)


METRICS = ("test", "validation")


def accuracy(record: RunRecord, metric: str = "test") -> float:
    """The record's test or validation accuracy (of the point validation chose)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}.")
    return record.test_accuracy if metric == "test" else record.validation_accuracy


def summarise(records: list[RunRecord], metric: str = "test") -> list[dict]:
    """One row per (dataset, resolution, k, variant): `metric` accuracy mean ± 95 % interval over sampling seeds."""
    groups = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.settings["resolution"], str(r.shots), r.variant)].append(r)
    rows = []
    for (dataset, resolution, shots, variant), group in groups.items():
        mean, half = mean_interval([accuracy(g, metric) for g in group])
        rows.append(
            {
                "dataset": dataset,
                "resolution": resolution,
                "shots": shots,
                "variant": variant,
                "seeds": len(group),
                "mean": mean,
                "interval": half,
                "trainable": group[0].trainable_parameters,
                "adapter": group[0].adapter_parameters,
                "bytes": group[0].saved_bytes,
                "seconds": statistics.mean(g.train_seconds for g in group),
                "lrs": sorted({g.chosen_lr for g in group}),
                "alphas": sorted({g.chosen_alpha for g in group if g.chosen_alpha is not None}),
            }
        )
    return sorted(rows, key=lambda t: (t["dataset"], t["resolution"], shots_order(t["shots"]), t["variant"]))


def paired_differences(records: list[RunRecord], reference: str, metric: str = "test") -> list[dict]:
    """Each variant against `reference` on the same splits: mean `metric`-accuracy difference ± 95 % interval, and
    win / tie / loss counts, per dataset and pooled over datasets (few-shot splits only)."""
    by_split = {(r.dataset, str(r.shots), r.seed, r.settings["resolution"], r.variant): r for r in records}
    diffs = defaultdict(list)
    for (dataset, shots, seed, resolution, variant), r in by_split.items():
        ref = by_split.get((dataset, shots, seed, resolution, reference))
        if variant == reference or ref is None or not shots.isdigit():
            continue
        d = accuracy(r, metric) - accuracy(ref, metric)
        diffs[(dataset, variant)].append(d)
        diffs[("pooled", variant)].append(d)
    rows = []
    for (dataset, variant), values in sorted(diffs.items()):
        mean, half = mean_interval(values)
        rows.append(
            {
                "dataset": dataset,
                "variant": variant,
                "splits": len(values),
                "difference": mean,
                "interval": half,
                "wins": sum(v > 0 for v in values),
                "ties": sum(v == 0 for v in values),
                "losses": sum(v < 0 for v in values),
            }
        )
    return rows


def _pm(mean: float, half: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{mean:.{digits}f} (one split)"


def results_markdown(
    records: list[RunRecord],
    speed: dict | None = None,
    reference: str = "lora r=8",
    speed_shape: str = "",
    metric: str = "test",
) -> str:
    table = summarise(records, metric)
    lines = [
        f"| dataset | px | k | variant | {metric} accuracy (mean ± 95 % CI) | seeds | trainable (adapter) | saved | train s "
        "| lr chosen | alpha chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['dataset']} | {t['resolution']} | {t['shots']} | {t['variant']} | {_pm(t['mean'], t['interval'])} "
            f"| {t['seeds']} | {t['trainable']:,d} ({t['adapter']:,d}) | {t['bytes'] / 1024:,.0f} KiB "
            f"| {t['seconds']:.1f} | {', '.join(f'{x:g}' for x in t['lrs'])} "
            f"| {', '.join(f'{x:g}' for x in t['alphas']) or '-'} |"
        )
    paired = paired_differences(records, reference, metric)
    if paired:
        lines += [
            "",
            f"Paired {metric}-accuracy difference against {reference} on the same splits (mean ± 95 % CI; few-shot only):",
            "",
            "| dataset | variant | splits | difference | wins / ties / losses |",
            "|---|---|---|---|---|",
        ]
        for p in paired:
            lines.append(
                f"| {p['dataset']} | {p['variant']} | {p['splits']} | {_pm(p['difference'], p['interval'], 3)} "
                f"| {p['wins']} / {p['ties']} / {p['losses']} |"
            )
    if speed:
        ref = next((name for name, s in speed.items() if s["step_ratio"] == 1.0), reference)
        lines += [
            "",
            f"Training step time and memory{' (' + speed_shape + ')' if speed_shape else ''}:",
            "",
            f"| variant | step (ms) | step / {ref} | training memory (MiB) | memory / {ref} |",
            "|---|---|---|---|---|",
        ]
        for name, s in speed.items():
            lines.append(
                f"| {name} | {s['step_s'] * 1e3:.0f} | {s['step_ratio']:.2f} | {s['memory_bytes'] / 2**20:.1f} "
                f"| {s['memory_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def pareto_plot(records: list[RunRecord], path: Path) -> None:
    """One panel per (dataset, resolution, k): test accuracy (mean ± 95 % CI) against adapter parameters + head."""
    from ..plotting import pyplot, save

    table = summarise(records)
    plt = pyplot()
    panels = sorted(
        {(t["dataset"], t["resolution"], t["shots"]) for t in table}, key=lambda p: (p[0], p[1], shots_order(p[2]))
    )
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    variants = sorted({t["variant"] for t in table})
    markers = "osD^v<>ph*PX"
    for ax, panel in zip(axes.flat, panels):
        for t in table:
            if (t["dataset"], t["resolution"], t["shots"]) == panel:
                j = variants.index(t["variant"])
                err = 0 if math.isnan(t["interval"]) else t["interval"]
                ax.errorbar(
                    t["trainable"],
                    t["mean"],
                    yerr=err,
                    fmt=markers[j % len(markers)],
                    color=f"C{j % 10}",
                    label=t["variant"],
                    capsize=2,
                )
        ax.set_xscale("log")
        ax.set_title(f"{Path(panel[0]).name or panel[0]}, {panel[1]} px, k = {panel[2]}", fontsize=9)
        ax.set_xlabel("trainable parameters (head included, log scale)", fontsize=8)
        ax.set_ylabel("test accuracy (mean ± 95 % CI)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
    save(fig, path, rect=(0, 0.05 * (1 + len(labels) // 4) / rows, 1, 1))
