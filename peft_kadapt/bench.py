"""`kadapt bench`: methods × datasets × shots × seeds under one protocol, with accuracy, parameters, file size, time,
the ELEVATER performance-efficiency metric, step time and memory, a markdown table and a Pareto plot.

Protocol (the same for every method): for each dataset, k and sampling seed, a class-balanced few-shot split whose
validation images are carved from the k shots; every learning rate of the method's grid trains on the training
shots and is scored on validation (final epoch; no epoch selection); the best one is retrained on all k shots
(training + validation) and evaluated once on the held-out test set. Test accuracy never chooses anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import few_shot, image_transform, load_image_dataset, to_tensors
from .pretrained import DINOV2_SMALL_ALIAS
from .train import ModelArguments, _normalisation, build_model, pos_encoding_kwargs


logger = logging.getLogger(__name__)
ADAPTER_LRS = (3e-4, 1e-3, 3e-3)
METHODS = {  # name: (model arguments, learning-rate grid)
    "kadaptation": (ModelArguments(method="kadaptation"), ADAPTER_LRS),
    "kadaptation n=8": (ModelArguments(method="kadaptation", kadapt_n=8), ADAPTER_LRS),
    "kadaptation slow_rank=1": (ModelArguments(method="kadaptation", kadapt_slow_rank=1), ADAPTER_LRS),
    "lora r=8": (ModelArguments(method="lora", lora_r=8, lora_alpha=8), ADAPTER_LRS),
    "lora r=1": (ModelArguments(method="lora", lora_r=1, lora_alpha=1), ADAPTER_LRS),
    "lokr": (ModelArguments(method="lokr", lora_r=8, lora_alpha=8), ADAPTER_LRS),
    "linear": (ModelArguments(method="linear"), (1e-3, 3e-3, 1e-2)),
    "bitfit": (ModelArguments(method="bitfit"), (1e-3, 3e-3, 1e-2)),
    "full": (ModelArguments(method="full"), (1e-5, 3e-5, 1e-4)),
}


def performance_efficiency(accuracy: float, trainable: int, backbone: int) -> float:
    """ELEVATER's performance-efficiency metric: accuracy · exp(-log10(trainable / backbone + 1))."""
    return accuracy * math.exp(-math.log10(trainable / backbone + 1))


def _fit(model, x, y, lr, epochs, batch_size, seed, extra, min_steps: int = 0) -> float:
    """Train for `epochs`, or more epochs until `min_steps` optimiser steps (AdamW, cosine); returns seconds."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    per_epoch = math.ceil(len(y) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / per_epoch))
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(pixel_values=x[idx], **extra).logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
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


def run_one(args, spec: ModelArguments, lrs, data, names) -> dict:
    """Grid on validation, retrain the chosen lr on all shots, test once."""
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    val, val_loss = {}, {}
    for lr in lrs:
        torch.manual_seed(args.train_seed)
        model, _ = build_model(spec, names)
        extra = pos_encoding_kwargs(model, args.resolution)
        _fit(model, x_tr, y_tr, lr, args.epochs, args.batch_size, args.train_seed, extra, args.min_steps)
        val[lr], val_loss[lr] = _scores(model, x_val, y_val, extra)
    # a few validation images tie often: ties go to the lower validation loss
    best_lr = max(lrs, key=lambda lr: (val[lr], -val_loss[lr]))
    torch.manual_seed(args.train_seed)
    model, is_peft = build_model(spec, names)
    extra = pos_encoding_kwargs(model, args.resolution)
    seconds = _fit(model, torch.cat([x_tr, x_val]), torch.cat([y_tr, y_val]), best_lr, args.epochs, args.batch_size,
                   args.train_seed, extra, args.min_steps)  # fmt: skip
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
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--resolution", type=int, default=56)
    p.add_argument("--test_per_class", type=int, default=50)
    p.add_argument("--full_shot_subset", type=int, default=100, help="images per class used as 'full shot'")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--min_steps", type=int, default=40, help="train at least this many optimiser steps")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--train_seed", type=int, default=0)
    p.add_argument("--speed_rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="textiles, k=5, one seed, 4 methods, one learning rate each")
    p.add_argument("--output_dir", default="outputs/bench")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.shots, args.seeds = "textiles", "5", "0"
        args.methods = "kadaptation,kadaptation slow_rank=1,lora r=8,linear"
        args.epochs, args.speed_rounds, args.test_per_class = 8, 2, 50
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
    methods = {
        m: (replace(spec, model_name_or_path=args.model_name_or_path), lrs) for m, (spec, lrs) in methods.items()
    }
    transform = image_transform(*_normalisation(args.model_name_or_path), args.resolution)
    runs = []
    for dataset in args.datasets.split(","):
        source = load_image_dataset(dataset)
        names = source["train"].features["label"].names
        for k in (int(s) for s in args.shots.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                shots = k or args.full_shot_subset
                splits = few_shot(source, shots, seed=seed, test_per_class=args.test_per_class)
                data = [to_tensors(splits[name], transform) for name in ("train", "validation", "test")]
                for method, (spec, lrs) in tqdm(methods.items(), desc=f"{dataset} k={k or 'full'} seed={seed}"):
                    result = run_one(args, spec, lrs, data, names)
                    runs.append({"dataset": dataset, "shots": k or f"full ({shots}/class)", "seed": seed,
                                 "method": method, **result})  # fmt: skip
                    logger.info("%s k=%s seed=%d %s: test %.4f (lr %g)", dataset, k, seed, method,
                                result["test_accuracy"], result["chosen_lr"])  # fmt: skip
                    Path(args.output_dir).mkdir(parents=True, exist_ok=True)  # progress survives an interruption
                    (Path(args.output_dir) / "results_partial.json").write_text(json.dumps(runs, indent=2))
    speed = measure_speed(args, methods, names)
    out = {"settings": vars(args), "runs": runs, "speed": speed, "wall_time_s": round(time.perf_counter() - start, 1)}
    write_outputs(out, Path(args.output_dir))
    return out


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
        lines.append(f"| {name} | {s['step_s'] * 1e3:.0f} | {s.get('step_vs_lora8', float('nan')):.2f} | "
                     f"{s['memory_bytes'] / 2**20:.1f} | {s.get('memory_vs_lora8', float('nan')):.2f} |")  # fmt: skip
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    pareto_plot(table, output_dir / "pareto.png")


def pareto_plot(table: list[dict], path: Path) -> None:
    from ._plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    panels = sorted({(t["dataset"], t["shots"]) for t in table})
    markers = "osD^v<>ph*"
    for i, (dataset, shots) in enumerate(panels):
        rows = [t for t in table if (t["dataset"], t["shots"]) == (dataset, shots)]
        for j, t in enumerate(sorted(rows, key=lambda t: t["method"])):
            ax.errorbar(t["trainable"], t["mean"], yerr=t["std"], fmt=markers[i % len(markers)], color=f"C{j}",
                        label=t["method"] if i == 0 else None, capsize=2)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (head included, log scale)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("accuracy against parameters; marker = " + ", ".join(f"{d} k={k}" for d, k in panels), fontsize=8)
    ax.legend(fontsize=7)
    save(fig, path)


def main(argv=None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import transformers

    transformers.logging.set_verbosity_error()
    out = run_bench(parse_args(argv))
    print((Path(out["settings"]["output_dir"]) / "results.md").read_text())
    return out
