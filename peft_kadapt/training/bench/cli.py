"""`kadapt bench`: method variants × datasets × k × sampling seeds under one protocol (bench/protocol.py).

Writes into --output_dir: records.jsonl (one record per split and variant, appended as each split finishes; a run
started again with the same settings skips what is recorded, so it resumes), speed.json, results.md and pareto.png,
all recomputed from the records. grid_points/ keeps the grid points that runs not yet recorded have scored, so a run
stopped halfway through its grid resumes at its next point; each run's file goes when its record is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from ..backbones import check_resolution, pos_encoding_kwargs, resolve_model
from ..flags import (
    add_settings_flags,
    comma_floats,
    comma_ints,
    require_counts,
    require_learning_rates,
    settings_from_flags,
)
from ..logs import setup_logging
from ..methods import build_model, canonical_variant, get_method, parse_variant
from ..outputs import claim_output_dir, write_atomically
from ..records import append_records
from .profiling import speed_table
from .protocol import (
    FLAGS,
    BenchSettings,
    Candidate,
    cached_dataset,
    check_split,
    default_grid,
    folder_fingerprint,
    grid_points_path,
    job_key,
    normalised,
    pending,
    priors,
    read_records,
    run_job,
)
from .report import pareto_plot, results_markdown


logger = logging.getLogger(__name__)
SPEED_REFERENCE = "lora r=8"
GRID_POINTS = "grid_points"  # the folder in --output_dir that keeps the scored grid points of unrecorded runs
DEFAULT_SUITE = (
    "kadaptation n=8",
    "kadaptation n=32",
    "kadaptation n=32 slow_rank=1",
    "lora r=8",
    "lora r=1 alpha=1",
    "lokr",
    "linear",
    "bitfit",
    "full",
)
QUICK_SUITE = ("kadaptation n=8", "kadaptation n=32", "lora r=8", "linear")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kadapt bench", description=__doc__)
    _add_study_flags(p)
    _add_training_flags(p)
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.shots, args.seeds, args.methods = "textiles", "5", "0", ",".join(QUICK_SUITE)
        args.steps, args.speed_rounds, args.test_per_class = 30, 2, 50
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workers is None:
        args.workers = 2 if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1
    return args


def _add_study_flags(p: argparse.ArgumentParser) -> None:
    """What is compared on what: model, data, splits, variants, grids, outputs."""
    p.add_argument(
        "--datasets",
        default="mnist5k,fashion_mnist",
        help="comma-separated offline names, Hub ids or folders (textiles, the offline set of large images, runs at "
        "112 px under --resolution auto: about 3x the time of a 56 px dataset)",
    )
    p.add_argument("--shots", default="5,20", help="comma-separated k; 0 = full shot (of --full_shot_subset)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated sampling seeds")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_SUITE),
        help="comma-separated variants: a method name and KEY=VALUE settings, e.g. 'kadaptation n=32 slow_rank=1'",
    )
    p.add_argument(
        "--resolution",
        default="auto",
        help="input size in px for every dataset, or auto (per dataset: 56 px for images of up to 112 px, which "
        "shrinks them at most 2x; 112 px for larger ones)",
    )
    p.add_argument(
        "--adapter_lrs",
        default=None,
        help="comma-separated learning-rate grid for kadaptation, lora and lokr (the peers keep the method table's; "
        "--grid sets a variant's)",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="VARIANT=LR,LR",
        help="learning-rate grid of one variant, e.g. --grid 'linear=3e-2,1e-1' (repeatable)",
    )
    p.add_argument(
        "--alphas",
        default=None,
        help="comma-separated adapter scales (alpha) searched with the learning rates for kadaptation, lora and lokr "
        "(a peer searches its own: the method table)",
    )
    p.add_argument("--quick", action="store_true", help="textiles, k=5, one seed, 4 variants, one learning rate each")
    p.add_argument("--output_dir", default="outputs/bench")
    p.add_argument("--records", default=None, help="records file (default: OUTPUT_DIR/records.jsonl); resumes from it")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """How every run trains, and on what hardware."""
    add_settings_flags(p, BenchSettings, FLAGS)  # model, data sizes, validation, steps, batch, seed, ...
    p.add_argument("--device", default=None, help="cuda, cpu, ...; default cuda when available, else cpu")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the (dataset, k, seed) splits; default 2 on a CPU-only machine with 2+ cores, else 1",
    )
    p.add_argument("--speed_rounds", type=int, default=3, help="timed training steps per variant (0: no speed table)")


def grids(args) -> dict[str, list[Candidate]]:
    """Variant -> grid points, from the method table, --adapter_lrs, --alphas and --grid."""
    # KAdaptation variants name their parametrization in records (`--grid` may use the name as written)
    written = {canonical_variant(v.strip()): v.strip() for v in args.methods.split(",") if v.strip()}
    variants = list(written)
    specs = {v: parse_variant(v) for v in variants}  # errors before any training
    methods = {v: get_method(spec.method) for v, spec in specs.items()}
    for v, spec in specs.items():  # the PEFT config's own checks too (a bad parametrization, alpha, ...)
        if methods[v].peft_config is not None:
            try:
                methods[v].peft_config(spec, ["query"])
            except (ValueError, TypeError) as error:
                raise ValueError(f"--methods variant {v!r}: {error}") from None
    alphas = tuple(comma_floats(args.alphas, "--alphas", "adapter scales, e.g. 1,4,16")) if args.alphas else None
    if alphas and args.quick:
        raise ValueError("--quick trains one learning rate and alpha per variant: drop --alphas, or drop --quick.")
    own = {v for v in variants if methods[v].searches_alphas}
    with_alpha = [v for v in variants if alphas and v in own and re.search(r"(^|\s)alpha=", v)]
    if with_alpha:
        raise ValueError(
            f"--alphas would replace the alpha= written in {with_alpha}: drop one of them (write alpha= in every "
            "variant, or search --alphas for all)."
        )
    out = {v: default_grid(v, alphas) for v in variants}
    if args.quick:
        out = {v: [Candidate(methods[v].quick_learning_rate)] for v in variants}
    if args.adapter_lrs:
        lrs = comma_floats(args.adapter_lrs, "--adapter_lrs", "learning rates, e.g. 1e-3,3e-3")
        for v, grid in out.items():
            if v in own:  # KAdaptation, LoRA, LoKr (a peer keeps its grid; `--grid` sets its rates)
                out[v] = [Candidate(lr, a) for a in dict.fromkeys(c.alpha for c in grid) for lr in lrs]
    for item in args.grid:
        name, _, values = item.rpartition("=")
        name = canonical_variant(name)
        if name not in out or not values:
            raise ValueError(f"--grid {item!r}: expected VARIANT=LR,LR with VARIANT one of {list(written.values())}.")
        out[name] = [
            Candidate(lr, a)
            for a in dict.fromkeys(c.alpha for c in out[name])
            for lr in comma_floats(values, "--grid", "learning rates, e.g. 1e-3,3e-3")
        ]
    return out


def native_size(name: str) -> tuple[int, int]:
    """(width, height) of a dataset's first training image."""
    return cached_dataset(name)["train"][0]["image"].size


