"""The benchmark protocol: for one (dataset, k, sampling seed) split, every method variant's grid trained with the
training engine, one setting chosen on validation, and that model evaluated once on test. One `RunRecord` per
(split, variant).

Validation (`BenchSettings.validation`):
- `pool` (default): `val_per_class` extra labelled images per class, drawn from the training pool outside the shots,
  used only to choose. Every grid point trains on all k shots; the best on validation (ties: lower validation loss)
  is evaluated once on test.
- `shots`: validation carved from the k shots (a fifth, at least one per class, strictly few-shot); every grid point
  trains on the rest, the chosen one is retrained on all k shots and evaluated once on test.
Every run trains for the same number of steps (`steps`) with the engine's recipe, scored after the last step.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

from ..backbones import image_normalization, pos_encoding_kwargs
from ..data import few_shot, image_transform, load_image_dataset, to_tensors
from ..engine import Recipe, Scores, evaluate, fit
from ..methods import HEAD, METHODS, build_model, parse_variant


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines the splits and the training of a benchmark run (the records' identity)."""

    model_name_or_path: str
    resolution: int = 56
    test_per_class: int = 100
    full_shot_subset: int = 100
    validation: str = "pool"
    val_per_class: int = 20
    steps: int = 50
    batch_size: int = 16
    train_seed: int = 0
    warmup_steps: int = 0  # linear warm-up of the learning rate (added later: records without it had 0)


@dataclass
class Candidate:
    """One grid point: a learning rate and, for adapters, a scale (None: the variant's own)."""

    learning_rate: float
    alpha: float | None = None
    validation_accuracy: float | None = None
    validation_loss: float | None = None


@dataclass
class RunRecord:
    """One (split, variant): its grid on validation, the chosen point, and the test accuracy of the chosen model."""

    dataset: str
    shots: int | str  # k, or "full (N/class)"
    seed: int
    variant: str
    method: str
    settings: dict
    grid: list[dict]
    chosen_lr: float
    chosen_alpha: float | None
    validation_accuracy: float
    test_accuracy: float
    test_images: int
    trainable_parameters: int
    adapter_parameters: int
    saved_bytes: int
    train_seconds: float
    wall_seconds: float
    machine: str = field(default_factory=lambda: f"{platform.machine()} {torch.__version__}")
    finished: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def key(self) -> tuple:
        return record_key(self.dataset, self.shots, self.seed, self.variant, self.settings, self.grid)


def record_key(dataset, shots, seed, variant, settings: dict, grid: list[dict]) -> tuple:
    """What makes two records the same run: split, variant, settings and grid points (not their scores)."""
    points = tuple((g["learning_rate"], g["alpha"]) for g in grid)
    return dataset, str(shots), int(seed), variant, json.dumps(normalised(settings), sort_keys=True), points


def normalised(settings: dict) -> dict:
    """Settings with every field, defaults filled in: records written before a field existed keep matching."""
    return asdict(BenchSettings(**settings))


def shots_label(k: int, settings: BenchSettings) -> int | str:
    return k or f"full ({settings.full_shot_subset}/class)"


def validation_rank(scores: Scores) -> tuple[float, float]:
    """How grid points are compared: validation accuracy, ties (frequent with few images) to the lower loss."""
    return scores.accuracy, -scores.loss


@lru_cache(maxsize=4)
def cached_dataset(name: str):
    return load_image_dataset(name)


@lru_cache(maxsize=2)
def split_tensors(dataset: str, k: int, seed: int, settings: BenchSettings):
    """(train, validation, test) as (pixel_values, labels) tensors, and the class names."""
    source = cached_dataset(dataset)
    labels = source["train"].features["label"].names
    pool = settings.validation == "pool"
    splits = few_shot(
        source,
        k or settings.full_shot_subset,
        seed=seed,
        test_per_class=settings.test_per_class,
        val_pool=settings.val_per_class if pool else None,
    )
    transform = image_transform(*image_normalization(settings.model_name_or_path), settings.resolution)
    return [to_tensors(splits[name], transform) for name in ("train", "validation", "test")], labels


