"""`kadapt intrinsic-dim`: measure d90 per submodule group on a model and a dataset; write JSON, markdown, a plot,
a recommended `target_modules` and a ready KAdaptation config.

Every choice is made on validation (images per class drawn outside the shots): the reference accuracy, d90 and the
recommended groups. Test accuracy is measured for every run and reported, never used. With several sampling seeds, d90
is read off the mean validation curve over seeds. Learning rates: `--lr` is the head's and θ_d's at d = `--lr_ref_d`;
for larger d the projection is scaled by sqrt(lr_ref_d / d), which with Adam is the same as scaling θ_d's learning
rate, so that a large subspace does not take larger steps in weight space (‖P Δθ_d‖ grows like sqrt(d) otherwise).
With `--reference full` every group is fine-tuned at each `--full_lr` (the head at `--lr`, as in the subspace runs),
and the learning rate with the best mean validation accuracy gives the group's reference.

Every run is appended to OUTPUT_DIR/runs.jsonl as it finishes; started again into the same folder with the same
settings, the command reuses the runs it finds there (and in a finished intrinsic_dim.json), so a sweep resumes and a
new `--full_lr` or `--dims` value trains only what is new.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..budget import parameter_report, propose_configs
from ..config import KAdaptationConfig
from ..intrinsic import DEFAULT_GROUPS, RunResult, Subspace, d90, group_parameters
from .backbones import DINOV2_SMALL_ALIAS, check_resolution, image_normalization, load_classifier, pos_encoding_kwargs
from .data import few_shot, image_transform, load_image_dataset, to_tensors
from .engine import Recipe, evaluate, fit
from .flags import (
    add_settings_flags,
    comma_floats,
    comma_ints,
    require_counts,
    require_learning_rates,
    settings_from_flags,
)
from .logs import setup_logging
from .methods import HEAD, head_prefix, is_head
from .outputs import claim_output_dir, write_atomically
from .records import append_records, read_records


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings:
    """What decides a run's outcome besides its group, d or learning rate, and seed (the records' identity; the head
    starts from the first seed)."""

    model_name_or_path: str = DINOV2_SMALL_ALIAS
    dataset_name: str = "mnist5k"
    shots: int = field(default=10, metadata={"help": "training images per class"})
    val_per_class: int = field(default=10, metadata={"help": "validation images per class (outside the shots)"})
    test_per_class: int = field(default=20, metadata={"help": "test images per class (held out; reported only)"})
    resolution: int = 56
    steps: int = field(default=50, metadata={"help": "optimiser steps per run"})
    batch_size: int = 20
    lr: float = field(default=1e-2, metadata={"help": "for the head, and for θ_d at d = --lr_ref_d"})
    lr_ref_d: int = field(default=100, metadata={"help": "d above which θ_d's step is scaled by sqrt(ref/d)"})
    head_seed: int = 0  # the first sampling seed (no flag of its own)

    @classmethod
    def from_args(cls, args: argparse.Namespace, seeds: list[int]) -> SweepSettings:
        return settings_from_flags(cls, args, SWEEP_FLAGS, head_seed=seeds[0])


SWEEP_FLAGS = tuple(f for f in SweepSettings.__dataclass_fields__ if f != "head_seed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kadapt intrinsic-dim", description=__doc__)
    # model, data, steps, batch and learning rate: the records' identity, flags made from SweepSettings
    add_settings_flags(p, SweepSettings, SWEEP_FLAGS)
    p.add_argument("--dims", default="0,10,100,1000,10000", help="comma-separated d values (0 = head only)")
    p.add_argument(
        "--group",
        action="append",
        default=None,
        metavar="NAME=REGEX",
        help="a group of modules by name regex; repeatable; default: q, k, v, output, fc1, fc2",
    )
    p.add_argument(
        "--reference",
        choices=["best", "full"],
        default="best",
        help="d90 reference: the best validation accuracy over d for the group, or full fine-tuning of the group",
    )
    p.add_argument(
        "--full_lr",
        default="1e-5,3e-5,1e-4",
        help="comma-separated learning rates for the 'full' reference; validation chooses one per group",
    )
    p.add_argument("--seeds", default="0", help="comma-separated sampling seeds (d90 from the mean curve)")
    p.add_argument("--parameter_budget", type=int, default=None, help="recommend n, r within this many parameters")
    p.add_argument("--output_dir", default="outputs/intrinsic_dim")
    return p.parse_args(argv)


def parse_groups(specs: list[str] | None) -> dict[str, str]:
    if not specs:
        return dict(DEFAULT_GROUPS)
    groups = {}
    for spec in specs:
        name, sep, regex = spec.partition("=")
        if not sep or not name or not regex:
            raise ValueError(f"--group {spec!r}: expected NAME=REGEX, e.g. --group 'query=\\.q_proj$'.")
        try:
            re.compile(regex)
        except re.error as error:
            raise ValueError(f"--group {spec!r}: {regex!r} is not a valid regular expression ({error}).") from None
        groups[name] = regex
    return groups


@dataclass
class SweepRecord:
    """One run of a sweep: a subspace run of size d ("subspace") or a full fine-tuning reference at one learning rate
    ("full"), for one group (with the regex that defined it) and sampling seed."""

    kind: str
    group: str
    regex: str
    seed: int
    accuracy: float  # validation
    test_accuracy: float
    seconds: float
    settings: dict
    d: int | None = None
    D: int | None = None
    learning_rate: float | None = None

    @property
    def key(self) -> tuple:
        return self.kind, self.group, self.d if self.kind == "subspace" else self.learning_rate, self.seed

    def report(self) -> dict:
        """The run as intrinsic_dim.json lists it (without the settings, which the file states once)."""
        return {k: v for k, v in asdict(self).items() if k != "settings" and v is not None}


def previous_runs(output_dir: Path, settings: SweepSettings, groups: dict[str, str]) -> dict[tuple, SweepRecord]:
    """Runs recorded in `output_dir` (runs.jsonl, and a finished intrinsic_dim.json) with these settings, by key:
    ("subspace", group, d, seed) or ("full", group, learning rate, seed). A group counts only with the same regex."""
    found = [r for r in read_records(output_dir / RUNS, SweepRecord) if r.settings == asdict(settings)]
    if (output_dir / "intrinsic_dim.json").exists():
        done = json.loads((output_dir / "intrinsic_dim.json").read_text())
        finished = {**{k: done["settings"].get(k) for k in SWEEP_FLAGS}, "head_seed": done["seeds"][0]}
        if finished == asdict(settings):
            runs = [{"kind": "subspace", **r} for r in done["runs"]] + done.get("reference_runs", [])
            found += [SweepRecord(**{"regex": done["groups"][r["group"]], **r, "settings": finished}) for r in runs]
    return {r.key: r for r in found if groups.get(r.group) == r.regex}


RUNS = "runs.jsonl"


def subspace_run(model, names, d, data, recipe, extra, scale: float, head: list[str]) -> tuple[float, float]:
    """Train θ_d and the head through `Subspace`; (validation, test) accuracy. The model's weights are restored."""
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in head}
    for n, p in model.named_parameters():
        p.requires_grad_(n in saved)
    sub = Subspace(model, names, d, seed=recipe.seed, scale=scale)
    try:
        fit(sub, x_tr, y_tr, recipe, extra)
        return evaluate(sub, x_val, y_val, extra).accuracy, evaluate(sub, x_te, y_te, extra).accuracy
    finally:
        _restore(model, saved)