def auto_resolution(native: int) -> int:
    """56 px for images of up to 112 px (shrunk at most 2x: their information is kept); 112 px for larger ones, the
    least a table should show them at (224 px keeps more of a 250 px image, at about 4x the cost of 112 px)."""
    return 56 if native <= 112 else 112


def resolutions(datasets: list[str], flag: str) -> dict[str, int]:
    """Input size per dataset from --resolution: one size for all, or `auto` (`auto_resolution` of its images)."""
    if flag == "auto":
        return {d: auto_resolution(max(native_size(d))) for d in datasets}
    if not flag.isdigit() or int(flag) == 0:
        raise ValueError(f"--resolution {flag!r}: expected a size in pixels (e.g. 112) or auto.")
    return dict.fromkeys(datasets, int(flag))


def warn_on_downscaling(resolution: dict[str, int]) -> None:
    """Warn when a dataset's native images are more than twice its input resolution (their detail is lost)."""
    for name, size in resolution.items():
        width, height = native_size(name)
        if max(width, height) > 2 * size:
            warnings.warn(
                f"{name}: images of {width}x{height} px are shrunk to {size} px (more than 2x): detail is lost. "
                f"Pass --resolution {min(max(width, height), 224)} to keep it.",
                stacklevel=2,
            )


def measure_speed(args, variants: list[str], labels: list[str], resolution: int) -> dict:
    """Step time and memory of every variant and the LoRA r=8 reference at the benchmark's shapes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, resolution, resolution, generator=g)
    y = torch.randint(0, len(labels), (args.batch_size,), generator=g)
    models = {}
    for v in dict.fromkeys([*variants, SPEED_REFERENCE]):
        torch.manual_seed(0)
        models[v] = build_model(parse_variant(v, model_name_or_path=args.model_name_or_path), labels)[0]
    extra = pos_encoding_kwargs(models[SPEED_REFERENCE], resolution)
    return speed_table(models, x, y, args.speed_rounds, SPEED_REFERENCE, extra)


def run_bench(args) -> dict:
    start = time.perf_counter()
    datasets = [d.strip() for d in args.datasets.split(",")]
    resolution = resolutions(datasets, args.resolution)
    settings = base_settings(args)
    variant_grids = grids(args)
    settings_of = {
        d: replace(settings, resolution=resolution[d], data_fingerprint=folder_fingerprint(d)) for d in datasets
    }
    shots = comma_ints(args.shots, "--shots", "k images per class; 0 = full shot, e.g. 5,20,0")
    seeds = comma_ints(args.seeds, "--seeds", "sampling seeds, e.g. 0,1,2")
    jobs = [(d, k, s) for s in seeds for d in datasets for k in shots]  # seed-major: a cut-short study covers all data
    check_inputs(args.model_name_or_path, resolution, shots, settings_of)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records_path = Path(args.records) if args.records else output_dir / "records.jsonl"
    run_pending(args, jobs, variant_grids, settings, settings_of, records_path, output_dir / GRID_POINTS)
    wanted = {(d, str(k or f"full ({settings.full_shot_subset}/class)"), s) for d, k, s in jobs}
    records = [
        r
        for r in read_records(records_path)
        if (r.dataset, str(r.shots), r.seed) in wanted
        and r.variant in variant_grids
        and normalised(r.settings) == asdict(settings_of[r.dataset])
    ]
    speed = None
    if args.speed_rounds > 0:
        labels = cached_dataset(datasets[-1])["train"].features["label"].names
        speed = measure_speed(args, list(variant_grids), labels, resolution[datasets[-1]])
        write_atomically(output_dir / "speed.json", json.dumps(speed, indent=2))
    shape = f"{resolution[datasets[-1]]} px, batch {args.batch_size}, {args.device}"
    write_atomically(output_dir / "results.md", results_markdown(records, speed, SPEED_REFERENCE, shape))
    pareto_plot(records, output_dir / "pareto.png")
    return {"records": records, "speed": speed, "wall_time_s": round(time.perf_counter() - start, 1)}


def base_settings(args) -> BenchSettings:
    """The recorded settings the flags give (before the per-dataset resolution and data fingerprint); flags that
    cannot be meant are refused here, before anything loads."""
    require_learning_rates(args, ("head_lr",))
    if args.extend_edges < 0:
        raise ValueError(
            f"--extend_edges {args.extend_edges}: expected 0 (no extension) or a positive number of rounds."
        )
    require_counts(args, ("test_per_class", "full_shot_subset", "val_per_class", "steps", "batch_size", "workers"))
    require_counts(args, ("warmup_steps", "speed_rounds"), minimum=0)
    return settings_from_flags(
        BenchSettings, args, FLAGS, model_fingerprint=folder_fingerprint(args.model_name_or_path)
    )


def check_inputs(model_name_or_path: str, resolution: dict, shots: list[int], settings_of: dict) -> None:
    """What would fail hours into a study fails now: a resolution the model cannot take, a split a dataset cannot
    give; and a resolution that loses detail is warned of."""
    warn_on_downscaling(resolution)
    model_config = AutoConfig.from_pretrained(resolve_model(model_name_or_path))
    for size in set(resolution.values()):
        check_resolution(model_config, size)
    for d, settings in settings_of.items():
        for k in shots:
            check_split(d, k, settings)


def run_pending(args, jobs, variant_grids, settings, settings_of, records_path: Path, grid_points: Path) -> None:
    """Run the (split, variant) pairs without a record, in worker processes when asked, appending each record as it
    finishes (so a study stops and resumes anywhere); records with fewer extension rounds are topped up. The folder
    `grid_points` keeps the points of the runs in progress (a run stopped halfway resumes at its next grid point)."""
    existing = read_records(records_path)
    todo = pending(jobs, variant_grids, settings_of, {r.key for r in existing})
    topped_up = priors(existing, settings)
    prior = {(job, v): topped_up.get(job_key(job, v, variant_grids[v], settings_of[job[0]])) for job, v in todo}
    logger.info(
        "%d of %d (split, variant) runs to do; records in %s", len(todo), len(jobs) * len(variant_grids), records_path
    )
    calls = [
        (job, v, variant_grids[v], settings_of[job[0]], prior[job, v], args.device, grid_points) for job, v in todo
    ]
    pool = None
    if args.workers > 1 and len(todo) > 1:
        threads = max(1, torch.get_num_threads() // args.workers)
        pool = ProcessPoolExecutor(
            args.workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)
        )
        records = (future.result() for future in as_completed([pool.submit(run_job, *call) for call in calls]))
    else:
        records = (run_job(*call) for call in calls)
    try:
        for r in tqdm(records, total=len(todo), desc="split × variant"):
            append_records(records_path, [r])
            grid_points_path(grid_points, r.key).unlink(missing_ok=True)  # the record holds its points now
            logger.info(
                "%s k=%s seed=%d %s: test %.4f (lr %g, alpha %s)",
                *(r.dataset, r.shots, r.seed, r.variant, r.test_accuracy, r.chosen_lr, r.chosen_alpha),
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    setup_logging()


def main(argv=None) -> dict:
    setup_logging()
    args = parse_args(argv)
    with claim_output_dir(args.output_dir, resuming=True):  # one bench per folder at a time; earlier records resume
        out = run_bench(args)
    print((Path(args.output_dir) / "results.md").read_text())
    return out
