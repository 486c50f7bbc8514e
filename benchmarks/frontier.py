"""The accuracy-parameter frontier study: KAdaptation against LoRA and LoKr at equal adapter budgets.

At each budget (adapter parameters, head excluded, up to 10 % over) every method's most expressive configuration that
fits:
LoRA on q/v and on all linear layers (largest rank that fits), LoKr on q/v and on all linear layers (largest rank),
KAdaptation on q/v and on all linear layers (the top setting of `peft_kadapt.budget.propose_configs`), plus the linear
probe, BitFit and full fine-tuning as references. Every variant's learning rate and adapter scale are chosen on
validation (`--alphas` × `--adapter_lrs`; the references over `REFERENCE_GRIDS`); test accuracy is measured once per
choice.

The runs go through `kadapt bench` and append one record per (split, variant) to `--records` (committed under
benchmarks/results/), so the study stops and resumes anywhere; `--list` prints the variants and their parameters.

    python benchmarks/frontier.py --list             # add --vit_b for the same variants' counts on ViT-B/16
    python benchmarks/frontier.py --list --names --only vera,...,c3a > variants.txt   # then --variants_file variants.txt
    python benchmarks/frontier.py --speed 5 --only vera,...,c3a   # step time and memory against LoRA r=8
    python benchmarks/frontier.py --progress benchmarks/results/frontier.jsonl --only kadaptation   # how far
    python benchmarks/frontier.py --datasets mnist5k --shots 5,20 --seeds 0,1,2,3,4 \\
        --records benchmarks/results/frontier.jsonl --output_dir outputs/frontier
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import tables  # this folder's tables.py: the budget classes, their tolerance and the references the tables read
import transformers

from peft_kadapt.budget import propose_configs
from peft_kadapt.training import DINOV2_SMALL_ALIAS, HEAD, build_model, parse_variant
from peft_kadapt.training.bench import cli as bench
from peft_kadapt.training.logs import setup_logging
from peft_kadapt.training.methods import canonical_variant


QV = ("q_proj", "v_proj")
ALL_LINEAR = tuple(tables.ALL_LINEAR.split("+"))
RANKS = (1, 2, 4, 8, 16, 32, 64)
# KAdaptation variants name their parametrisation: the study's records before 2026-12-06 trained under what is now
# "legacy" and carry names without it; they are read as "... parametrization=legacy ..." (RunRecord)
PARAMETRIZATION = "parametrization=lora_matched"
DEFAULT = f"kadaptation n=8 r=1 {PARAMETRIZATION} targets=q_proj+v_proj"  # the package's default, always included
# The study's few-shot splits in the order frontier_queue.sh runs them: seed-major, so that a partial study is balanced
DESIGN_SEEDS, DESIGN_DATASETS, DESIGN_SHOTS = (
    (0, 1, 2, 3, 4),
    ("mnist5k", "textiles", "fashion_mnist", "digits"),
    (5, 20),
)
# The references' learning-rate grids since the study began (the method table's until 2026-11-29, when its grids moved
# to centre on what validation chose): pinned, so every split of the study runs the same protocol. `--grid` overrides.
REFERENCE_GRIDS = {"linear": "1e-3,3e-3,1e-2", "bitfit": "1e-3,3e-3,1e-2", "full": "1e-5,3e-5,1e-4"}


def adapter_parameters(variant: str, model_name_or_path: str, labels: list[str]) -> int:
    model, _ = build_model(parse_variant(variant, model_name_or_path=model_name_or_path), labels)
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and f"{HEAD}." not in n)


def vit_b_counts(variants: list[str], labels: list[str]) -> dict[str, int]:
    """Adapter parameters of the same variants on a ViT-B/16-shaped model (hidden 768, 12 blocks, MLP 3072), built
    with random weights in a temporary folder (the counts depend on the shapes only)."""
    import tempfile

    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    with tempfile.TemporaryDirectory() as tmp:
        ViTForImageClassification(config).save_pretrained(tmp)
        return {v: adapter_parameters(v, tmp, labels) for v in variants}


# The peers train their new head at one rate of its own, apart from their adapter's grid, as their papers train it
# (FourierFT's authors train the spectral coefficients of ViT-B at 2e-1 to 3e-1 and its head at 8e-4 to 1e-3; PEFT's
# C3A example trains at 3e-1): at one shared rate, a method whose adapter wants 1e-1 would drag the head with it.
# 3e-3 is the rate validation chose most often for LoRA r=8's head and adapter in this study. A `--head_lr` given on
# the command line replaces it (it comes later).
PEER_HEAD_LR = "3e-3"
# The peers' sizes, smallest to largest: each budget takes the largest that fits (a peer none of whose sizes fits a
# budget is left out there, as LoKr is where its count saturates). Sizes are chosen to divide ViT-S's and ViT-B's
# widths (384, 768, 1536, 3072). Lily as PEFT's documentation advises (A shared by 4 adjacent blocks, as many B as
# A-groups). The scales of FourierFT, LoHa and Lily are searched with the learning rates (`PEER_SCALES`, method table).
PEER_SIZES = {
    "vera": [f"r={r}" for r in (64, 128, 256, 512, 1024, 2048)],
    "pvera": [f"r={r}" for r in (64, 128, 256, 512, 1024, 2048)],
    "fourierft": [f"n_frequency={n}" for n in (250, 500, 1000, 2000, 4000, 8000)],
    "vblora": [f"r={r} num_vectors={v} vector_length=128" for r in (2, 4) for v in (64, 128, 256, 512)],
    "loha": [f"r={r}" for r in (1, 2, 4, 8)],
    "ia3": [""],
    "oft": [f"oft_block_size={b}" for b in (2, 4, 8, 16, 32)],
    "lily": [f"r={r} stride_A=4 num_B=3" for r in (4, 8, 16, 32, 64)],
    "tinylora": [f"r={r} u={u}" for r in (1, 2, 4) for u in (16, 64, 256)],
    "c3a": [f"block_size={b}" for b in (384, 192, 128, 96, 64, 48, 32, 24, 16)],
}
# Config fields a peer's variants set beyond their size. FourierFT starts from zeros (`init_weights=True`), not from its
# default Gaussian spectrum (its paper's), which `scaling` multiplies into every adapted weight before the first step:
# on MNIST 5k seed 0 that start collapsed it on all six linear layers (validation accuracy 0.25-0.66 after three rounds
# of extension, against 0.575 and 0.76 from zeros), and on q/v the zero start tied or won (0.63 against 0.64, 0.83
# against 0.775; Fashion-MNIST 0.72 against the pilot's 0.70): docs/benchmarks.md, fourierft_zero_init.jsonl.
PEER_OPTIONS = {"fourierft": "init_weights=True"}


def peer_variants(budgets: list[int], model_name_or_path: str, labels: list[str], peers) -> dict[str, int]:
    """variant -> adapter parameters of each peer at each budget, on q/v and on all linear layers."""
    out: dict[str, int] = {}
    for targets in (QV, ALL_LINEAR):
        joined = "+".join(targets)
        for peer in peers:
            counts = {}
            for size in PEER_SIZES[peer]:
                variant = " ".join(filter(None, (peer, size, PEER_OPTIONS.get(peer), f"targets={joined}")))
                try:
                    counts[variant] = adapter_parameters(variant, model_name_or_path, labels)
                except (ValueError, RuntimeError, TypeError):  # a size this model's shapes cannot take
                    continue
            order = list(counts)  # PEER_SIZES' order: smallest, then least expressive, first
            for budget in budgets:
                fitting = {v: c for v, c in counts.items() if c <= tables.TOLERANCE * budget}
                if fitting:  # the most parameters that fit; among equal counts the later size (TinyLoRA's r leaves
                    # its count alone but sets the rank of its r × r core: r = 1 trains one direction per layer)
                    best = max(fitting, key=lambda v: (fitting[v], order.index(v)))
                    out[best] = fitting[best]
    return out


def budget_variants(budgets: list[int], model_name_or_path: str, labels: list[str]) -> dict[str, int]:
    """variant -> adapter parameters, for every method family and budget (a family that cannot fit is left out)."""
    out: dict[str, int] = {}
    base, _ = build_model(parse_variant("linear", model_name_or_path=model_name_or_path), labels)
    for targets in (QV, ALL_LINEAR):
        joined = "+".join(targets)
        for family in ("lora", "lokr"):
            counts = {
                r: adapter_parameters(f"{family} r={r} targets={joined}", model_name_or_path, labels) for r in RANKS
            }
            for budget in budgets:
                fitting = [r for r, c in counts.items() if c <= tables.TOLERANCE * budget]
                if fitting:  # the most parameters that fit; the lower rank among equal counts (LoKr saturates)
                    r = min(fitting, key=lambda r: (-counts[r], r))
                    out[f"{family} r={r} targets={joined}"] = counts[r]
        for budget in budgets:
            try:
                (setting, report), *_ = propose_configs(base, int(tables.TOLERANCE * budget), list(targets), top=1)
            except ValueError:  # below the smallest KAdaptation on these layers
                continue
            rank = f" slow_rank={setting['slow_rank']}" if setting["slow_rank"] else ""
            out[f"kadaptation n={setting['n']} r={setting['r']}{rank} {PARAMETRIZATION} targets={joined}"] = (
                report.total
            )
    return out


def print_speed(variants: list[str], model_name_or_path: str, labels: list[str], rounds: int, px: int) -> None:
    """Step time and training memory of every variant beside LoRA r=8 on q/v, measured side by side in one process
    (these machines are noisy: ratios, not seconds, are what compares)."""
    import torch

    from peft_kadapt.training import pos_encoding_kwargs
    from peft_kadapt.training.bench.profiling import speed_table

    reference = "lora r=8 targets=q_proj+v_proj"
    models = {}
    for variant in dict.fromkeys([reference, *variants]):
        torch.manual_seed(0)
        models[variant] = build_model(parse_variant(variant, model_name_or_path=model_name_or_path), labels)[0]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, px, px, generator=g), torch.randint(0, len(labels), (16,), generator=g)
    table = speed_table(models, x, y, rounds, reference, pos_encoding_kwargs(models[reference], px))
    print(f"Training step against {reference} ({px} px, batch 16, {rounds} rounds, {torch.__version__}):\n")
    print("| variant | step (s) | step / LoRA r=8 | training memory (MiB) | memory / LoRA r=8 |")
    print("|---|---|---|---|---|")
    for variant, row in sorted(table.items(), key=lambda kv: kv[1]["step_ratio"]):
        print(
            f"| {variant} | {row['step_s']:.3f} | {row['step_ratio']:.2f} | {row['memory_bytes'] / 2**20:.1f} "
            f"| {row['memory_ratio']:.2f} |"
        )


def design_splits(seeds=DESIGN_SEEDS) -> list[tuple[str, int, int]]:
    """(dataset, k, seed) of the study's few-shot splits, seed-major."""
    return [(d, k, seed) for seed in seeds for d in DESIGN_DATASETS for k in DESIGN_SHOTS]


