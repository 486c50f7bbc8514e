"""`kadapt intrinsic-dim`: measure d90 per submodule group on a model and a dataset; write JSON, markdown, a plot,
a recommended `target_modules` and a ready KAdaptation config."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import few_shot, image_transform, load_image_dataset, to_tensors
from .intrinsic import DEFAULT_GROUPS, RunResult, d90, group_parameters, train_group_fully, train_subspace
from .pretrained import DINOV2_SMALL_ALIAS, resolve_model


logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kadapt intrinsic-dim", description=__doc__)
    p.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    p.add_argument("--dataset_name", default="mnist5k")
    p.add_argument("--shots", type=int, default=10, help="training images per class")
    p.add_argument("--test_per_class", type=int, default=20, help="evaluation images per class (held out)")
    p.add_argument("--resolution", type=int, default=56)
    p.add_argument("--dims", default="0,10,100,1000,10000", help="comma-separated d values (0 = head only)")
    p.add_argument("--group", action="append", default=None, metavar="NAME=REGEX",
                   help="a group of modules by name regex; repeatable; default: q, k, v, output, fc1, fc2")  # fmt: skip
    p.add_argument("--reference", choices=["best", "full"], default="best",
                   help="d90 reference: the best accuracy the sweep saw for the group, or full fine-tuning of it")  # fmt: skip
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-2, help="for θ_d and the head")
    p.add_argument("--full_lr", type=float, default=1e-4, help="for the 'full' reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/intrinsic_dim")
    return p.parse_args(argv)


def run_sweep(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForImageClassification

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    groups = DEFAULT_GROUPS if not args.group else dict(g.split("=", 1) for g in args.group)
    dims = sorted({int(x) for x in args.dims.split(",")})
    source = load_image_dataset(args.dataset_name)
    splits = few_shot(source, args.shots, seed=args.seed, val_shots=1, test_per_class=args.test_per_class)
    names = splits["train"].features["label"].names
    model = AutoModelForImageClassification.from_pretrained(
        resolve_model(args.model_name_or_path), num_labels=len(names), ignore_mismatched_sizes=True
    )
    from .train import _normalisation, pos_encoding_kwargs

    transform = image_transform(*_normalisation(args.model_name_or_path), args.resolution)
    x_train, y_train = to_tensors(splits["train"], transform)
    x_test, y_test = to_tensors(splits["test"], transform)
    extra = pos_encoding_kwargs(model, args.resolution)
    head = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    group_names = {g: group_parameters(model, regex) for g, regex in groups.items()}  # errors before any training
    params = dict(model.named_parameters())
    sizes = {g: sum(params[n].numel() for n in ns) for g, ns in group_names.items()}
    for g, D in sizes.items():
        if dims[-1] > D:
            raise ValueError(f"d={dims[-1]} is larger than group {g!r}'s parameter count D={D:,d}.")

    def batches():
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            yield {"pixel_values": x_train[idx], "labels": y_train[idx], **extra}

    def evaluate(forward) -> float:
        correct = 0
        for i in range(0, len(y_test), 100):
            logits = forward(pixel_values=x_test[i : i + 100], **extra).logits
            correct += (logits.argmax(-1) == y_test[i : i + 100]).sum().item()
        return correct / len(y_test)

    results: list[RunResult] = []
    references = {}
    for g in tqdm(groups, desc="groups"):
        for d in tqdm(dims, desc=f"{g}: d", leave=False):
            t = time.perf_counter()
            head_only = next((r for r in results if r.d == 0), None)
            if d == 0 and head_only is not None:  # d = 0 trains the head alone: the same run for every group
                results.append(RunResult(g, 0, sizes[g], head_only.accuracy, 0.0))
                continue
            torch.manual_seed(args.seed)
            acc = train_subspace(model, group_names[g], d, batches, evaluate, head, args.epochs, args.lr, args.seed)
            results.append(RunResult(g, d, sizes[g], acc, round(time.perf_counter() - t, 1)))
            logger.info("%s d=%d: accuracy %.4f", g, d, acc)
        if args.reference == "full":
            torch.manual_seed(args.seed)
            references[g] = train_group_fully(model, group_names[g], batches, evaluate, head, args.epochs,
                                              args.full_lr)  # fmt: skip
        else:
            references[g] = max(r.accuracy for r in results if r.group == g)
    summary = {g: {"D": sizes[g], "reference_accuracy": references[g],
                   "d90": d90([r for r in results if r.group == g], references[g])} for g in groups}  # fmt: skip
    ranked = sorted(groups, key=lambda g: (summary[g]["d90"] is None, summary[g]["d90"] or 0, -references[g]))
    # target-module names: the last name component of the modules each recommended group covers
    recommended = sorted({n.rsplit(".", 2)[-2] for g in ranked[:2] for n in group_names[g]})
    # the paper's n = 32 unless it does not divide every recommended layer: then its largest divisor that does
    common = 0
    for module in {n.rsplit(".", 1)[0] for g in ranked[:2] for n in group_names[g]}:
        weight = params[f"{module}.weight"]
        common = math.gcd(common, *weight.shape)
    n_kron = max(m for m in range(1, 33) if common % m == 0)
    out = {"settings": vars(args), "reference": args.reference, "groups": groups, "dims": dims,
           "runs": [r.__dict__ for r in results], "summary": summary, "recommended_groups": ranked[:2],
           "recommended_target_modules": recommended, "recommended_n": n_kron, "wall_time_s": round(time.perf_counter() - start, 1),
           "train_images": len(y_train), "test_images": len(y_test)}  # fmt: skip
    write_outputs(out, Path(args.output_dir))
    return out


def write_outputs(out: dict, output_dir: Path) -> None:
    from .config import KAdaptationConfig

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "intrinsic_dim.json").write_text(json.dumps(out, indent=2))
    groups, dims = list(out["groups"]), out["dims"]
    acc = {(r["group"], r["d"]): r["accuracy"] for r in out["runs"]}
    lines = ["| d | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    lines += [f"| {d} | " + " | ".join(f"{acc[(g, d)]:.3f}" for g in groups) + " |" for d in dims]
    lines.append("| **D** | " + " | ".join(f"{out['summary'][g]['D']:,d}" for g in groups) + " |")
    lines.append(f"| **reference ({out['reference']})** | "
                 + " | ".join(f"{out['summary'][g]['reference_accuracy']:.3f}" for g in groups) + " |")  # fmt: skip
    lines.append("| **d90** | " + " | ".join(str(out["summary"][g]["d90"]) for g in groups) + " |")
    (output_dir / "intrinsic_dim.md").write_text("\n".join(lines) + "\n")
    config = KAdaptationConfig(n=out["recommended_n"], target_modules=out["recommended_target_modules"],
                               modules_to_save=["classifier"])  # fmt: skip
    config.save_pretrained(str(output_dir / "kadaptation_config"))
    plot(out, output_dir / "intrinsic_dim.png")


def plot(out: dict, path: Path) -> None:
    from ._plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for g in out["groups"]:
        runs = sorted((r["d"], r["accuracy"]) for r in out["runs"] if r["group"] == g)
        xs = [max(d, 1) for d, _ in runs]  # d = 0 drawn at 1 on the log axis
        line = ax.plot(xs, [a for _, a in runs], marker="o", label=g)[0]
        d = out["summary"][g]["d90"]
        if d is not None:
            ax.axvline(max(d, 1), color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("d (subspace dimension; d = 0 drawn at 1)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"local intrinsic dimension, d90 dotted (reference: {out['reference']})")
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv=None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    out = run_sweep(parse_args(argv))
    print((Path(out["settings"]["output_dir"]) / "intrinsic_dim.md").read_text())
    print("recommended target_modules:", out["recommended_target_modules"])
    return out
