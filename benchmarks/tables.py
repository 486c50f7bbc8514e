"""Recompute the tables of docs/results.md from committed benchmark records (JSON lines of `kadapt bench`).

    python benchmarks/tables.py benchmarks/results/frontier.jsonl              # results, paired differences, frontier
    python benchmarks/tables.py benchmarks/results/frontier.jsonl --verdict --plot frontier.png
    python benchmarks/tables.py benchmarks/results/alpha_lr_map.jsonl --map     # validation accuracy over alpha x lr
    python benchmarks/tables.py benchmarks/results/frontier.jsonl --shots 5,20   # the few-shot splits only (or: full)
    python benchmarks/tables.py benchmarks/results/frontier.jsonl --validation   # what validation preferred

Records topped up by grid-edge extension replace the records they extend. Only complete splits are compared (a
split where every variant of the file has a record; `--all_splits` keeps the others), so every mean is over the same
splits.

Frontier: each variant is put in the smallest budget class (adapter parameters, head excluded) it fits, up to 10 %
over; per class and dataset, test accuracy (mean ± 95 % t-interval over sampling seeds) of every variant, and its
paired difference against the class's LoRA on the same splits.

Verdict (`--verdict`): in every budget class, each KAdaptation variant against each LoRA and LoKr variant of the
class, paired over splits, per dataset and pooled over datasets (win / tie / loss counts); KAdaptation's variant with
the best mean validation accuracy in each class against every other adapter of the class (pooled: ahead, tied or
behind, and the class's highest mean test accuracy); then the study's targets checked from those numbers (and, for
KAdaptation on all linear layers, against its q/v variants and LoRA r = 1 on all linear layers), pooled over k and,
where the records have more than one k, on each k alone. `--exclude parametrization=legacy` leaves variants out.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from peft_kadapt.parametrization import DEFAULT_PARAMETRIZATION
from peft_kadapt.training import parse_variant
from peft_kadapt.training.bench.protocol import RunRecord, normalised, read_records, study_cut
from peft_kadapt.training.bench.report import (
    accuracy,
    mean_interval,
    paired_differences,
    results_markdown,
    shots_order,
    summarise,
)


BUDGETS = (20_000, 80_000, 150_000)  # adapter parameters, head excluded
REFERENCES = ("linear", "bitfit", "full")  # methods without adapter: reported as references, in no budget class
TOLERANCE = 1.1  # "about" a budget: up to 10 % over it
PEERS = ("lora", "lokr")
FIRST = ("kadaptation", "lora", "lokr")  # the plot's first colours, as in the study's earlier plots
LORA_R8 = "lora r=8 targets=q_proj+v_proj"  # the study's accuracy reference for the "quarter of LoRA" target
ALL_LINEAR = "q_proj+k_proj+v_proj+o_proj+fc1+fc2"  # every linear layer of a ViT block
LORA_R1_ALL_LINEAR = f"lora r=1 targets={ALL_LINEAR}"  # what KAdaptation on all linear layers has to be ahead of
ALL_LINEAR_SLACK = 0.005  # KAdaptation on all linear layers may trail its q/v variant by this much (half a point)


def budget_class(adapter_parameters: int, budgets=BUDGETS) -> int | None:
    """The smallest budget the variant fits (up to 10 % over); None for references (no adapter) or above all."""
    if adapter_parameters == 0:
        return None
    return next((b for b in budgets if adapter_parameters <= TOLERANCE * b), None)


def _signed(mean: float, half: float) -> str:
    return f"{mean:+.3f} ± {half:.3f}" if half == half else f"{mean:+.3f} (one split)"


def _pm(mean: float, half: float) -> str:
    return f"{mean:.3f} ± {half:.3f}" if half == half else f"{mean:.3f} (one split)"


def frontier_markdown(records: list[RunRecord], budgets=BUDGETS, metric: str = "test") -> str:
    lines = [
        f"| budget | dataset | px | k | variant | adapter params | {metric} accuracy (mean ± 95 % CI) | seeds "
        "| vs LoRA of the class (paired, ± 95 % CI) | chosen at the grid's edge |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for r in records:
        groups[(class_of(r, budgets), r.dataset, r.settings["resolution"], str(r.shots))].append(r)
    for (budget, dataset, px, shots), group in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, *kv[0][1:])):
        # the class's LoRA: the one on q/v when the class has several
        lora = sorted({r.variant for r in group if r.method == "lora"}, key=lambda v: ("q_proj+v_proj" not in v, v))
        paired = {}
        for reference in lora[:1]:
            split = [r for r in records if r.dataset == dataset and str(r.shots) == shots]
            paired = {p["variant"]: p for p in paired_differences(split, reference, metric) if p["dataset"] == dataset}
        for variant in sorted({r.variant for r in group}):
            runs = [r for r in group if r.variant == variant]
            mean, half = mean_interval([accuracy(r, metric) for r in runs])
            p = paired.get(variant)
            versus = f"{_signed(p['difference'], p['interval'])} ({lora[0]})" if p else "-"
            label = f"~{budget // 1000}k" if budget else "reference"
            lines.append(
                f"| {label} | {dataset} | {px} | {shots} | {variant} | {runs[0].adapter_parameters:,d} "
                f"| {_pm(mean, half)} | {len(runs)} | {versus} | {sum(map(at_grid_edge, runs))} of {len(runs)} |"
            )
    return "\n".join(lines) + "\n"


def _cell(values: list[float] | None, splits: int) -> str:
    """Mean validation accuracy of a grid point; with the number of splits when it was tried on fewer than all (an
    edge-extension point)."""
    if not values:
        return "-"
    return f"{statistics.mean(values):.3f}" + ("" if len(values) == splits else f" ({len(values)})")


def alpha_lr_map_markdown(records: list[RunRecord]) -> str:
    """Validation accuracy of every (alpha, learning rate) grid point, mean over splits, one table per variant (one
    row, alpha "-", for a method without a scale searched: the peers, the references)."""
    out = []
    for variant in sorted({r.variant for r in records}):
        by_split = defaultdict(dict)  # (alpha, lr) -> split -> score: a split searched twice counts once per point
        for r in records:
            if r.variant == variant:
                for g in r.grid:
                    by_split[(g["alpha"], g["learning_rate"])][_split(r)] = g["validation_accuracy"]
        cells = {point: list(scores.values()) for point, scores in by_split.items()}
        alphas = sorted({a for a, _ in cells if a is not None}) or [None]
        lrs = sorted({lr for _, lr in cells})
        splits = len({_split(r) for r in records if r.variant == variant})
        out += [f"{variant} (validation accuracy, mean over {splits} split(s); (n): tried on n splits only):", ""]
        out += ["| alpha \\ lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---" * (len(lrs) + 1) + "|"]
        for a in alphas:
            row = [_cell(cells.get((a, lr)), splits) for lr in lrs]
            out.append(f"| {'-' if a is None else f'{a:g}'} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def _split(r: RunRecord) -> tuple:
    return r.dataset, r.settings["resolution"], str(r.shots), r.seed


def complete_splits(records: list[RunRecord]) -> tuple[list[RunRecord], int, int]:
    """The records of the splits where every variant has one; with the number of such splits and of all splits."""
    variants = {r.variant for r in records}
    by_split = defaultdict(set)
    for r in records:
        by_split[_split(r)].add(r.variant)
    complete = {split for split, present in by_split.items() if present == variants}
    return [r for r in records if _split(r) in complete], len(complete), len(by_split)


def at_grid_edge(r: RunRecord) -> bool:
    """Whether the chosen point lies on the edge of the grid that was searched (extension included)."""
    lrs = sorted({g["learning_rate"] for g in r.grid if g["alpha"] == r.chosen_alpha})
    alphas = sorted({g["alpha"] for g in r.grid if g["learning_rate"] == r.chosen_lr and g["alpha"] is not None})
    on_lr = len(lrs) > 1 and r.chosen_lr in (lrs[0], lrs[-1])
    on_alpha = len(alphas) > 1 and r.chosen_alpha in (alphas[0], alphas[-1])
    return on_lr or on_alpha


def class_of(r: RunRecord, budgets=BUDGETS) -> int | None:
    return None if r.method in REFERENCES else budget_class(r.adapter_parameters, budgets)


def comparisons(records: list[RunRecord], budgets=BUDGETS) -> list[dict]:
    """In every budget class, each KAdaptation variant against each LoRA / LoKr variant of the class: paired test
    differences per dataset and pooled (rows of `paired_differences`, with the budget and the peer added)."""
    rows = []
    classes = defaultdict(set)
    for r in records:
        classes[class_of(r, budgets)].add((r.method, r.variant))
    for budget in sorted(b for b in classes if b is not None):
        kadapt = sorted(v for m, v in classes[budget] if m == "kadaptation")
        peers = sorted(v for m, v in classes[budget] if m in PEERS)
        for peer in peers:
            chosen = [r for r in records if r.variant in (peer, *kadapt)]
            for row in paired_differences(chosen, peer):
                rows.append({"budget": budget, "peer": peer, **row})
    return rows


def pooled_differences(records: list[RunRecord], reference: str) -> list[dict]:
    """The pooled rows of `paired_differences` (each variant against `reference` over all shared splits)."""
    return [p for p in paired_differences(records, reference) if p["dataset"] == "pooled"]


def _diff(row: dict) -> str:
    return f"{_signed(row['difference'], row['interval'])} | {row['wins']} / {row['ties']} / {row['losses']}"


def targets(records: list[RunRecord], rows: list[dict], fields: list[dict], budgets=BUDGETS) -> list[str]:
    """The study's targets (~20k, a quarter of LoRA r = 8, the linear probe, all linear layers), each said as met or
    not, from `comparisons(records)` (`rows`) and `field(records)` (`fields`)."""
    lines = []
    smallest = min(budgets)
    first = [row for row in rows if row["budget"] == smallest and row["dataset"] == "pooled"]
    for row in first:
        low = row["difference"] - row["interval"]
        met = "met" if low >= 0 else "not met"
        said = "one split: no interval" if math.isnan(low) else f"lower end {low:+.3f}"
        lines.append(
            f"- ~{smallest // 1000}k, {row['variant']} ≥ {row['peer']} (pooled paired 95 % CI excludes a loss: lower "
            f"end ≥ 0): {met} ({said})."
        )
    if not first:
        lines.append(f"- ~{smallest // 1000}k: no KAdaptation and peer pair with shared splits yet.")
    for c in (c for c in fields if c["budget"] == smallest and c["rows"]):
        short = [row["peer"] for row in c["rows"] if _standing(row) != "ahead"]
        met = "met" if not short else f"not met (not ahead of: {'; '.join(short)})"
        lines.append(
            f"- ~{smallest // 1000}k, {c['best']} (KAdaptation's best on validation) ahead of every other adapter of "
            f"the class ({len(c['rows'])}; each pooled paired 95 % CI excludes a loss): {met}."
        )
    reference = [r for r in records if r.variant == LORA_R8]
    if reference:
        quarter = reference[0].adapter_parameters / 4
        small = sorted({r.variant for r in records if r.method == "kadaptation" and r.adapter_parameters <= quarter})
        chosen = [r for r in records if r.variant in (LORA_R8, *small)]
        for row in pooled_differences(chosen, LORA_R8):
            met = "met" if row["difference"] >= 0 else "not met"
            lines.append(
                f"- {row['variant']} (≤ ¼ of {LORA_R8}'s adapter parameters) reaches its accuracy (pooled mean paired "
                f"difference ≥ 0): {met} ({_signed(row['difference'], row['interval'])} over {row['splits']} splits)."
            )
    summary = summarise(records)
    linear = {
        (t["dataset"], t["resolution"], t["shots"]): t["mean"] for t in summary if t["variant"].split()[0] == "linear"
    }
    kadapt = sorted(
        ((t["dataset"], t["resolution"], t["shots"]), t["variant"], t["mean"])
        for t in summary
        if t["variant"].split()[0] == "kadaptation"
    )
    below = [
        f"{variant} on {key[0]} k={key[2]}" for key, variant, mean in kadapt if key in linear and mean <= linear[key]
    ]
    cells = sum(key in linear for key, _, _ in kadapt)
    met = "met" if not below else f"not met ({'; '.join(below)})"
    lines.append(f"- every KAdaptation variant above the linear probe (mean test accuracy, {cells} cells): {met}.")
    return lines + all_linear_targets(records)


def all_linear_targets(records: list[RunRecord]) -> list[str]:
    """Each KAdaptation variant on all linear layers against (1) its q/v variants, KAdaptation on q_proj+v_proj of the
    same parametrisation: the one with the same n and r, and the largest with no more adapter parameters (pooled mean
    paired difference ≥ -0.5 point), and (2) LoRA r = 1 on all linear layers (pooled mean paired difference > 0)."""
    lines = []
    kadapt = {r.variant: r.adapter_parameters for r in records if r.method == "kadaptation"}
    spec = {v: parse_variant(v) for v in kadapt}  # records name their parametrisation (legacy ones too)
    for variant in sorted(v for v in kadapt if spec[v].target_modules == ALL_LINEAR.replace("+", ",")):
        kind = spec[variant].kadapt_parametrization
        qv = sorted(
            (count, v)
            for v, count in kadapt.items()
            if spec[v].target_modules == "q_proj,v_proj" and spec[v].kadapt_parametrization == kind
        )
        same = [
            v
            for _, v in qv
            if (spec[v].kadapt_n, spec[v].kadapt_r) == (spec[variant].kadapt_n, spec[variant].kadapt_r)
        ]
        largest = [v for count, v in qv if count <= kadapt[variant]][-1:]
        checks = [(v, -ALL_LINEAR_SLACK, "≥ -0.005") for v in dict.fromkeys(same + largest)]
        checks.append((LORA_R1_ALL_LINEAR, None, "> 0"))
        for reference, threshold, rule in checks:
            chosen = [r for r in records if r.variant in (variant, reference)]
            row = next(iter(pooled_differences(chosen, reference)), None)
            if row is None:  # no shared split (e.g. no record of the reference)
                continue
            passed = row["difference"] > 0 if threshold is None else row["difference"] >= threshold
            lines.append(
                f"- all linear layers: {variant} against {reference} (pooled mean paired difference {rule}): "
                f"{'met' if passed else 'not met'} ({_signed(row['difference'], row['interval'])} over "
                f"{row['splits']} splits, {row['wins']} / {row['ties']} / {row['losses']})."
            )
    return lines


def _standing(row: dict) -> str:
    """'ahead' when the pooled paired 95 % interval excludes a loss, 'behind' when it excludes a win, else 'tied'."""
    low, high = row["difference"] - row["interval"], row["difference"] + row["interval"]
    if row["difference"] > 0 and low >= 0:
        return "ahead"
    return "behind" if row["difference"] < 0 and high <= 0 else "tied"


def field(records: list[RunRecord], budgets=BUDGETS) -> list[dict]:
    """In every budget class with a KAdaptation variant: its variant with the best mean validation accuracy (validation
    chooses it), its pooled paired difference against every other adapter of the class, and the class's variant with
    the highest mean test accuracy."""
    out = []
    classes = defaultdict(list)
    for r in records:
        classes[class_of(r, budgets)].append(r)
    for budget in sorted(b for b in classes if b is not None):
        by_variant = defaultdict(list)
        for r in classes[budget]:
            by_variant[r.variant].append(r)
        kadapt = sorted(v for v in by_variant if by_variant[v][0].method == "kadaptation")
        if not kadapt:
            continue
        best = max(kadapt, key=lambda v: statistics.fmean(r.validation_accuracy for r in by_variant[v]))
        rows = []
        for peer in sorted(v for v in by_variant if v not in kadapt):
            rows += [{**p, "peer": peer} for p in paired_differences(by_variant[best] + by_variant[peer], peer)]
        datasets = {
            dataset: {"rows": [p for p in rows if p["dataset"] == dataset], **_top(by_variant, dataset)}
            for dataset in sorted({r.dataset for r in classes[budget]})
        }
        pooled = [p for p in rows if p["dataset"] == "pooled"]
        out.append({"budget": budget, "best": best, "rows": pooled, **_top(by_variant), "datasets": datasets})
    return out


def _top(by_variant: dict[str, list[RunRecord]], dataset: str | None = None) -> dict:
    """The variant with the highest mean test accuracy (on `dataset`'s records alone when given), and that mean."""
    means = {
        v: statistics.fmean(r.test_accuracy for r in rs if dataset in (None, r.dataset))
        for v, rs in by_variant.items()
        if any(dataset in (None, r.dataset) for r in rs)
    }
    top = max(means, key=means.get)
    return {"top": top, "top_mean": means[top]}


def _standings(rows: list[dict]) -> dict[str, list[str]]:
    """The peers of `rows` by KAdaptation's standing against each ('ahead', 'tied', 'behind')."""
    standing = defaultdict(list)
    for row in rows:
        standing[_standing(row)].append(row["peer"])
    return standing


def field_markdown(fields: list[dict]) -> str:
    """`field(records)` (`fields`) as a table, then each class's standing in words, then the standing on each dataset
    alone (the same validation-chosen variant; paired intervals over that dataset's splits)."""
    lines = [
        "| budget | KAdaptation (best on validation) | against | splits | paired difference (± 95 % CI) "
        "| wins / ties / losses | standing |",
        "|---|---|---|---|---|---|---|",
    ]
    words = []
    for c in fields:
        standing = _standings(c["rows"])
        for row in c["rows"]:
            lines.append(
                f"| ~{c['budget'] // 1000}k | {c['best']} | {row['peer']} | {row['splits']} | {_diff(row)} "
                f"| {_standing(row)} |"
            )
        behind = f" (behind: {'; '.join(standing['behind'])})" if standing["behind"] else ""
        words.append(
            f"- ~{c['budget'] // 1000}k: {c['best']} is ahead of {len(standing['ahead'])}, tied with "
            f"{len(standing['tied'])} and behind {len(standing['behind'])} of the class's other adapters{behind}; "
            f"highest mean test accuracy in the class: {c['top']} ({c['top_mean']:.3f})."
        )
    return "\n".join(lines + ["", *words, "", *_field_by_dataset(fields)]) + "\n"


def _field_by_dataset(fields: list[dict]) -> list[str]:
    lines = [
        "The same variant on each dataset alone (paired 95 % CIs over that dataset's splits; counts of the class's other "
        "adapters):",
        "",
        "| budget | dataset | ahead of | tied with | behind | behind which | highest mean test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in fields:
        for dataset, d in c["datasets"].items():
            standing = _standings(d["rows"])
            lines.append(
                f"| ~{c['budget'] // 1000}k | {dataset} | {len(standing['ahead'])} | {len(standing['tied'])} "
                f"| {len(standing['behind'])} | {'; '.join(standing['behind']) or '-'} | {d['top']} ({d['top_mean']:.3f}) |"
            )
    return lines


def verdict_markdown(records: list[RunRecord], budgets=BUDGETS) -> str:
    """The budget-class comparisons, the field of each class and the study's targets, each said as met or not."""
    rows = comparisons(records, budgets)
    lines = [
        "| budget | KAdaptation variant | against | dataset | splits | paired difference (± 95 % CI) "
        "| wins / ties / losses |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| ~{row['budget'] // 1000}k | {row['variant']} | {row['peer']} | {row['dataset']} | {row['splits']} "
            f"| {_diff(row)} |"
        )
    fields = field(records, budgets)
    lines += ["", "KAdaptation's best variant on validation against every other adapter of its class:", ""]
    lines += [field_markdown(fields), "Targets:", *targets(records, rows, fields, budgets)]
    ks = sorted({str(r.shots) for r in records}, key=shots_order)
    if len(ks) > 1:
        lines += ["", "The same targets on each k's splits alone:"]
        for k in ks:
            alone = [r for r in records if str(r.shots) == k]
            per_k = targets(alone, comparisons(alone, budgets), field(alone, budgets), budgets)
            lines += [f"- k = {k}:", *(f"  {line}" for line in per_k)]
    return "\n".join(lines) + "\n"


def chosen_settings_markdown(records: list[RunRecord]) -> str:
    """How often validation chose each (alpha, learning rate) per variant, and how often on the grid's edge."""
    lines = ["| variant | splits | chosen (alpha, lr): times | at the grid's edge |", "|---|---|---|---|"]
    for variant in sorted({r.variant for r in records}):
        runs = [r for r in records if r.variant == variant]
        counts = defaultdict(int)
        for r in runs:
            counts[(r.chosen_alpha, r.chosen_lr)] += 1
        cells = ", ".join(
            f"({'-' if a is None else f'{a:g}'}, {lr:g}): {n}"
            for (a, lr), n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        )
        lines.append(f"| {variant} | {len(runs)} | {cells} | {sum(map(at_grid_edge, runs))} |")
    return "\n".join(lines) + "\n"


def frontier_panels(records: list[RunRecord], reference: str = LORA_R8) -> list[list[dict]]:
    """The Pareto plot's panels, one row per k: per dataset, each variant's test accuracy (mean ± 95 % interval over
    that dataset's splits at that k) and adapter parameters; last, the paired difference against `reference` pooled
    over that k's splits of every dataset (few-shot k only). k = 5 and k = 20 are never averaged together: they
    differ by more than the methods do. A panel without records has no points."""
    params = {r.variant: r.adapter_parameters for r in records}
    datasets = sorted({r.dataset for r in records})
    rows = []
    for k in sorted({str(r.shots) for r in records}, key=shots_order):
        at_k = [r for r in records if str(r.shots) == k]
        row = []
        for dataset in datasets:
            group = [r for r in at_k if r.dataset == dataset]
            points = [(t["variant"], t["adapter"], t["mean"], t["interval"]) for t in summarise(group)]
            pxs = "/".join(map(str, sorted({r.settings["resolution"] for r in group})))
            n = len({_split(r) for r in group})
            title = (
                f"{dataset}, k = {k}, {pxs} px, {n} split{'s' * (n > 1)}"
                if n
                else f"{dataset}, k = {k}: no split tabulated"
            )
            row.append({"title": title, "points": points, "ylabel": "test accuracy (mean ± 95 % CI)"})
        pooled = pooled_differences(at_k, reference)
        n = pooled[0]["splits"] if pooled else 0
        row.append(
            {
                "title": f"k = {k}, pooled ({n} splits): paired difference vs {reference.split(' targets')[0]} (q/v)"
                if n
                else f"k = {k}: nothing to pair (pairs need a few-shot k and records of {reference})",
                "points": [
                    (p["variant"], params[p["variant"]], p["difference"], p["interval"])
                    for p in pooled
                    if 0 < params[p["variant"]] < 1e6
                ],
                "ylabel": "test accuracy difference (± 95 % CI)",
                "zero": True,
            }
        )
        rows.append(row)
    return rows


def pareto_front(points: list[tuple]) -> set[str]:
    """The variants of `points` ((variant, parameters, mean, half-width)) that no other point beats: none has as few
    parameters or fewer and as high a mean or higher, with one of the two strictly."""
    return {
        v for v, n, m, _ in points if not any(n2 <= n and m2 >= m and (n2, m2) != (n, m) for _, n2, m2, _ in points)
    }


def frontier_plot(records: list[RunRecord], path: Path, reference: str = LORA_R8) -> None:
    """Draw `frontier_panels`: a row per k, a panel per dataset and a pooled panel per row. Each method's sizes on the
    same layers are joined by a line; only a panel's Pareto front is labelled (with a field of peers, labels on every
    point covered each other)."""
    from matplotlib.ticker import NullFormatter

    from peft_kadapt.training.plotting import pyplot, save

    plt = pyplot()
    panels = frontier_panels(records, reference)
    width = len(panels[0])
    fig, axes = plt.subplots(len(panels), width, figsize=(4.2 * width, 3.4 * len(panels)), squeeze=False)
    adapters = sorted(
        {r.method for r in records if r.method not in REFERENCES}, key=lambda m: ((FIRST + (m,)).index(m), m)
    )
    palette = plt.get_cmap("tab20").colors
    colours = {m: palette[(2 * i) % 20 + (i >= 10)] for i, m in enumerate(adapters)}  # dark tab20 shades first
    counts = [r.adapter_parameters for r in records if r.method not in REFERENCES]
    span = (min(counts) / 1.5, max(counts) * 1.5) if counts else (1e4, 3e5)
    markers = {True: "s", False: "o"}  # all linear layers: square; q/v: circle
    for ax, panel in zip(axes.flat, (panel for row in panels for panel in row)):
        ax.set_title(panel["title"], fontsize=8)
        if not panel["points"]:
            ax.set_axis_off()
            continue
        ax.set_xlim(*span)
        if panel.get("zero"):
            ax.axhline(0, color="grey", lw=0.8)
        adapters_here = [p for p in panel["points"] if p[0].split()[0] not in REFERENCES]
        front, lines = pareto_front(adapters_here), defaultdict(list)
        for variant, params, mean, half in panel["points"]:
            method = variant.split()[0]
            if method in REFERENCES:
                ax.axhline(mean, color="grey", lw=0.8, ls=":")
                ax.annotate(method, (span[0], mean), fontsize=6, color="grey")
                continue
            ax.errorbar(params, mean, yerr=0 if half != half else half, fmt=markers["fc1" in variant],
                        color=colours[method], capsize=2, ms=4)  # fmt: skip
            lines[method, "fc1" in variant].append((params, mean))
            if variant in front:
                name = variant.split(" targets=")[0].replace(f" parametrization={DEFAULT_PARAMETRIZATION}", "")
                ax.annotate(name + (" all" if "fc1" in variant else ""), (params, mean), fontsize=5)
        for (method, all_six), xy in lines.items():
            if len(xy) > 1:
                ax.plot(*zip(*sorted(xy)), color=colours[method], lw=0.7, alpha=0.6, ls="--" if all_six else "-")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a span under a decade would label every minor tick
        ax.grid(alpha=0.3)
        ax.set_xlabel("adapter parameters (head excluded)", fontsize=7)
        ax.set_ylabel(panel["ylabel"], fontsize=7)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in adapters]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    fig.suptitle(
        "circle and solid line: q/v; square and dashed line: all linear layers (a line joins one method's sizes); "
        "labelled: each panel's Pareto front; dotted: references (linear, bitfit, full)",
        fontsize=8,
    )
    save(fig, path, rect=(0, 0.06, 1, 0.97))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="JSON-lines record files of `kadapt bench`")
    p.add_argument("--map", action="store_true", help="print the alpha x learning-rate map of validation accuracy")
    p.add_argument("--verdict", action="store_true", help="print the budget-class comparisons and the targets")
    p.add_argument(
        "--plot", default=None, help="write the Pareto plot here (a row per k: a panel per dataset, one pooled)"
    )
    p.add_argument(
        "--all_splits", action="store_true", help="also use splits some variant has no record on (tables and --map)"
    )
    p.add_argument(
        "--until",
        default=None,
        metavar="TIME",
        help="only records finished at or before this UTC time (ISO, e.g. 2026-11-29T18:00:00): a table in the docs "
        "stays reproducible while the study appends records",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="SETTING",
        help="name variants with this setting too, e.g. --label warmup_steps, to compare records that differ in it",
    )
    p.add_argument(
        "--reference", default="lora r=8 targets=q_proj+v_proj", help="variant the results table pairs against"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="TEXT",
        help="leave out the variants whose name contains TEXT as whole words, e.g. --exclude parametrization=legacy; "
        "--exclude vera leaves PVeRA in, --exclude lora VB-LoRA and TinyLoRA (repeatable)",
    )
    p.add_argument(
        "--shots",
        default=None,
        help="only these k, comma-separated, e.g. 5,20 (the few-shot regime) or full (the full-shot subset)",
    )
    p.add_argument(
        "--validation",
        action="store_true",
        help="tabulate the chosen points' validation accuracy instead of test accuracy (what validation preferred); "
        "results and frontier tables, and which points validation chose (how often on the grid's edge)",
    )
    args = p.parse_args(argv)
    if args.validation and (args.verdict or args.plot or args.map):
        raise SystemExit("--validation: prints the results and frontier tables only (drop --verdict, --plot, --map).")
    records = [r for path in args.records for r in read_records(Path(path))]
    if args.shots:
        wanted = {k.strip() for k in args.shots.split(",")}
        records = [r for r in records if str(r.shots).split()[0] in wanted]
        if not records:
            raise SystemExit(f"--shots {args.shots}: no record has these k (write k as 5 or 20, or full).")
    records = study_cut(records, args.until, args.exclude)
    if not records:
        raise SystemExit(f"--exclude {args.exclude}: no record is left.")
    for r in records:
        settings = normalised(r.settings)
        for name in args.label:
            if name not in settings:
                raise SystemExit(f"--label {name}: not a benchmark setting; one of {sorted(settings)}.")
            r.variant = f"{r.variant} [{name}={settings[name]}]"
    if not args.all_splits:
        records, complete, total = complete_splits(records)
        print(f"{complete} of {total} splits have a record for every variant; the tables use those.\n")
    if args.map:
        print(alpha_lr_map_markdown(records))
        return
    if args.validation:
        print("Validation accuracy of each chosen point (test accuracy is not shown).\n")
        print(results_markdown(records, reference=args.reference, metric="validation"))
        print(frontier_markdown(records, metric="validation"))
        print(chosen_settings_markdown(records))
        return
    print(results_markdown(records, reference=args.reference))
    print(frontier_markdown(records))
    if args.verdict:
        print(verdict_markdown(records))
        print(chosen_settings_markdown(records))
    if args.plot:
        frontier_plot(records, Path(args.plot))


if __name__ == "__main__":
    main()
