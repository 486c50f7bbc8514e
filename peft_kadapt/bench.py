"""`kadapt bench`: methods × datasets × shots × seeds under one protocol, with accuracy, parameters, file size, time,
the ELEVATER performance-efficiency metric, step time and memory, a markdown table and a Pareto plot.

Protocol (the same for every method): for each dataset, k and sampling seed, a class-balanced few-shot split and a
held-out test set. Validation (`--validation`):
- `pool` (default): `--val_per_class` extra labelled images per class, drawn from the training pool outside the shots,
  used only to choose the learning rate. Every learning rate of the method's grid trains on all k shots; the one with
  the best validation accuracy (ties: lower validation loss) is evaluated once on test.
- `shots`: validation carved from the k shots (a fifth, at least one per class, strictly few-shot); every learning
  rate trains on the rest, the chosen one is retrained on all k shots and evaluated once on test.
Every run trains for the same number of AdamW steps (`--steps`, cosine schedule), scored after the last step (no
epoch selection). Test accuracy never chooses anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import few_shot, image_transform, load_image_dataset, to_tensors
from .pretrained import DINOV2_SMALL_ALIAS
from .train import ModelArguments, _normalisation, build_model, pos_encoding_kwargs


logger = logging.getLogger(__name__)
ADAPTER_LRS = (3e-4, 1e-3, 3e-3)


def _kadapt(n: int, slow_rank: int | None = None, r: int = 1, alpha: float = 4.0) -> ModelArguments:
    """KAdaptation settings spelled out, so that a change of the library's defaults keeps a row's meaning."""
    return ModelArguments(method="kadaptation", kadapt_n=n, kadapt_r=r, kadapt_alpha=alpha, kadapt_slow_rank=slow_rank)


METHODS = {  # name: (model arguments, learning-rate grid)
    "kadaptation n=32": (_kadapt(n=32), ADAPTER_LRS),
    "kadaptation n=32 slow_rank=1": (_kadapt(n=32, slow_rank=1), ADAPTER_LRS),
    "kadaptation n=8": (_kadapt(n=8), ADAPTER_LRS),
    "kadaptation n=16": (_kadapt(n=16), ADAPTER_LRS),
    "kadaptation n=8 r=2": (_kadapt(n=8, r=2), ADAPTER_LRS),
    "lora r=8": (ModelArguments(method="lora", lora_r=8, lora_alpha=8), ADAPTER_LRS),
    "lora r=1": (ModelArguments(method="lora", lora_r=1, lora_alpha=1), ADAPTER_LRS),
    "lokr": (ModelArguments(method="lokr", lora_r=8, lora_alpha=8), ADAPTER_LRS),
    "linear": (ModelArguments(method="linear"), (1e-3, 3e-3, 1e-2)),
    "bitfit": (ModelArguments(method="bitfit"), (1e-3, 3e-3, 1e-2)),
    "full": (ModelArguments(method="full"), (1e-5, 3e-5, 1e-4)),
}


EXTRA_METHODS = ("kadaptation n=16", "kadaptation n=8 r=2")  # run by name, outside the default suite's time budget
DEFAULT_SUITE = tuple(m for m in METHODS if m not in EXTRA_METHODS)


def performance_efficiency(accuracy: float, trainable: int, backbone: int) -> float:
    """ELEVATER's performance-efficiency metric: accuracy · exp(-log10(trainable / backbone + 1))."""
    return accuracy * math.exp(-math.log10(trainable / backbone + 1))