def saved_bytes(model, is_peft: bool) -> int:
    """Bytes of what one would ship: the adapter file, or the trainable tensors in fp32."""
    if not is_peft:
        return 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def _train(variant: str, candidate: Candidate, settings: BenchSettings, labels, x, y):
    spec = parse_variant(variant, model_name_or_path=settings.model_name_or_path)
    if candidate.alpha is not None:
        spec = replace(spec, **{"kadapt_alpha" if spec.method == "kadaptation" else "lora_alpha": candidate.alpha})
    torch.manual_seed(settings.train_seed)
    model, is_peft = build_model(spec, labels)
    extra = pos_encoding_kwargs(model, settings.resolution)
    recipe = Recipe(
        candidate.learning_rate,
        settings.steps,
        settings.batch_size,
        warmup_steps=settings.warmup_steps,
        seed=settings.train_seed,
    )
    seconds = fit(model, x, y, recipe, extra)
    return model, is_peft, extra, seconds


def run_variant(variant: str, grid: list[Candidate], data, labels, settings: BenchSettings, split: tuple) -> RunRecord:
    """Train every grid point, choose on validation, test the chosen model once (see the module doc)."""
    start = time.perf_counter()
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    kept, best = None, None
    for candidate in grid:
        model, is_peft, extra, seconds = _train(variant, candidate, settings, labels, x_tr, y_tr)
        scores = evaluate(model, x_val, y_val, extra)
        candidate.validation_accuracy, candidate.validation_loss = scores.accuracy, scores.loss
        if best is None or validation_rank(scores) > validation_rank(best):
            best, kept = scores, (candidate, model, is_peft, extra, seconds)
    chosen, model, is_peft, extra, seconds = kept
    if settings.validation == "shots":  # retrain the chosen point on all k shots
        x_all, y_all = torch.cat([x_tr, x_val]), torch.cat([y_tr, y_val])
        model, is_peft, extra, seconds = _train(variant, chosen, settings, labels, x_all, y_all)
    test = evaluate(model, x_te, y_te, extra)  # once, for the chosen model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and f"{HEAD}." in n)
    dataset, shots, seed = split
    return RunRecord(
        dataset=dataset,
        shots=shots,
        seed=seed,
        variant=variant,
        method=variant.split()[0],
        settings=asdict(settings),
        grid=[asdict(c) for c in grid],
        chosen_lr=chosen.learning_rate,
        chosen_alpha=chosen.alpha,
        validation_accuracy=best.accuracy,
        test_accuracy=test.accuracy,
        test_images=len(y_te),
        trainable_parameters=trainable,
        adapter_parameters=trainable - head,
        saved_bytes=saved_bytes(model, is_peft),
        train_seconds=round(seconds, 2),
        wall_seconds=round(time.perf_counter() - start, 2),
    )


def default_grid(variant: str, alphas: tuple[float, ...] | None = None) -> list[Candidate]:
    """The method table's learning-rate grid, crossed with `alphas` for adapter methods."""
    method = METHODS[variant.split()[0]]
    scales = alphas if (alphas and method.peft_config is not None) else (None,)
    return [Candidate(lr, alpha) for alpha in scales for lr in method.lr_grid]


def run_job(job: tuple, variant: str, grid: list[Candidate], settings: BenchSettings) -> RunRecord:
    """One variant on one (dataset, k, seed) split (the split's tensors are cached per process)."""
    dataset, k, seed = job
    data, labels = split_tensors(dataset, k, seed, settings)
    return run_variant(
        variant, [replace(c) for c in grid], data, labels, settings, (dataset, shots_label(k, settings), seed)
    )


def pending(jobs: list[tuple], grids: dict[str, list[Candidate]], settings: BenchSettings, done: set) -> list[tuple]:
    """(split, variant) pairs without a record in `done` (record keys), split-major."""
    return [
        (job, variant)
        for job in jobs
        for variant, grid in grids.items()
        if record_key(
            job[0], shots_label(job[1], settings), job[2], variant, asdict(settings), [asdict(c) for c in grid]
        )
        not in done
    ]


def read_records(path: Path) -> list[RunRecord]:
    """The records of a JSON-lines file (one `RunRecord` per line); [] when it does not exist."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(RunRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(
                    f"{path}, line {number}: not a benchmark record ({error}). Remove or repair that line."
                ) from None
    return records


def append_records(path: Path, records: list[RunRecord]) -> None:
    """Append records, one JSON line each, flushed at once (a study can stop and resume at any point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(asdict(record)) + "\n")
        f.flush()
