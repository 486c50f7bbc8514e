"""Write `kadapt bench` records in the JSON layout of PEFT's own benchmark (`method_comparison/` in the PEFT
repository: one file per experiment with run_info, train_info and meta_info), so that the study could be proposed
there as an image-classification task.

    python benchmarks/method_comparison.py benchmarks/results/frontier.jsonl --shots 5,20 \
        --output_dir benchmarks/results/method_comparison --measure

One file per method variant, named `{method}--{model}-{variant settings}.json`. An experiment here is a variant over
every few-shot split it has records for (not one run, as in PEFT's MetaMathQA task): `train_info.metrics` holds one
entry per split (dataset, k, seed, the learning rate and alpha chosen on validation, validation and test accuracy)
and a last entry with the mean test accuracy over them. Times are sums over the splits' chosen runs (`train_time`)
and over whole grids (`total_time`); `file_size` is the saved adapter's bytes. With `--measure`, the training memory
of one step (CPU: saved activations + gradients + AdamW state, `peft_kadapt.training.bench.profiling`) and the total
parameter count are measured on a freshly built model at the records' shapes; without it they are null. Nothing is
chosen here: the records already hold the validation-chosen runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
from pathlib import Path

import torch
from transformers import AutoConfig

from peft_kadapt.config import default_target_modules
from peft_kadapt.training import Recipe, build_model, get_method, parse_variant, pos_encoding_kwargs, resolve_model
from peft_kadapt.training.bench.profiling import training_memory
from peft_kadapt.training.bench.protocol import RunRecord, normalised, read_records, study_cut


PACKAGES = ("transformers", "peft", "peft_kadapt", "datasets", "torch")


def slug(variant: str) -> str:
    """'kadaptation n=8 r=1 parametrization=legacy targets=q_proj+v_proj' -> 'n8-r1-legacy-q_proj+v_proj' (the
    experiment's name after the method)."""
    _, *pairs = variant.split()
    parts = [
        p.split("=", 1)[1] if p.startswith(("targets=", "parametrization=")) else p.replace("=", "") for p in pairs
    ]
    return "-".join(parts) or "default"


def peft_config(variant: str, settings: dict) -> dict | None:
    """The PEFT config the variant trains with, as PEFT writes it (None for methods without one: linear, full)."""
    spec = parse_variant(variant, model_name_or_path=settings["model_name_or_path"])
    method = get_method(spec.method)
    if method.peft_config is None:
        return None
    if spec.target_modules:
        targets = spec.target_modules.split(",")
    else:  # the model type's default, as build_model resolves it
        model_type = AutoConfig.from_pretrained(resolve_model(spec.model_name_or_path)).model_type
        targets = default_target_modules(model_type)
    config = method.peft_config(spec, targets).to_dict()
    return json.loads(json.dumps(config, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def measured(variant: str, settings: dict, classes: int) -> tuple[int, int]:
    """(training memory of one step in bytes, total parameters) of the variant built at the records' shapes."""
    torch.manual_seed(0)
    spec = parse_variant(variant, model_name_or_path=settings["model_name_or_path"])
    model, _ = build_model(spec, [str(i) for i in range(classes)])
    size = settings["resolution"]
    x, y = torch.randn(settings["batch_size"], 3, size, size), torch.arange(settings["batch_size"]) % classes
    memory = training_memory(model, x, y, pos_encoding_kwargs(model, size))
    return memory, sum(p.numel() for p in model.parameters())


def split_metrics(records: list[RunRecord]) -> list[dict]:
    rows = [
        {
            "dataset": r.dataset,
            "shots": r.shots,
            "seed": r.seed,
            "learning rate": r.chosen_lr,
            "alpha": r.chosen_alpha,
            "valid accuracy": r.validation_accuracy,
            "test accuracy": r.test_accuracy,
            "test images": r.test_images,
            "train time": r.train_seconds,
        }
        for r in sorted(records, key=lambda r: (r.dataset, str(r.shots), r.seed))
    ]
    mean = statistics.fmean(r.test_accuracy for r in records)
    return rows + [{"splits": len(records), "test accuracy": mean}]


def experiment(variant: str, records: list[RunRecord], measure: bool) -> dict:
    """One variant's records in PEFT's method_comparison layout."""
    settings = normalised(records[0].settings)
    memory = total = None
    if measure:  # at every dataset's resolution and class count; the largest is the experiment's peak
        shapes = set()
        for r in records:
            run = normalised(r.settings)
            shapes.add((run["resolution"], r.test_images // run["test_per_class"]))
        memory, total = max(measured(variant, {**settings, "resolution": px}, classes) for px, classes in shapes)
    method = records[0].method
    return {
        "run_info": {
            "created_at": max(r.finished for r in records),
            "total_time": round(sum(r.wall_seconds for r in records), 1),
            "experiment_name": f"{method}/{settings['model_name_or_path']}-{slug(variant)}",
            "peft_branch": importlib.metadata.version("peft"),
            "train_config": train_config(settings, records),
            "peft_config": peft_config(variant, settings),
            "error_msg": "",
        },
        "train_info": {
            "accelerator_memory_reserved_avg": None,
            "accelerator_memory_max": memory,
            "accelerator_memory_reserved_99th": None,
            "train_time": round(sum(r.train_seconds for r in records), 1),
            "file_size": int(statistics.median(r.saved_bytes for r in records)),
            "num_trainable_params": records[0].trainable_parameters,
            "num_adapter_params": records[0].adapter_parameters,
            "num_total_params": total,
            "status": "success",
            "metrics": split_metrics(records),
        },
        "meta_info": meta_info(settings, records),
    }


def train_config(settings: dict, records: list[RunRecord]) -> dict:
    grid = sorted({(g["learning_rate"], g["alpha"]) for r in records for g in r.grid}, key=str)
    return {
        "model_id": settings["model_name_or_path"],
        "dtype": "bfloat16" if settings["bf16"] else "float32",
        "resolution": {r.dataset: normalised(r.settings)["resolution"] for r in records},
        "batch_size": settings["batch_size"],
        "max_steps": settings["steps"],
        "seed": settings["train_seed"],
        "grad_norm_clip": Recipe.max_grad_norm,
        "optimizer_type": "AdamW",
        "optimizer_kwargs": {"weight_decay": Recipe.weight_decay},
        "lr_scheduler": Recipe.lr_scheduler_type,
        "warmup_steps": settings["warmup_steps"],
        "selection": "learning rate and alpha chosen per split on validation accuracy from the grid",
        "grid": [{"learning_rate": lr, "alpha": alpha} for lr, alpha in grid],
        "validation_per_class": settings["val_per_class"],
        "test_per_class": settings["test_per_class"],
    }


def meta_info(settings: dict, records: list[RunRecord]) -> dict:
    packages = {}
    for name in PACKAGES:
        try:
            packages[f"{name}-version"] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            packages[f"{name}-version"] = None
    return {
        "model_info": {"model_id": settings["model_name_or_path"]},
        "dataset_info": {
            d: {"splits": sum(r.dataset == d for r in records)} for d in sorted({r.dataset for r in records})
        },
        "package_info": packages,
        "system_info": {
            "system": platform.system(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "accelerator": "cpu",
            "recorded_on": sorted({r.machine for r in records}),
        },
    }


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+")
    p.add_argument("--shots", default=None, help="comma-separated k to keep (e.g. 5,20: the few-shot splits)")
    p.add_argument("--output_dir", default="benchmarks/results/method_comparison")
    p.add_argument("--measure", action="store_true", help="measure training memory and total parameters")
    p.add_argument(
        "--until", default=None, metavar="TIME", help="only records finished at or before this UTC time (ISO)"
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="TEXT",
        help="leave out the variants whose name contains TEXT as whole words (as tables.py --exclude; repeatable)",
    )
    args = p.parse_args(argv)
    records = [r for path in args.records for r in read_records(Path(path))]
    records = study_cut(records, args.until, args.exclude)
    if args.shots:
        keep = set(args.shots.split(","))
        records = [r for r in records if str(r.shots) in keep]
    by_variant: dict[str, list[RunRecord]] = {}
    for r in records:
        by_variant.setdefault(r.variant, []).append(r)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for variant, group in sorted(by_variant.items()):
        path = out / f"{group[0].method}--{normalised(group[0].settings)['model_name_or_path']}-{slug(variant)}.json"
        path.write_text(json.dumps(experiment(variant, group, args.measure), indent=2) + "\n")
        written.append(path)
    print(f"{len(written)} experiments written to {out}")
    return written


if __name__ == "__main__":
    main()