def _fit(model, x, y, lr, steps, batch_size, seed, extra) -> float:
    """`steps` AdamW steps (weight decay 0.01, cosine) over reshuffled epochs of (x, y); returns seconds."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    start, done = time.perf_counter(), 0
    while done < steps:
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            if done == steps:
                break
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(pixel_values=x[idx], **extra).logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
    return time.perf_counter() - start


@torch.no_grad()
def _accuracy(model, x, y, extra) -> float:
    return _scores(model, x, y, extra)[0]


@torch.no_grad()
def _scores(model, x, y, extra) -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    model.eval()
    logits = torch.cat([model(pixel_values=x[i : i + 100], **extra).logits for i in range(0, len(y), 100)])
    return (logits.argmax(-1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def _saved_bytes(model, is_peft: bool) -> int:
    if not is_peft:  # what one would have to ship: the trainable tensors, fp32
        return 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def _validation_rank(accuracy: float, loss: float) -> tuple[float, float]:
    """How learning rates are compared: validation accuracy, ties (frequent with few images) to the lower loss."""
    return accuracy, -loss


def run_one(args, spec: ModelArguments, lrs, data, names) -> dict:
    """Learning-rate grid scored on validation; the chosen setting evaluated once on test (see the module doc)."""
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    pool = args.validation == "pool"
    val, val_loss, kept = {}, {}, None

    def rank(lr):
        return _validation_rank(val[lr], val_loss[lr])

    for lr in lrs:
        torch.manual_seed(args.train_seed)
        model, is_peft = build_model(spec, names)
        extra = pos_encoding_kwargs(model, args.resolution)
        seconds = _fit(model, x_tr, y_tr, lr, args.steps, args.batch_size, args.train_seed, extra)
        val[lr], val_loss[lr] = _scores(model, x_val, y_val, extra)
        if pool and (kept is None or rank(lr) > rank(kept[0])):
            kept = (lr, model, is_peft, seconds)
    if pool:
        best_lr, model, is_peft, seconds = kept
    else:  # retrain the chosen learning rate on all k shots
        best_lr = max(lrs, key=rank)
        torch.manual_seed(args.train_seed)
        model, is_peft = build_model(spec, names)
        seconds = _fit(model, torch.cat([x_tr, x_val]), torch.cat([y_tr, y_val]), best_lr, args.steps,
                       args.batch_size, args.train_seed, extra)  # fmt: skip
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    backbone = sum(p.numel() for n, p in model.named_parameters() if "classifier" not in n and "kadapt_" not in n
                   and "lora_" not in n and "lokr_" not in n)  # fmt: skip
    accuracy = _accuracy(model, x_te, y_te, extra)
    return {"validation": {str(k): v for k, v in val.items()},
            "validation_loss": {str(k): v for k, v in val_loss.items()}, "chosen_lr": best_lr, "test_accuracy": accuracy,
            "trainable_parameters": trainable, "adapter_parameters": trainable - head,
            "saved_bytes": _saved_bytes(model, is_peft), "train_seconds": round(seconds, 2),
            "performance_efficiency": performance_efficiency(accuracy, trainable, backbone)}  # fmt: skip


def measure_speed(args, methods: dict, names) -> dict:
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, len(names), (args.batch_size,), generator=torch.Generator().manual_seed(0))
    built = {}
    for name, (spec, _) in methods.items():
        torch.manual_seed(0)
        model, _ = build_model(spec, names)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        built[name] = (model.train(), optimizer)
    extra = pos_encoding_kwargs(model, args.resolution)  # the same backbone for every method
    times = {name: [] for name in built}
    for round_ in range(args.speed_rounds + 1):  # the first round warms up
        for name, (model, optimizer) in built.items():
            start = time.perf_counter()
            F.cross_entropy(model(pixel_values=x, **extra).logits, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_:
                times[name].append(time.perf_counter() - start)
    out = {name: {"step_s": statistics.median(t), "memory_bytes": training_memory(built[name][0], x, y, extra)}
           for name, t in times.items()}  # fmt: skip
    ref = out.get("lora r=8")
    for entry in out.values():
        if ref:
            entry["step_vs_lora8"] = entry["step_s"] / ref["step_s"]
            entry["memory_vs_lora8"] = entry["memory_bytes"] / ref["memory_bytes"]
    return out


def training_memory(model, x, y, extra=None) -> int:
    """Bytes saved for backward (deduplicated by storage, weights excluded) + grads + AdamW state of trainables."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(pixel_values=x, **(extra or {})).logits.float(), y)
    for p in model.parameters():
        storages.pop(p.untyped_storage().data_ptr(), None)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) + 3 * sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kadapt bench", description=__doc__)
    p.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    p.add_argument("--datasets", default="mnist5k,textiles", help="comma-separated offline names, Hub ids or folders")
    p.add_argument("--shots", default="5,20", help="comma-separated k; 0 = full shot (of a --full_shot_subset)")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds")
    p.add_argument("--methods", default=",".join(DEFAULT_SUITE),
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: all but {', '.join(EXTRA_METHODS)})")  # fmt: skip
    p.add_argument("--resolution", type=int, default=56)
    p.add_argument("--test_per_class", type=int, default=100)
    p.add_argument("--full_shot_subset", type=int, default=100, help="images per class used as 'full shot'")
    p.add_argument("--validation", choices=("pool", "shots"), default="pool",
                   help="pool: extra images outside the shots; shots: carved from the shots, then retrain")  # fmt: skip
    p.add_argument("--val_per_class", type=int, default=20, help="validation images per class with --validation pool")
    p.add_argument("--adapter_lrs", default=None,
                   help="comma-separated learning-rate grid for KAdaptation, LoRA and LoKr (default: "
                   + ", ".join(f"{lr:g}" for lr in ADAPTER_LRS) + ")")  # fmt: skip
    p.add_argument("--grid", action="append", default=[], metavar="METHOD=LR,LR",
                   help="learning-rate grid of one method, e.g. --grid 'linear=3e-2,1e-1' (repeatable)")  # fmt: skip
    p.add_argument("--steps", type=int, default=50, help="AdamW steps per training run, for every method")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--train_seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="processes sharing the (dataset, k, seed) jobs; default 2 on a CPU-only machine with at "
                   "least 2 cores (1 thread each), else 1")  # fmt: skip
    p.add_argument("--speed_rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="textiles, k=5, one seed, 4 methods, one learning rate each")
    p.add_argument("--output_dir", default="outputs/bench")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.shots, args.seeds = "textiles", "5", "0"
        args.methods = "kadaptation n=8,kadaptation n=32,lora r=8,linear"
        args.steps, args.speed_rounds, args.test_per_class = 30, 2, 50
    if args.workers is None:
        args.workers = 2 if not torch.cuda.is_available() and (os.cpu_count() or 1) >= 2 else 1
    return args


def run_bench(args) -> dict:
    start = time.perf_counter()
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {list(METHODS)}.")
    if args.quick:
        methods = {m: (METHODS[m][0], (1e-3,) if m != "linear" else (1e-2,)) for m in args.methods.split(",")}
    else:
        methods = {m: METHODS[m] for m in args.methods.split(",")}
    if args.adapter_lrs:
        grid = tuple(float(lr) for lr in args.adapter_lrs.split(","))
        methods = {m: (spec, grid if lrs == ADAPTER_LRS else lrs) for m, (spec, lrs) in methods.items()}
    for item in args.grid:
        name, _, values = item.rpartition("=")
        if name not in methods or not values:
            raise ValueError(f"--grid {item!r}: expected METHOD=LR,LR with METHOD one of {list(methods)}.")
        methods[name] = (methods[name][0], tuple(float(lr) for lr in values.split(",")))
    methods = {
        m: (replace(spec, model_name_or_path=args.model_name_or_path), lrs) for m, (spec, lrs) in methods.items()
    }
    jobs = [(d, int(k), int(seed)) for d in args.datasets.split(",") for k in args.shots.split(",")
            for seed in args.seeds.split(",")]  # fmt: skip
    runs, output_dir = {}, Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        threads = max(1, torch.get_num_threads() // args.workers)
        pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                   initargs=(threads,))  # fmt: skip
        results = pool.map(_run_job, [args] * len(jobs), [methods] * len(jobs), jobs)
    else:
        pool, results = None, map(_run_job, [args] * len(jobs), [methods] * len(jobs), jobs)
    try:
        for job, result in tqdm(zip(jobs, results), total=len(jobs), desc="dataset × k × seed"):
            runs[job] = result
            for r in result:
                logger.info("%s k=%s seed=%d %s: test %.4f (lr %g)", r["dataset"], r["shots"], r["seed"], r["method"],
                            r["test_accuracy"], r["chosen_lr"])  # fmt: skip
            done = [r for j in jobs if j in runs for r in runs[j]]  # progress survives an interruption
            (output_dir / "results_partial.json").write_text(json.dumps(done, indent=2))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    names = _dataset(jobs[-1][0])["train"].features["label"].names
    reference = {"lora r=8": (replace(METHODS["lora r=8"][0], model_name_or_path=args.model_name_or_path), ())}
    speed = measure_speed(args, {**methods, **reference}, names)  # workers gone: nothing runs beside it
    if "lora r=8" not in methods:
        speed["lora r=8"]["reference_only"] = True  # timed as the ratios' denominator, not benchmarked
    out = {"settings": vars(args), "runs": [r for j in jobs for r in runs[j]], "speed": speed,
           "wall_time_s": round(time.perf_counter() - start, 1)}  # fmt: skip
    write_outputs(out, output_dir)
    return out


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    _quiet()


def _quiet() -> None:
    """Keep the log to results: no per-model loading bars, reports or PEFT's deprecation notice for transformers 5."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@lru_cache(maxsize=4)
def _dataset(name: str):
    return load_image_dataset(name)


def _run_job(args, methods: dict, job: tuple[str, int, int]) -> list[dict]:
    """Every method on one (dataset, k, seed) split."""
    dataset, k, seed = job
    source = _dataset(dataset)
    names = source["train"].features["label"].names
    shots = k or args.full_shot_subset
    pool = args.validation == "pool"
    splits = few_shot(source, shots, seed=seed, test_per_class=args.test_per_class,
                      val_pool=args.val_per_class if pool else None)  # fmt: skip
    transform = image_transform(*_normalisation(args.model_name_or_path), args.resolution)
    data = [to_tensors(splits[name], transform) for name in ("train", "validation", "test")]
    label = k or f"full ({shots}/class)"
    return [{"dataset": dataset, "shots": label, "seed": seed, "method": method, **run_one(args, spec, lrs, data, names)}
            for method, (spec, lrs) in methods.items()]  # fmt: skip


def summarise(runs: list[dict]) -> list[dict]:
    rows = {}
    for r in runs:
        rows.setdefault((r["dataset"], str(r["shots"]), r["method"]), []).append(r)
    table = []
    for (dataset, shots, method), group in rows.items():
        accs = [g["test_accuracy"] for g in group]
        table.append({"dataset": dataset, "shots": shots, "method": method, "seeds": len(group),
                      "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                      "pe": statistics.mean(g["performance_efficiency"] for g in group),
                      "trainable": group[0]["trainable_parameters"], "adapter": group[0]["adapter_parameters"],
                      "bytes": group[0]["saved_bytes"], "seconds": statistics.mean(g["train_seconds"] for g in group),
                      "lrs": sorted({g["chosen_lr"] for g in group})})  # fmt: skip
    return table


def _run_key(run: dict) -> tuple:
    return run["dataset"], str(run["shots"]), run["seed"], run["method"]


_SPLIT_AND_TRAINING_SETTINGS = ("model_name_or_path", "resolution", "test_per_class", "full_shot_subset", "validation",
                                 "val_per_class", "steps", "batch_size", "train_seed")  # fmt: skip


def merge_results(results: list[dict]) -> dict:
    """Pool `kadapt bench` results of the same splits and settings that tried different learning rates, as if one grid
    held them all: per (dataset, k, seed, method) the best validation accuracy over the union wins (ties: lower
    validation loss) and the test accuracy of the run that chose it is kept. Every training run is deterministic given
    its split, method, learning rate and settings, so this equals running the union grid; learning rates found in two
    results must have the same validation loss (checked: `ValueError` otherwise).
    """
    for result in results[1:]:
        differ = {
            k for k in _SPLIT_AND_TRAINING_SETTINGS if result["settings"].get(k) != results[0]["settings"].get(k)
        }
        if differ:
            raise ValueError(f"Cannot merge runs whose settings differ in {sorted(differ)}.")
    by_key: dict[tuple, list[dict]] = {}
    for result in results:
        for run in result["runs"]:
            by_key.setdefault(_run_key(run), []).append(run)
    merged = []
    for key, runs in by_key.items():
        union, union_loss = {}, {}
        for run in runs:
            for lr, loss in run["validation_loss"].items():
                if lr in union_loss and not math.isclose(union_loss[lr], loss, rel_tol=1e-4):
                    raise ValueError(f"{key} lr {lr}: validation loss {union_loss[lr]} vs {loss}; the runs are not "
                                     "of the same splits/settings.")  # fmt: skip
                union[lr], union_loss[lr] = run["validation"][lr], loss

        def rank(run, union=union, union_loss=union_loss):
            return _validation_rank(union[str(run["chosen_lr"])], union_loss[str(run["chosen_lr"])])

        winner = max(runs, key=rank)
        merged.append({**winner, "validation": union, "validation_loss": union_loss, "merged_from": len(runs)})
    settings = {**results[0]["settings"], "merged_from": [r["settings"]["output_dir"] for r in results]}
    return {"settings": settings, "runs": merged, "speed": results[0]["speed"],
            "wall_time_s": sum(r["wall_time_s"] for r in results)}  # fmt: skip


def write_outputs(out: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(out, indent=2))
    table = summarise(out["runs"])
    lines = ["| dataset | k | method | test accuracy (mean ± std) | PE | trainable (adapter) | saved | train s | lr chosen |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in table:
        lines.append(f"| {t['dataset']} | {t['shots']} | {t['method']} | {t['mean']:.3f} ± {t['std']:.3f} "
                     f"(n={t['seeds']}) | {t['pe']:.3f} | {t['trainable']:,d} ({t['adapter']:,d}) | "
                     f"{t['bytes'] / 1024:,.0f} KiB | {t['seconds']:.1f} | {', '.join(f'{x:g}' for x in t['lrs'])} |")  # fmt: skip
    lines += [
        "",
        "| method | step (ms) | step / LoRA r=8 | memory (MiB) | memory / LoRA r=8 |",
        "|---|---|---|---|---|",
    ]
    for name, s in out["speed"].items():
        label = f"{name} (speed reference only)" if s.get("reference_only") else name
        lines.append(f"| {label} | {s['step_s'] * 1e3:.0f} | {s.get('step_vs_lora8', float('nan')):.2f} | "
                     f"{s['memory_bytes'] / 2**20:.1f} | {s.get('memory_vs_lora8', float('nan')):.2f} |")  # fmt: skip
    lines += bar_lines(out["runs"])
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    pareto_plot(table, output_dir / "pareto.png")


def bar_lines(runs: list[dict], reference: str = "lora r=8", floor: str = "linear") -> list[str]:
    """Issue #5's bar per dataset, over every few-shot (dataset, k, seed) split: each KAdaptation setting's mean
    accuracy against `reference` (paired by split: mean difference ± its standard error) and `floor`, and its adapter
    parameters as a fraction of the reference's. Met = accuracy ≥ reference, ≤ half its adapter parameters, > floor."""
    few = [r for r in runs if isinstance(r["shots"], int)]
    split = {(r["dataset"], r["shots"], r["seed"], r["method"]): r for r in few}
    out = []
    for dataset in sorted({r["dataset"] for r in few}):
        for method in sorted({r["method"] for r in few if r["method"].startswith("kadaptation")}):
            pairs = [(r, split.get((dataset, r["shots"], r["seed"], reference)), split.get((dataset, r["shots"],
                      r["seed"], floor))) for r in few if r["dataset"] == dataset and r["method"] == method]  # fmt: skip
            pairs = [(a, b, c) for a, b, c in pairs if b is not None and c is not None]
            if not pairs:
                continue
            diffs = [a["test_accuracy"] - b["test_accuracy"] for a, b, _ in pairs]
            se = f"{statistics.stdev(diffs) / math.sqrt(len(diffs)):.3f}" if len(diffs) > 1 else "n/a"
            acc, ref, low = (statistics.mean(x[i]["test_accuracy"] for x in pairs) for i in range(3))
            ratio = pairs[0][0]["adapter_parameters"] / pairs[0][1]["adapter_parameters"]
            met = ("yes" if acc >= ref and ratio <= 0.5 and acc > low else "no") if len(pairs) > 1 else "n/a (1 split)"
            out.append(f"| {dataset} | {method} | {len(pairs)} | {acc:.3f} | {ref:.3f} | {statistics.mean(diffs):+.3f} ± "
                       f"{se} | {low:.3f} | {ratio:.2f} | {met} |")  # fmt: skip
    if not out:
        return []
    return ["", f"| dataset | setting | splits | accuracy | {reference} | paired difference ± s.e. | {floor} | "
            f"adapter params / {reference} | bar met |", "|---|---|---|---|---|---|---|---|---|", *out]  # fmt: skip


def _shots_order(shots: str) -> tuple[int, int]:
    """k ascending, full shot last."""
    return (0, int(shots)) if shots.isdigit() else (1, 0)


def pareto_plot(table: list[dict], path: Path) -> None:
    """One panel per (dataset, k): test accuracy (mean ± std over seeds) against trainable parameters, log scale."""
    from ._plotting import pyplot, save

    plt = pyplot()
    panels = sorted({(t["dataset"], str(t["shots"])) for t in table}, key=lambda p: (p[0], _shots_order(p[1])))
    cols = min(2, len(panels))
    rows_ = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 3.8 * rows_), squeeze=False)
    methods = sorted({t["method"] for t in table})
    markers = "osD^v<>ph*P"
    for ax, (dataset, shots) in zip(axes.flat, panels):
        for t in table:
            if (t["dataset"], str(t["shots"])) == (dataset, shots):
                j = methods.index(t["method"])
                ax.errorbar(t["trainable"], t["mean"], yerr=t["std"], fmt=markers[j % len(markers)], color=f"C{j}",
                            label=t["method"], capsize=2)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(f"{dataset}, k = {shots}", fontsize=9)
        ax.set_xlabel("trainable parameters (head included, log scale)", fontsize=8)
        ax.set_ylabel("test accuracy (mean ± std)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7)
    save(fig, path, rect=(0, 0.04 * (1 + len(labels) // 5) / rows_, 1, 1))


def main(argv=None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    _quiet()
    out = run_bench(parse_args(argv))
    print((Path(out["settings"]["output_dir"]) / "results.md").read_text())
    return out