def full_run(model, names, data, recipe, extra, head: list[str]) -> tuple[float, float]:
    """Reference: fine-tune the whole group and the head directly; (validation, test). Weights restored."""
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    chosen = set(names) | set(head)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in chosen}
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    try:
        fit(model, x_tr, y_tr, recipe, extra)
        return evaluate(model, x_val, y_val, extra).accuracy, evaluate(model, x_te, y_te, extra).accuracy
    finally:
        _restore(model, saved)


@torch.no_grad()
def _restore(model, saved: dict) -> None:
    for n, p in model.named_parameters():
        if n in saved:
            p.copy_(saved[n])
        p.requires_grad_(False)


def recommend_config(model, targets: list[str], budget: int | None) -> dict:
    """n, r, slow_rank for the recommended targets: the library defaults when they fit (and `budget` allows), else the
    most expressive setting of `peft_kadapt.budget.propose_configs` within `budget` (default: the defaults' cost)."""
    default = KAdaptationConfig(target_modules=targets)
    common = math.gcd(*(math.gcd(*model.get_submodule(m).weight.shape) for m in _modules(model, targets)))
    default_cost = parameter_report(model, default).total if common % default.n == 0 else None
    if default_cost is not None and (budget is None or default_cost <= budget):
        return {"n": default.n, "r": default.r, "slow_rank": default.slow_rank, "parameters": default_cost}
    setting, report = propose_configs(model, budget or default_cost or 20_000, targets, top=1)[0]
    return {**setting, "parameters": report.total}


def _modules(model, targets: list[str]) -> list[str]:
    return [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in targets]