def _wall_means(wanted: set[str], records: list) -> tuple[dict, dict, dict]:
    """Mean wall seconds per (variant, dataset) of every record and per (method, dataset) of the wanted variants', and
    per dataset pair how much dearer the first is than the second (median ratio over the variants run on both)."""
    from statistics import fmean, median

    variant_walls, method_walls = defaultdict(list), defaultdict(list)
    for r in records:
        variant_walls[r.variant, r.dataset].append(r.wall_seconds)
        if r.variant in wanted:
            method_walls[r.method, r.dataset].append(r.wall_seconds)
    by_variant = {key: fmean(w) for key, w in variant_walls.items()}
    per_dataset = defaultdict(dict)  # variant -> dataset -> mean wall seconds
    for (v, d), w in by_variant.items():
        per_dataset[v][d] = w
    ratios = defaultdict(list)
    for walls in per_dataset.values():
        for d, w in walls.items():
            for d2, w2 in walls.items():
                if d2 != d:
                    ratios[d, d2].append(w / w2)
    by_method = {key: fmean(w) for key, w in method_walls.items()}
    return by_variant, by_method, {pair: median(r) for pair, r in ratios.items()}


def print_progress(variants: list[str], records_path: str) -> None:
    """How far the study of `variants` is over the design's splits (seeds 0-2, then 3-4), and the core time it took and
    will take: each missing run estimated by the mean wall time of the same variant on the same dataset, else of its
    method there, else of the variant (or its method) on another dataset times that dataset's relative cost."""
    from statistics import fmean

    from peft_kadapt.training.bench.protocol import read_records

    wanted = {canonical_variant(v) for v in variants}
    design = set(design_splits())
    records = [r for r in read_records(Path(records_path)) if (r.dataset, r.shots, r.seed) in design]  # not full-shot
    done = {(r.dataset, r.shots, r.seed, r.variant): r for r in records if r.variant in wanted}
    by_variant, by_method, ratios = _wall_means(wanted, records)

    def estimate(variant: str, dataset: str) -> tuple[float | None, bool]:
        """Mean wall seconds of one missing run, and whether it was scaled from another dataset."""
        tables = ((by_variant, variant), (by_method, variant.split()[0]))
        for means, name in tables:
            if (name, dataset) in means:
                return means[name, dataset], False
        for means, name in tables:
            scaled = [w * ratios[dataset, d] for (n, d), w in means.items() if n == name and (dataset, d) in ratios]
            if scaled:
                return fmean(scaled), True
        return None, False

    print(f"{len(wanted)} variants, records {records_path}:\n")
    print("| seeds | splits with every variant | splits begun | runs recorded | core hours spent | core hours left |")
    print("|---|---|---|---|---|---|")
    unknown = scaled = 0
    for seeds in (DESIGN_SEEDS[:3], DESIGN_SEEDS[3:]):
        runs = [(d, k, s, v) for d, k, s in design_splits(seeds) for v in sorted(wanted)]
        have = [done[run].wall_seconds for run in runs if run in done]
        left = [estimate(v, d) for d, k, s, v in runs if (d, k, s, v) not in done]
        unknown += sum(w is None for w, _ in left)
        scaled += sum(other for _, other in left)
        per_split = [sum((d, k, s, v) in done for v in wanted) for d, k, s in design_splits(seeds)]
        print(
            f"| {seeds[0]}-{seeds[-1]} | {per_split.count(len(wanted))} of {len(per_split)} | "
            f"{sum(n > 0 for n in per_split)} | {len(have)} of {len(runs)} | {sum(have) / 3600:.1f} | "
            f"{sum(w for w, _ in left if w) / 3600:.1f} |"
        )
    if scaled:
        print(
            f"\n{scaled} missing runs have no record of their method on their dataset: estimated from another dataset."
        )
    if unknown:
        print(
            f"\n{unknown} missing runs have no record of their method anywhere, nor a dataset to scale from: not counted."
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default=",".join(map(str, tables.BUDGETS)))
    p.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    p.add_argument("--list", action="store_true", help="print the variants and their adapter parameters, and stop")
    p.add_argument("--vit_b", action="store_true", help="with --list: also each variant's count on ViT-B/16")
    p.add_argument("--names", action="store_true", help="with --list: only the variants' names, one per line")
    p.add_argument(
        "--variants_file",
        help="the variants, one per line as `--list --names` prints them, instead of computing them from the budgets "
        "(building every size of every method takes a minute or two: frontier_queue.sh computes them once)",
    )
    p.add_argument(
        "--speed",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead of training: every variant's training step time (median of ROUNDS alternating steps) and memory "
        "against LoRA r=8 on q/v, at --speed_resolution px and batch 16 (the bench's shapes), as a markdown table",
    )
    p.add_argument("--speed_resolution", type=int, default=56)
    p.add_argument(
        "--progress",
        metavar="RECORDS",
        help="instead of training: how many of the design's splits RECORDS holds for the variants, with core hours "
        "spent and (estimated) left",
    )
    p.add_argument("--alphas", default="1,4,16")
    p.add_argument("--adapter_lrs", default="1e-3,3e-3,1e-2")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated method names (e.g. kadaptation, or peers such as vera,loha): run only their variants, "
        "the others' records stand; the peers of peft (vera, ..., c3a) run only when named here",
    )
    args, bench_argv = p.parse_known_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # one bar per model built: noise in --list and in the study's logs
    budgets = [int(b) for b in args.budgets.split(",")]
    labels = [str(i) for i in range(10)]  # parameter counts do not depend on the data beyond the head
    only = {m.strip() for m in args.only.split(",")} if args.only else None
    if args.variants_file and args.list and not args.names:
        p.error("--list with --variants_file: add --names (the file holds names, not parameter counts)")
    if args.variants_file:
        variants = dict.fromkeys(
            line.strip() for line in Path(args.variants_file).read_text().splitlines() if line.strip()
        )
        if not variants:
            p.error(f"--variants_file {args.variants_file} names no variant (write it with --list --names)")
    else:
        variants = budget_variants(budgets, args.model_name_or_path, labels)
        variants.setdefault(DEFAULT, adapter_parameters(DEFAULT, args.model_name_or_path, labels))
        peers = [p for p in PEER_SIZES if only and p in only]  # the peers run only when named (issue 29's study)
        variants.update(peer_variants(budgets, args.model_name_or_path, labels, peers))
    references = list(tables.REFERENCES)
    if only:
        variants = {v: c for v, c in variants.items() if v.split()[0] in only}
        references = [r for r in references if r in only]
    if args.list and args.names:
        print("\n".join(variants))
        return
    if args.list:
        base = vit_b_counts(list(variants), labels) if args.vit_b else {}
        print("| variant | adapter parameters |" + (" on ViT-B/16 |" if base else ""))
        print("|---|---|" + ("---|" if base else ""))
        for variant, count in sorted(variants.items(), key=lambda kv: kv[1]):
            print(f"| {variant} | {count:,d} |" + (f" {base[variant]:,d} |" if base else ""))
        return
    if args.progress:
        return print_progress(list(variants) + references, args.progress)
    if args.speed:
        return print_speed(list(variants), args.model_name_or_path, labels, args.speed, args.speed_resolution)
    setup_logging()
    own = [v for v in variants if v.split()[0] not in PEER_SIZES] + references
    grids = ["--alphas", args.alphas, "--adapter_lrs", args.adapter_lrs]
    for methods, extra in ((own, grids), ([v for v in variants if v not in own], ["--head_lr", PEER_HEAD_LR])):
        if methods:  # the peers in a pass of their own: their grids (method table), their head at PEER_HEAD_LR
            bench.main(
                ["--model_name_or_path", args.model_name_or_path, "--methods", ",".join(methods), *extra]
                + [
                    arg
                    for name, lrs in REFERENCE_GRIDS.items()
                    if name in methods
                    for arg in ("--grid", f"{name}={lrs}")
                ]
                + bench_argv
            )


if __name__ == "__main__":
    main()
