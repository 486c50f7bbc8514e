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

Grid edges (`BenchSettings.extend_edges`, default 0): when validation chooses a point on the edge of the grid (the
largest or smallest learning rate among the points with its alpha, or the largest or smallest alpha among the points
with its learning rate), the neighbour one grid step further out is trained too, and the choice is made again; at
most `extend_edges` such rounds. Only validation decides; test still sees the chosen model once. A record made
without extension can be topped up (`run_variant(prior=...)`): its grid's scores and test accuracy are reused, only
the new points train, and the chosen model is tested only when the choice moves to a new point.

Interruptions: every grid point scored is kept at once in a file of its own run (`grid_points_path`, in the bench's
output folder) until the run's record is written, so a run stopped halfway resumes at its next grid point. When
validation then chooses a point scored before the stop, that point trains again (the same seed, data order and
steps give the same model) to be tested once.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

from ..backbones import DINOV2_SMALL_ALIAS, image_normalization, pos_encoding_kwargs
from ..data import few_shot, image_transform, load_image_dataset, to_tensors
from ..engine import Recipe, evaluate, fit
from ..methods import METHODS, build_model, canonical_variant, head_prefix, is_head, parse_variant, with_alpha
from ..records import append_lines
from ..records import read_records as read_typed_records


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines the splits and the training of a benchmark run (the records' identity). `kadapt bench`
    makes its flags from these fields (`FLAGS`): type, default and help are written here only."""

    model_name_or_path: str = DINOV2_SMALL_ALIAS
    resolution: int = 56  # per dataset, from --resolution (a size or auto)
    test_per_class: int = field(default=100, metadata={"help": "test images per class (held out; reported only)"})
    full_shot_subset: int = field(default=100, metadata={"help": "images per class used as 'full shot' (k = 0)"})
    validation: str = field(
        default="pool",
        metadata={
            "choices": ("pool", "shots"),
            "help": "pool: extra images outside the shots; shots: carved from the shots, then retrain",
        },
    )
    val_per_class: int = field(default=20, metadata={"help": "validation images per class with --validation pool"})
    steps: int = field(default=50, metadata={"help": "optimiser steps per training run, for every method"})
    batch_size: int = 16
    train_seed: int = field(default=0, metadata={"help": "seed of initialisation and data order"})
    # (added later: records without it had 0)
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps (then cosine)"})
    # (added later: 0 before)
    extend_edges: int = field(
        default=0,
        metadata={
            "help": "rounds of grid extension: when validation chooses a point on the grid's edge (learning rate or "
            "alpha), also train the point one grid step further out, and choose again (records made with fewer "
            "rounds are topped up)"
        },
    )
    # (added later: records without it were fp32)
    bf16: bool = field(
        default=False, metadata={"help": "forward passes under bfloat16 autocast (fp32 weights), as Trainer's --bf16"}
    )
    # (added later: records without it had None)
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "flag": "head_lr",
            "help": "learning rate of the classification head, apart from the grid's rate of the rest (adapter, "
            "biases, backbone); default: the head trains at the grid's rate. Not for the linear probe (its rate is "
            "the head's)",
        },
    )
    # what a local image folder and a local model folder held (file names, sizes, modification times), so that
    # changed inputs run again; None for the offline datasets, the offline backbone and Hub ids, which their names pin
    # (added later: records without them had None)
    data_fingerprint: str | None = None
    model_fingerprint: str | None = None


# the fields that are flags of `kadapt bench` (the others are derived: resolution per dataset, fingerprints)
FLAGS = tuple(
    f for f in BenchSettings.__dataclass_fields__ if f not in ("resolution", "data_fingerprint", "model_fingerprint")
)


def folder_fingerprint(path: str) -> str | None:
    """A short hash of every file under a local folder (relative path, size, modification time); None otherwise."""
    import hashlib
    import os

    if not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    for here, dirs, names in sorted(os.walk(path, followlinks=True)):
        dirs.sort()
        for name in sorted(names):
            stat = os.stat(os.path.join(here, name))
            digest.update(
                f"{os.path.relpath(os.path.join(here, name), path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


@dataclass
class Candidate:
    """One grid point: a learning rate and, for adapters, a scale (None: the variant's own)."""

    learning_rate: float
    alpha: float | None = None
    validation_accuracy: float | None = None
    validation_loss: float | None = None
    extension: bool = False  # added beyond the grid because validation chose its edge (not part of the record key)


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

    def __post_init__(self):
        # KAdaptation variants name their parametrization since it exists; records without it were written before,
        # when every KAdaptation layer was what is now "legacy"
        self.variant = canonical_variant(self.variant, "legacy")

    @property
    def key(self) -> tuple:
        return record_key(self.dataset, self.shots, self.seed, self.variant, self.settings, self.grid)


def record_key(dataset, shots, seed, variant, settings: dict, grid: list[dict]) -> tuple:
    """What makes two records the same run: split, variant, settings and grid points (not their scores, nor the points
    added by edge extension, which the settings' `extend_edges` determines)."""
    points = tuple((g["learning_rate"], g["alpha"]) for g in grid if not g.get("extension"))
    return dataset, str(shots), int(seed), variant, json.dumps(normalised(settings), sort_keys=True), points


def normalised(settings: dict) -> dict:
    """Settings with every field, defaults filled in: records written before a field existed keep matching."""
    return asdict(BenchSettings(**settings))


def shots_label(k: int, settings: BenchSettings) -> int | str:
    return k or f"full ({settings.full_shot_subset}/class)"


def validation_rank(candidate: Candidate) -> tuple[float, float]:
    """How grid points are compared: validation accuracy, ties (frequent with few images) to the lower loss."""
    return candidate.validation_accuracy, -candidate.validation_loss


@lru_cache(maxsize=4)
def cached_dataset(name: str, fingerprint: str | None = None):
    """`load_image_dataset(name)`, read once per process for as long as a local folder's content is the same."""
    return load_image_dataset(name)


def draw_split(dataset: str, k: int, seed: int, settings: BenchSettings):
    """The protocol's split of `dataset` (k = 0: the full-shot subset) as a `DatasetDict` of train, validation, test."""
    return few_shot(
        cached_dataset(dataset, settings.data_fingerprint),
        k or settings.full_shot_subset,
        seed=seed,
        test_per_class=settings.test_per_class,
        val_pool=settings.val_per_class if settings.validation == "pool" else None,
    )


def check_split(dataset: str, k: int, settings: BenchSettings) -> None:
    """Raise before any training if `dataset` cannot give the k-shot split `settings` ask for (the class sizes it
    needs do not depend on the seed), naming the flags that change what it needs."""
    try:
        draw_split(dataset, k, 0, settings)
    except ValueError as e:
        size = "--shots" if k else "--full_shot_subset"
        raise ValueError(
            f"{dataset} at k={shots_label(k, settings)}: {e} In `kadapt bench`: lower {size}, --test_per_class or "
            f"--val_per_class, or run {dataset} without this k. Nothing was trained."
        ) from e


@lru_cache(maxsize=2)
def split_tensors(dataset: str, k: int, seed: int, settings: BenchSettings):
    """(train, validation, test) as (pixel_values, labels) tensors, and the class names."""
    splits = draw_split(dataset, k, seed, settings)
    labels = splits["train"].features["label"].names
    transform = image_transform(*image_normalization(settings.model_name_or_path), settings.resolution)
    return [to_tensors(splits[name], transform) for name in ("train", "validation", "test")], labels


def saved_bytes(model, is_peft: bool) -> int:
    """Bytes of what one would ship: the adapter file, or the trainable tensors in fp32."""
    if not is_peft:
        return 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def _train(variant: str, candidate: Candidate, settings: BenchSettings, labels, x, y, device: str):
    spec = parse_variant(variant, model_name_or_path=settings.model_name_or_path)
    if candidate.alpha is not None:
        spec = with_alpha(spec, candidate.alpha)
    torch.manual_seed(settings.train_seed)
    try:
        model, is_peft = build_model(spec, labels)
    except ValueError as error:  # a setting the method's config refuses: name the variant it came from
        raise ValueError(f"--methods variant {variant!r}: {error}") from error
    model.to(device)
    extra = pos_encoding_kwargs(model, settings.resolution)
    head = settings.head_learning_rate
    recipe = Recipe(
        candidate.learning_rate,
        settings.steps,
        settings.batch_size,
        warmup_steps=settings.warmup_steps,
        seed=settings.train_seed,
        bf16=settings.bf16,
        # the linear probe's head rate is its grid point
        prefix_learning_rates=((head_prefix(is_peft), head),) if head is not None and spec.method != "linear" else (),
    )
    seconds = fit(model, x, y, recipe, extra)
    return model, is_peft, extra, seconds


def _beyond(value: float, values: list[float]) -> list[float]:
    """One geometric grid step past `value` when it is the largest or smallest of `values` (at least two)."""
    if len(values) < 2:
        return []
    if value == values[-1]:
        return [float(f"{value * values[-1] / values[-2]:.3g}")]
    if value == values[0]:
        return [float(f"{value * values[0] / values[1]:.3g}")]
    return []


def edge_neighbours(chosen: Candidate, points: list[Candidate]) -> list[Candidate]:
    """The untried points one grid step beyond `chosen` along each axis on whose edge it lies (see the module doc)."""
    lrs = sorted({c.learning_rate for c in points if c.alpha == chosen.alpha})
    out = [Candidate(lr, chosen.alpha, extension=True) for lr in _beyond(chosen.learning_rate, lrs)]
    if chosen.alpha is not None:
        alphas = sorted({c.alpha for c in points if c.learning_rate == chosen.learning_rate})
        out += [Candidate(chosen.learning_rate, a, extension=True) for a in _beyond(chosen.alpha, alphas)]
    tried = {(c.learning_rate, c.alpha) for c in points}
    return [c for c in out if (c.learning_rate, c.alpha) not in tried]


def grid_points_path(folder: Path, key: tuple) -> Path:
    """The file in `folder` that keeps the scored grid points of the unfinished run whose record key is `key`."""
    return Path(folder) / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.jsonl"


def read_grid_points(path: Path | None) -> dict[tuple, dict]:
    """The grid points an interrupted run scored, by (learning rate, alpha); a line the interruption cut short is
    left out (that point trains again)."""
    points = {}
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                point = json.loads(line)
            except json.JSONDecodeError:
                continue
            points[point["learning_rate"], point["alpha"]] = point
    return points


class _GridSearch:
    """The points scored so far on validation, the best of them, and the model of the best one when it was trained
    here (None when its score came from a prior record or from before an interruption). Each point trained here is
    appended to `grid_points` (a file, or None) as soon as it is scored."""

    def __init__(self, variant, settings: BenchSettings, labels, data, device: str, prior, grid_points):
        self.variant, self.settings, self.labels, self.data, self.device = variant, settings, labels, data, device
        self.grid_points, self.resumed = grid_points, read_grid_points(grid_points)
        self.known = {(g["learning_rate"], g["alpha"]): g for g in prior.grid} if prior else {}
        self.known.update(self.resumed)
        self.points: list[Candidate] = []
        self.best: Candidate | None = None
        self.kept = None  # (model, is_peft, extra, seconds) of the best point, when trained here

    def score(self, candidates: list[Candidate]) -> None:
        (x_tr, y_tr), (x_val, y_val), _ = self.data
        for candidate in candidates:
            recorded = self.known.get((candidate.learning_rate, candidate.alpha))
            trained = None
            if recorded is not None:
                candidate.validation_accuracy = recorded["validation_accuracy"]
                candidate.validation_loss = recorded["validation_loss"]
            else:
                start = time.perf_counter()
                model, is_peft, extra, seconds = _train(
                    self.variant, candidate, self.settings, self.labels, x_tr, y_tr, self.device
                )
                scores = evaluate(model, x_val, y_val, extra, bf16=self.settings.bf16)
                candidate.validation_accuracy, candidate.validation_loss = scores.accuracy, scores.loss
                trained = (model, is_peft, extra, seconds)
                if self.grid_points is not None:
                    point = {**asdict(candidate), "wall_seconds": round(time.perf_counter() - start, 2)}
                    append_lines(self.grid_points, [json.dumps(point)])
            self.points.append(candidate)
            if self.best is None or validation_rank(candidate) > validation_rank(self.best):
                self.best, self.kept = candidate, trained


def run_variant(
    variant: str,
    grid: list[Candidate],
    data,
    labels,
    settings: BenchSettings,
    split: tuple,
    prior: RunRecord | None = None,
    device: str = "cpu",
    grid_points: Path | None = None,
) -> RunRecord:
    """Train every grid point, choose on validation (extending the grid at its edges when the settings ask), test the
    chosen model once (see the module doc). `prior`: the same run recorded with fewer extension rounds, whose scores
    and test accuracy are reused. `device`: where to train and evaluate (not part of the record's identity).
    `grid_points`: the file that keeps the points scored so far, from which an interrupted run resumes."""
    start = time.perf_counter()
    search = _GridSearch(variant, settings, labels, data, device, prior, grid_points)
    search.score(grid)
    for _ in range(settings.extend_edges):
        more = edge_neighbours(search.best, search.points)
        if not more:
            break
        search.score(more)
    best, grid_dicts = search.best, [asdict(c) for c in search.points]
    # the wall time of the whole run: this process, the prior record's, and the points scored before an interruption
    earlier = (prior.wall_seconds if prior else 0.0) + sum(g["wall_seconds"] for g in search.resumed.values())
    chosen = (best.learning_rate, best.alpha)
    if search.kept is None and prior is not None and chosen == (prior.chosen_lr, prior.chosen_alpha):
        # the prior record's choice stands: its test accuracy is reused, nothing is tested again
        return replace(
            prior,
            settings=asdict(settings),
            grid=grid_dicts,
            wall_seconds=round(earlier + time.perf_counter() - start, 2),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data
    if settings.validation == "shots":  # retrain the chosen point on all k shots
        x_all, y_all = torch.cat([x_tr, x_val]), torch.cat([y_tr, y_val])
        model, is_peft, extra, seconds = _train(variant, best, settings, labels, x_all, y_all, device)
    elif search.kept is not None:
        model, is_peft, extra, seconds = search.kept
    else:  # chosen among the points scored before an interruption: train it again (the same model) to test it
        assert chosen in search.resumed, "the chosen point was neither trained here nor recorded"
        model, is_peft, extra, seconds = _train(variant, best, settings, labels, x_tr, y_tr, device)
    test = evaluate(model, x_te, y_te, extra, bf16=settings.bf16)  # once, for the chosen model
    wall = earlier + time.perf_counter() - start
    return _record(variant, split, settings, grid_dicts, best, test, len(y_te), model, is_peft, seconds, wall)


def _record(variant, split, settings, grid_dicts, best, test, test_images, model, is_peft, seconds, wall) -> RunRecord:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and is_head(n))
    dataset, shots, seed = split
    return RunRecord(
        dataset=dataset,
        shots=shots,
        seed=seed,
        variant=variant,
        method=variant.split()[0],
        settings=asdict(settings),
        grid=grid_dicts,
        chosen_lr=best.learning_rate,
        chosen_alpha=best.alpha,
        validation_accuracy=best.validation_accuracy,
        test_accuracy=test.accuracy,
        test_images=test_images,
        trainable_parameters=trainable,
        adapter_parameters=trainable - head,
        saved_bytes=saved_bytes(model, is_peft),
        train_seconds=round(seconds, 2),
        wall_seconds=round(wall, 2),
    )


def default_grid(variant: str, alphas: tuple[float, ...] | None = None) -> list[Candidate]:
    """The method table's learning-rate grid, crossed with `alphas` for KAdaptation, LoRA and LoKr, and with a peer's
    own scales (`alpha_grid`) unless the variant writes its scale."""
    method = METHODS[variant.split()[0]]
    if method.searches_alphas:
        scales = alphas or ()
    else:  # a peer: its own scales, unless the variant writes one (a method without a scale has none)
        written = re.search(rf"(^|\s){method.alpha_field}=", variant) if method.alpha_field else True
        scales = () if written else method.alpha_grid
    return [Candidate(lr, alpha) for alpha in (scales or (None,)) for lr in method.lr_grid]


def run_job(
    job: tuple,
    variant: str,
    grid: list[Candidate],
    settings: BenchSettings,
    prior: RunRecord | None = None,
    device: str = "cpu",
    grid_points_dir: Path | None = None,
) -> RunRecord:
    """One variant on one (dataset, k, seed) split (the split's tensors are cached per process). `grid_points_dir`:
    where the scored grid points of unfinished runs are kept (`grid_points_path`); None: not kept."""
    dataset, k, seed = job
    data, labels = split_tensors(dataset, k, seed, settings)
    points = grid_points_path(grid_points_dir, job_key(job, variant, grid, settings)) if grid_points_dir else None
    return run_variant(
        variant,
        [replace(c) for c in grid],
        data,
        labels,
        settings,
        (dataset, shots_label(k, settings), seed),
        prior,
        device,
        points,
    )


def job_key(job: tuple, variant: str, grid: list[Candidate], settings: BenchSettings) -> tuple:
    """The record key the run of `variant` on the split `job` = (dataset, k, seed) will have."""
    dataset, k, seed = job
    return record_key(dataset, shots_label(k, settings), seed, variant, asdict(settings), [asdict(c) for c in grid])


def pending(
    jobs: list[tuple], grids: dict[str, list[Candidate]], settings: dict[str, BenchSettings], done: set
) -> list[tuple]:
    """(split, variant) pairs without a record in `done` (record keys), split-major; `settings` by dataset."""
    return [
        (job, variant)
        for job in jobs
        for variant, grid in grids.items()
        if job_key(job, variant, grid, settings[job[0]]) not in done
    ]


def _rounds(record: RunRecord) -> int:
    return normalised(record.settings)["extend_edges"]


def _key_with_rounds(record: RunRecord, rounds: int) -> tuple:
    settings = {**normalised(record.settings), "extend_edges": rounds}
    return record_key(record.dataset, record.shots, record.seed, record.variant, settings, record.grid)


def priors(records: list[RunRecord], settings: BenchSettings) -> dict[tuple, RunRecord]:
    """Records that edge extension can top up (the same run with fewer extension rounds than `settings`), by the key
    the topped-up record will have; the most extended one where there are several."""
    fewer = [r for r in records if _rounds(r) < settings.extend_edges]
    return {_key_with_rounds(r, settings.extend_edges): r for r in superseding(fewer)}


def superseding(records: list[RunRecord]) -> list[RunRecord]:
    """One record per run: where a run was topped up by edge extension, only the most extended record."""
    latest: dict[tuple, RunRecord] = {}
    for r in records:
        key = _key_with_rounds(r, 0)
        if key not in latest or _rounds(latest[key]) <= _rounds(r):
            latest[key] = r
    return list(latest.values())


def names(variant: str, text: str) -> bool:
    """Whether `variant` contains `text` not as part of a longer word: `vera` names VeRA's variants but not PVeRA's,
    `lora` not VB-LoRA's or TinyLoRA's; `parametrization=legacy` and `targets=` match as they read."""
    before = r"(?<!\w)" if re.match(r"\w", text) else ""
    after = r"(?!\w)" if re.search(r"\w$", text) else ""
    return re.search(before + re.escape(text) + after, variant) is not None


def study_cut(records: list[RunRecord], until: str | None = None, exclude=()) -> list[RunRecord]:
    """One record per run (`superseding`) of those finished at or before `until` (ISO time, read as UTC: a table of a
    study that still appends records is recomputed as it was), without the variants that `names` a text of
    `exclude`."""
    if until:
        cut = datetime.fromisoformat(until).replace(tzinfo=timezone.utc)
        records = [r for r in records if datetime.fromisoformat(r.finished) <= cut]
    return [r for r in superseding(records) if not any(names(r.variant, text) for text in exclude)]


def read_records(path: Path) -> list[RunRecord]:
    """The benchmark records of a JSON-lines file; [] when it does not exist."""
    return read_typed_records(path, RunRecord)