@dataclass
class SweepPlan:
    """What a sweep will run, fixed (and checked) before any training."""

    args: argparse.Namespace
    groups: dict[str, str]  # name -> regex
    dims: list[int]
    full_lrs: list[float]  # the full fine-tuning reference's learning rates ([] for --reference best)
    seeds: list[int]
    source: object  # the DatasetDict
    labels: list[str]
    model: object
    transform: object
    extra: dict
    head: list[str]
    group_names: dict[str, list[str]]  # group -> parameter names
    sizes: dict[str, int]  # group -> D


def plan_sweep(args: argparse.Namespace) -> SweepPlan:
    groups = parse_groups(args.group)
    dims = sorted(set(comma_ints(args.dims, "--dims", "subspace sizes d; 0 trains the head alone, e.g. 0,10,100")))
    # checked before anything loads, also when --reference best leaves it unused
    full_lrs = comma_floats(args.full_lr, "--full_lr", "learning rates, e.g. 1e-5,1e-4")
    seeds = comma_ints(args.seeds, "--seeds", "sampling seeds, e.g. 0,1,2")
    # no full-shot mode here (validation is drawn from outside the shots), so --shots counts too
    require_counts(args, ("shots", "val_per_class", "test_per_class", "resolution", "steps", "batch_size", "lr_ref_d"))
    require_learning_rates(args, ("lr",))
    source = load_image_dataset(args.dataset_name)
    labels = source["train"].features["label"].names
    torch.manual_seed(seeds[0])
    model = load_classifier(args.model_name_or_path, labels)
    check_resolution(model.config, args.resolution)
    group_names = {g: group_parameters(model, regex) for g, regex in groups.items()}  # errors before any training
    params = dict(model.named_parameters())
    sizes = {g: sum(params[n].numel() for n in ns) for g, ns in group_names.items()}
    for g, D in sizes.items():
        if dims[-1] > D:
            raise ValueError(f"--dims: d={dims[-1]} is larger than group {g!r}'s parameter count D={D:,d}.")
    return SweepPlan(
        args=args,
        groups=groups,
        dims=dims,
        full_lrs=full_lrs if args.reference == "full" else [],
        seeds=seeds,
        source=source,
        labels=labels,
        model=model,
        transform=image_transform(*image_normalization(args.model_name_or_path), args.resolution),
        extra=pos_encoding_kwargs(model, args.resolution),
        head=[n for n, _ in model.named_parameters() if is_head(n)],
        group_names=group_names,
        sizes=sizes,
    )


def run_sweep(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    plan = plan_sweep(args)
    output_dir = Path(args.output_dir)
    with claim_output_dir(output_dir, resuming=True):  # one sweep per folder at a time; earlier runs resume
        results, reference_runs = run_planned(plan, output_dir)
        summary = summarise(plan, results, reference_runs)
        ranked = rank_groups(summary)
        recommended_targets = sorted({n.rsplit(".", 2)[-2] for g in ranked[:2] for n in plan.group_names[g]})
        out = {
            "settings": vars(args),
            "groups": plan.groups,
            "dims": plan.dims,
            "seeds": plan.seeds,
            "runs": [r.__dict__ for r in results],
            "reference_runs": reference_runs,
            "summary": summary,
            "recommended_groups": ranked[:2],
            "recommended_target_modules": recommended_targets,
            "recommended_setting": recommend_config(plan.model, recommended_targets, args.parameter_budget),
            "wall_time_s": round(time.perf_counter() - start, 1),
            "train_images": args.shots * len(plan.labels),
            "validation_images": args.val_per_class * len(plan.labels),
        }
        write_outputs(out, output_dir)
    return out


def run_planned(plan: SweepPlan, output_dir: Path) -> tuple[list[RunResult], list[dict]]:
    """Every (seed, group, d) subspace run and every reference run not recorded yet in `runs.jsonl`, each recorded as
    it finishes (a stopped sweep resumes)."""
    args, settings = plan.args, SweepSettings.from_args(plan.args, plan.seeds)
    previous = previous_runs(output_dir, settings, plan.groups)
    output_dir.mkdir(parents=True, exist_ok=True)

    def record(**run) -> SweepRecord:
        new = SweepRecord(**run, regex=plan.groups[run["group"]], settings=asdict(settings))
        append_records(output_dir / RUNS, [new])
        return new

    results, reference_runs = [], []
    for seed in tqdm(plan.seeds, desc="seeds"):
        splits = few_shot(
            plan.source, args.shots, seed=seed, test_per_class=args.test_per_class, val_pool=args.val_per_class
        )
        data = [to_tensors(splits[s], plan.transform) for s in ("train", "validation", "test")]
        for g in tqdm(plan.groups, desc="groups", leave=False):
            results += _subspace_runs(plan, g, seed, data, previous, record)
            reference_runs += [r.report() for r in _reference_runs(plan, g, seed, data, previous, record)]
    return results, reference_runs


def _subspace_runs(plan: SweepPlan, g: str, seed: int, data, previous: dict, record) -> list[RunResult]:
    args, results, head_only = plan.args, [], None
    recipe = Recipe(args.lr, args.steps, args.batch_size, weight_decay=0.0, seed=seed)
    for d in plan.dims:
        key = ("subspace", g, d, seed)
        if key not in previous:
            t = time.perf_counter()
            if d == 0 and head_only is not None:  # d = 0 trains the head alone: the same run for every group
                val, test = head_only
            else:
                scale = min(1.0, math.sqrt(args.lr_ref_d / d)) if d else 1.0
                val, test = subspace_run(
                    plan.model, plan.group_names[g], d, data, recipe, plan.extra, scale, plan.head
                )
            seconds = round(time.perf_counter() - t, 1)
            previous[key] = record(
                kind="subspace",
                group=g,
                d=d,
                D=plan.sizes[g],
                accuracy=val,
                seconds=seconds,
                test_accuracy=test,
                seed=seed,
            )
            logger.info("seed %d %s d=%d: validation %.4f, test %.4f", seed, g, d, val, test)
        r = previous[key]
        head_only = (r.accuracy, r.test_accuracy) if d == 0 else head_only
        results.append(RunResult(g, d, plan.sizes[g], r.accuracy, r.seconds, r.test_accuracy, seed))
    return results


def _reference_runs(plan: SweepPlan, g: str, seed: int, data, previous: dict, record) -> list[SweepRecord]:
    args, runs = plan.args, []
    for lr in plan.full_lrs:
        key = ("full", g, lr, seed)
        if key not in previous:
            t = time.perf_counter()
            head_lr = ((head_prefix(is_peft=False), args.lr),)  # the head trains as in every subspace run
            full = Recipe(lr, args.steps, args.batch_size, 0.0, seed=seed, prefix_learning_rates=head_lr)
            val, test = full_run(plan.model, plan.group_names[g], data, full, plan.extra, plan.head)
            seconds = round(time.perf_counter() - t, 1)
            previous[key] = record(
                kind="full", group=g, learning_rate=lr, accuracy=val, test_accuracy=test, seconds=seconds, seed=seed
            )
            logger.info("seed %d %s full fine-tuning, lr %g: validation %.4f", seed, g, lr, val)
        runs.append(previous[key])
    return runs


def summarise(plan: SweepPlan, results: list[RunResult], reference_runs: list[dict]) -> dict:
    """Per group: the mean validation curve over seeds, the reference (full fine-tuning at its validation-chosen
    learning rate, or the best subspace), d90 overall and per seed, and the test curve (reported only)."""
    summary = {}
    for g in plan.groups:
        mean = statistics.mean
        curve = [
            RunResult(g, d, plan.sizes[g], mean(r.accuracy for r in results if r.group == g and r.d == d), 0.0)
            for d in plan.dims
        ]
        per_seed, reference_lr = {}, None
        if plan.args.reference == "full":  # the learning rate with the best mean validation accuracy
            of_lr = {
                lr: mean(r["accuracy"] for r in reference_runs if (r["group"], r["learning_rate"]) == (g, lr))
                for lr in plan.full_lrs
            }
            reference_lr = max(plan.full_lrs, key=lambda lr: of_lr[lr])
            reference = of_lr[reference_lr]
            per_seed = {
                r["seed"]: r["accuracy"]
                for r in reference_runs
                if (r["group"], r["learning_rate"]) == (g, reference_lr)
            }
        else:
            reference = max(r.accuracy for r in curve)
        summary[g] = {
            "D": plan.sizes[g],
            "reference_validation_accuracy": reference,
            "reference_learning_rate": reference_lr,
            "d90": d90(curve, reference),
            "d90_per_seed": [
                d90([r for r in results if r.group == g and r.seed == s], per_seed.get(s, reference))
                for s in plan.seeds
            ],
            "validation_curve": {d: r.accuracy for d, r in zip(plan.dims, curve)},
            "test_curve": {d: mean(r.test_accuracy for r in results if r.group == g and r.d == d) for d in plan.dims},
        }
    return summary


def _head_only(entry: dict) -> float | None:
    """The head-only (d = 0) validation accuracy of a group's summary; None without a d = 0 run (keys 0 or "0" in
    JSON)."""
    curve = entry.get("validation_curve", {})
    return curve.get(0, curve.get("0"))


def _gain_over_head_only(entry: dict) -> float | None:
    """Reference minus the head-only (d = 0) validation accuracy; None without a d = 0 run."""
    head = _head_only(entry)
    return None if head is None else entry["reference_validation_accuracy"] - head


def _measured(entry: dict, fraction: float = 0.9) -> bool:
    """Whether the head alone (d = 0) stays below `fraction` of the reference, so that d90 says something about the
    group: where the head alone already reaches it (the reference gains less than 1/9 over it, or nothing), d90 is 0
    whatever the group. True without a d = 0 run."""
    head = _head_only(entry)
    return head is None or head < fraction * entry["reference_validation_accuracy"]


def rank_groups(summary: dict) -> list[str]:
    """Groups, most worth adapting first: those whose d90 measures something (the head alone stays below 90 % of the
    reference) before the others, whose d90 of 0 means the head alone already does as well, not that the group is
    easy to adapt; then the lower d90 (a d90 not reached last), then the higher reference. Works on a saved
    `intrinsic_dim.json` summary."""
    return sorted(
        summary,
        key=lambda g: (
            not _measured(summary[g]),
            summary[g]["d90"] is None,
            summary[g]["d90"] or 0,
            -summary[g]["reference_validation_accuracy"],
        ),
    )


def write_outputs(out: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(output_dir / "intrinsic_dim.json", json.dumps(out, indent=2))
    groups, dims, summary = list(out["groups"]), out["dims"], out["summary"]
    lines = [
        f"Validation accuracy (mean over sampling seeds {out['seeds']}); test accuracy in brackets, reported only.",
        "",
        "| d | " + " | ".join(groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for d in dims:
        cells = [f"{summary[g]['validation_curve'][d]:.3f} ({summary[g]['test_curve'][d]:.3f})" for g in groups]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("| **D** | " + " | ".join(f"{summary[g]['D']:,d}" for g in groups) + " |")
    lines.append(
        f"| **reference ({out['settings']['reference']}, validation)** | "
        + " | ".join(f"{summary[g]['reference_validation_accuracy']:.3f}" for g in groups)
        + " |"
    )
    if any(summary[g].get("reference_learning_rate") for g in groups):
        lrs = [summary[g]["reference_learning_rate"] for g in groups]
        lines.append(
            "| reference learning rate (chosen on validation) | " + " | ".join(f"{lr:g}" for lr in lrs) + " |"
        )
    lines.append("| **d90** | " + " | ".join(str(summary[g]["d90"]) for g in groups) + " |")
    lines.append("| d90 per seed | " + " | ".join(str(summary[g]["d90_per_seed"]) for g in groups) + " |")
    gains = [_gain_over_head_only(summary[g]) for g in groups]
    if any(x is not None for x in gains):
        lines.append(
            "| reference − head only (d = 0) | " + " | ".join("-" if x is None else f"{x:+.3f}" for x in gains) + " |"
        )
    setting = out["recommended_setting"]
    lines += [
        "",
        f"Recommended target_modules: {out['recommended_target_modules']} (groups {out['recommended_groups']}); "
        f"n={setting['n']}, r={setting['r']}, slow_rank={setting['slow_rank']}: {setting['parameters']:,d} adapter "
        "parameters.",
    ]
    write_atomically(output_dir / "intrinsic_dim.md", "\n".join(lines) + "\n")
    config = KAdaptationConfig(
        n=setting["n"],
        r=setting["r"],
        slow_rank=setting["slow_rank"],
        target_modules=out["recommended_target_modules"],
        modules_to_save=[HEAD],
    )
    config.save_pretrained(str(output_dir / "kadaptation_config"))
    plot(out, output_dir / "intrinsic_dim.png")


def plot(out: dict, path: Path) -> None:
    from .plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, entry in out["summary"].items():
        curve = sorted(entry["validation_curve"].items())
        xs = [max(d, 1) for d, _ in curve]  # d = 0 drawn at 1 on the log axis
        line = ax.plot(xs, [a for _, a in curve], marker="o", label=g)[0]
        if entry["d90"] is not None:
            ax.axvline(max(entry["d90"], 1), color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("d (subspace dimension; d = 0 drawn at 1)")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.set_title(f"local intrinsic dimension, d90 dotted (reference: {out['settings']['reference']})")
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv=None) -> dict:
    setup_logging()
    out = run_sweep(parse_args(argv))
    print((Path(out["settings"]["output_dir"]) / "intrinsic_dim.md").read_text())
    return out
