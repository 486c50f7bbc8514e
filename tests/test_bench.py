"""`kadapt bench` end to end on a tiny ViT (the CI smoke version of the benchmark), its protocol and its report."""

import json
import math

import pytest

from peft_kadapt.training.bench.protocol import RunRecord, read_records
from peft_kadapt.training.bench.report import mean_interval, paired_differences
from peft_kadapt.training.cli import main as kadapt
from peft_kadapt.training.methods import METHODS


def bench_args(backbone, out, *extra):
    return [
        "bench",
        "--model_name_or_path",
        backbone,
        "--datasets",
        "digits",
        "--resolution",
        "32",
        "--steps",
        "2",
        "--test_per_class",
        "7",
        "--val_per_class",
        "3",
        "--speed_rounds",
        "1",
        "--output_dir",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_smoke_run_writes_records_table_plot_and_speed_and_resumes(tiny_backbone, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = bench_args(
        tiny_backbone,
        out,
        "--shots",
        "5,0",
        "--full_shot_subset",
        "12",
        "--seeds",
        "0,1",
        "--methods",
        "kadaptation n=8,lora r=8,linear,bitfit",
        "--workers",
        "2",
    )
    kadapt(args)
    records = read_records(out / "records.jsonl")
    assert len(records) == 2 * 2 * 4  # shots x seeds x variants
    # a KAdaptation variant is recorded with its parametrization named
    assert {r.variant for r in records} == {
        "kadaptation n=8 parametrization=lora_matched",
        "lora r=8",
        "linear",
        "bitfit",
    }
    for r in records:
        assert [g["learning_rate"] for g in r.grid] == list(METHODS[r.method].lr_grid)
        best = max(r.grid, key=lambda g: (g["validation_accuracy"], -g["validation_loss"]))
        assert r.chosen_lr == best["learning_rate"]  # best validation accuracy, ties to the lower validation loss
        assert 0 <= r.test_accuracy <= 1 and r.saved_bytes > 0 and r.test_images == 70
    assert {r.shots for r in records} == {5, "full (12/class)"}
    speed = json.loads((out / "speed.json").read_text())
    assert speed["lora r=8"]["step_ratio"] == 1.0
    table = (out / "results.md").read_text()
    assert (
        "| digits | 32 | 5 | kadaptation n=8 parametrization=lora_matched |" in table
        and "± " in table
        and "step / lora r=8" in table
    )
    assert "Training step time and memory (32 px, batch 16, cpu):" in table
    assert (out / "pareto.png").stat().st_size > 1000

    import peft_kadapt.training.bench.protocol as protocol

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(protocol, "fit", no_training)
    kadapt([*args[:-1], "1"])  # the same settings, one worker: everything is recorded already
    assert len(read_records(out / "records.jsonl")) == 16


@pytest.mark.parametrize(
    "validation, grid, expected, trained",
    [
        (
            "pool",
            [],
            [30, 30, 30, 70],
            [50, 50, 50],
        ),  # 3 lrs on the 3-per-class pool, then test once on the kept model
        ("pool", ["--adapter_lrs", "1e-3,1e-2"], [30, 30, 70], [50, 50]),  # a user grid replaces the adapters' grid
        ("pool", ["--grid", "lora r=8=1e-2"], [30, 70], [50]),  # or one variant's
        ("pool", ["--grid", "lora r=8=1e-2", "--alphas", "1,4"], [30, 30, 70], [50, 50]),  # alpha x lr
        ("shots", [], [10, 10, 10, 70], [40, 40, 40, 50]),
    ],  # 1 shot per class carved out; retrained on all 5, tested once
)
def test_validation_chooses_and_test_is_used_once(
    tiny_backbone, tmp_path, monkeypatch, validation, grid, expected, trained
):
    import peft_kadapt.training.bench.protocol as protocol

    scored, fits = [], []
    real_evaluate, real_fit = protocol.evaluate, protocol.fit

    def evaluate_spy(model, x, y, extra, **kwargs):
        scored.append(len(y))
        return real_evaluate(model, x, y, extra, **kwargs)

    def fit_spy(model, x, y, *a, **k):
        fits.append(len(y))
        return real_fit(model, x, y, *a, **k)

    monkeypatch.setattr(protocol, "evaluate", evaluate_spy)
    monkeypatch.setattr(protocol, "fit", fit_spy)
    kadapt(
        bench_args(
            tiny_backbone,
            tmp_path / "out",
            "--shots",
            "5",
            "--seeds",
            "0",
            "--methods",
            "lora r=8",
            "--validation",
            validation,
            "--workers",
            "1",
            *grid,
        )
    )
    assert scored == expected
    assert fits == trained  # pool: each point trains on all 5 shots per class, no retraining; shots: on 4, then all 5
    (record,) = read_records(tmp_path / "out" / "records.jsonl")
    if "--alphas" in grid:
        assert [g["alpha"] for g in record.grid] == [1.0, 4.0] and record.chosen_alpha in (1.0, 4.0)


def test_speed_ratios_have_their_lora_reference_even_when_not_benchmarked(tiny_backbone, tmp_path):
    out = tmp_path / "out"
    kadapt(bench_args(tiny_backbone, out, "--shots", "5", "--seeds", "0", "--methods", "linear", "--workers", "1"))
    assert [r.variant for r in read_records(out / "records.jsonl")] == ["linear"]  # LoRA is timed, not trained
    speed = json.loads((out / "speed.json").read_text())
    assert speed["lora r=8"]["step_ratio"] == 1.0 and math.isfinite(speed["linear"]["step_ratio"])


def test_validation_pool_is_disjoint_from_shots_and_test():
    from datasets import DatasetDict

    from peft_kadapt.training.data import few_shot, load_image_dataset

    train = load_image_dataset("digits")["train"]
    source = DatasetDict({"train": train.add_column("row", list(range(len(train))))})
    a = few_shot(source, 5, seed=3, test_per_class=7, val_pool=4)
    b = few_shot(source, 5, seed=3, test_per_class=7)  # the same shots with or without a pool
    rows = {name: set(a[name]["row"]) for name in a}
    assert (len(rows["train"]), len(rows["validation"]), len(rows["test"])) == (50, 40, 70)
    assert not rows["train"] & rows["validation"] and not rows["validation"] & rows["test"]
    assert not rows["train"] & rows["test"]
    assert set(b["train"]["row"]) | set(b["validation"]["row"]) == rows["train"]
    with pytest.raises(ValueError, match="5 shots plus 1000 validation images"):
        few_shot(source, 5, seed=3, val_pool=1000)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "adapter"], r"`method` must be one of \('kadaptation'"),
        (["--methods", "lora rank=4"], r"'rank=4' is not KEY=VALUE with KEY one of \['alpha', 'r', 'targets'\]"),
        (["--methods", "lora r=four"], r"Variant 'lora r=four': 'four' is not a valid int"),
        (["--methods", "linear", "--grid", "lora r=8=1e-3"], "expected VARIANT=LR,LR with VARIANT one of"),
        (["--methods", "linear", "--grid", "linear=fast"], r"--grid 'fast': expected comma-separated numbers"),
        (["--shots", "five"], r"--shots 'five': expected comma-separated integers"),
        (["--shots", "5,-20"], r"--shots '5,-20': every value must be 0 or more \(k images per class; 0 = full shot"),
        (["--seeds", "-1"], r"--seeds '-1': every value must be 0 or more \(sampling seeds"),
        (["--resolution", "56px"], r"--resolution '56px': expected a size in pixels \(e.g. 112\) or auto"),
        (["--steps", "0"], r"--steps 0: expected 1 or more"),
        (["--val_per_class", "-2"], r"--val_per_class -2: expected 1 or more"),
        (["--alphas", "4,0"], r"--alphas '4,0': every value must be above 0 \(adapter scales"),
        (["--adapter_lrs", "1e-3,-1e-3"], r"--adapter_lrs '1e-3,-1e-3': every value must be above 0 \(learning rates"),
        (["--methods", "linear", "--grid", "linear=0"], r"--grid '0': every value must be above 0"),
        (["--warmup_steps", "-5"], r"--warmup_steps -5: expected 0 or more"),
        (["--speed_rounds", "-1"], r"--speed_rounds -1: expected 0 or more"),
        (["--workers", "0"], r"--workers 0: expected 1 or more"),
        (
            ["--methods", "kadaptation parametrization=new"],
            r"--methods variant 'kadaptation parametrization=new': `parametrization` should be one of",
        ),
    ],
)
def test_bench_argument_errors(tiny_backbone, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        kadapt(bench_args(tiny_backbone, tmp_path, "--workers", "1", *extra))
    assert not list(tmp_path.rglob("records.jsonl"))  # refused before any run


def test_a_split_the_dataset_cannot_give_fails_before_any_run(tiny_backbone, tmp_path):
    # digits has 178 images in its smallest class: k = 5 fits, the full-shot subset of 100 plus 100 test images does not
    out = tmp_path / "out"
    args = bench_args(tiny_backbone, out, "--shots", "5,0", "--seeds", "0", "--methods", "linear", "--workers", "1")
    args[args.index("--test_per_class") + 1] = "100"
    with pytest.raises(ValueError) as raised:
        kadapt(args)
    message = str(raised.value)
    for words in (
        "digits at k=full (100/class)",
        "Class '0' has 178 images",
        "--full_shot_subset",
        "Nothing was trained",
    ):
        assert words in message, message
    assert not (out / "records.jsonl").exists()  # k = 5 came first in the queue and did not run either
    kadapt([*args, "--full_shot_subset", "50"])
    assert {r.shots for r in read_records(out / "records.jsonl")} == {5, "full (50/class)"}


def test_downscaling_more_than_twice_warns(tmp_path):
    from peft_kadapt.training.bench.cli import warn_on_downscaling

    with pytest.warns(UserWarning, match=r"textiles: images of 250x250 px are shrunk to 56 px .*--resolution 224"):
        warn_on_downscaling({"textiles": 56})


@pytest.mark.slow
def test_auto_resolution_keeps_small_images_at_56_px_and_gives_large_ones_112(tiny_backbone, tmp_path):
    from peft_kadapt.training.bench.cli import resolutions

    assert resolutions(["digits", "mnist5k", "textiles"], "auto") == {"digits": 56, "mnist5k": 56, "textiles": 112}
    assert resolutions(["digits", "textiles"], "32") == {"digits": 32, "textiles": 32}
    out = tmp_path / "out"
    args = bench_args(tiny_backbone, out, "--datasets", "digits,textiles", "--shots", "5", "--seeds", "0")
    args[args.index("--resolution") + 1] = "auto"
    with pytest.warns(UserWarning, match=r"textiles: images of 250x250 px are shrunk to 112 px"):
        kadapt([*args, "--methods", "linear", "--workers", "1", "--speed_rounds", "0"])
    records = read_records(out / "records.jsonl")
    assert {(r.dataset, r.settings["resolution"]) for r in records} == {("digits", 56), ("textiles", 112)}
    table = (out / "results.md").read_text()
    assert "| digits | 56 | 5 | linear |" in table and "| textiles | 112 | 5 | linear |" in table
    with pytest.warns(UserWarning, match="textiles"):
        kadapt([*args, "--methods", "linear", "--workers", "1", "--speed_rounds", "0"])  # resumes: nothing new
    assert len(read_records(out / "records.jsonl")) == 2


def _record(variant, seed, accuracy, dataset="d", shots=5):
    return RunRecord(
        dataset=dataset,
        shots=shots,
        seed=seed,
        variant=variant,
        method=variant.split()[0],
        settings={"resolution": 32},
        grid=[],
        chosen_lr=1e-3,
        chosen_alpha=None,
        validation_accuracy=0.0,
        test_accuracy=accuracy,
        test_images=10,
        trainable_parameters=1,
        adapter_parameters=1,
        saved_bytes=1,
        train_seconds=0.0,
        wall_seconds=0.0,
    )


def test_paired_differences_pair_by_split_and_pool_datasets():
    records = [
        _record("lora", 0, 0.60),
        _record("lora", 1, 0.70),
        _record("k", 0, 0.62),
        _record("k", 1, 0.70),
        _record("lora", 0, 0.5, "e"),
        _record("k", 0, 0.4, "e"),
        _record("k", 0, 0.1, shots="full (9/class)"),
    ]  # full shot: not paired
    rows = {(r["dataset"], r["variant"]): r for r in paired_differences(records, "lora")}
    d = rows[("d", "k")]
    assert (d["splits"], d["wins"], d["ties"], d["losses"]) == (2, 1, 1, 0)
    assert math.isclose(d["difference"], 0.01) and math.isclose(d["interval"], 12.706 * 0.01)
    pooled = rows[("pooled", "k")]
    assert pooled["splits"] == 3 and math.isclose(pooled["difference"], (0.02 + 0.0 - 0.1) / 3)
    assert math.isnan(rows[("e", "k")]["interval"])  # one split: no interval
    mean, half = mean_interval([1.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 12.706)  # t(1) · stdev √2 / √2


def test_kadaptation_records_name_their_parametrization_and_older_records_read_as_legacy(tmp_path):
    from peft_kadapt.training.methods import canonical_variant

    assert canonical_variant("kadaptation n=8 targets=q_proj+v_proj") == (
        "kadaptation n=8 parametrization=lora_matched targets=q_proj+v_proj"
    )
    assert canonical_variant("kadaptation") == "kadaptation parametrization=lora_matched"
    assert canonical_variant("kadaptation parametrization=legacy n=4") == "kadaptation parametrization=legacy n=4"
    assert canonical_variant("lora r=8 targets=q_proj") == "lora r=8 targets=q_proj"
    # a record written before the field existed was trained with what is now "legacy", and must not be taken for a
    # run of today's default (which would skip the run on resume and mix the two in tables)
    old = {"dataset": "d", "shots": 5, "seed": 0, "variant": "kadaptation n=8 r=1 targets=q_proj+v_proj"}
    old |= {"method": "kadaptation", "settings": {"model_name_or_path": "m"}, "grid": [], "chosen_lr": 1e-3}
    old |= {"chosen_alpha": 4.0, "validation_accuracy": 0.5, "test_accuracy": 0.5, "test_images": 10}
    old |= {"trainable_parameters": 1, "adapter_parameters": 1, "saved_bytes": 1, "train_seconds": 1.0}
    (tmp_path / "r.jsonl").write_text(json.dumps(old | {"wall_seconds": 1.0}) + "\n")
    (record,) = read_records(tmp_path / "r.jsonl")
    assert record.variant == "kadaptation n=8 r=1 parametrization=legacy targets=q_proj+v_proj"


def test_the_bench_flags_are_the_recorded_settings_fields():
    from dataclasses import asdict

    from peft_kadapt.training.bench.cli import base_settings, parse_args
    from peft_kadapt.training.bench.protocol import BenchSettings

    # defaults: the dataclass's (for a Hub id: no local folder, so no fingerprint)
    assert base_settings(parse_args(["--model_name_or_path", "someone/vit"])) == BenchSettings("someone/vit")
    args = parse_args(["--steps", "7", "--validation", "shots", "--bf16", "--head_lr", "0.01", "--train_seed", "3"])
    settings = asdict(base_settings(args))
    assert settings | {"steps": 7, "validation": "shots", "bf16": True, "head_learning_rate": 0.01} == settings
    assert settings["train_seed"] == 3
    with pytest.raises(SystemExit):
        parse_args(["--validation", "both"])  # choices from the field


def test_records_written_before_a_setting_existed_still_resume():
    from dataclasses import asdict

    from peft_kadapt.training.bench.protocol import BenchSettings, Candidate, pending, record_key

    settings = BenchSettings(model_name_or_path="m")
    old = {k: v for k, v in asdict(settings).items() if k != "warmup_steps"}  # as written before warm-up existed
    grid = [Candidate(1e-3)]
    done = {record_key("digits", 5, 0, "linear", old, [asdict(c) for c in grid])}
    assert pending([("digits", 5, 0)], {"linear": grid}, {"digits": settings}, done) == []
    changed = BenchSettings(model_name_or_path="m", warmup_steps=5)
    assert pending([("digits", 5, 0)], {"linear": grid}, {"digits": changed}, done) == [(("digits", 5, 0), "linear")]


def test_edge_neighbours_step_past_the_chosen_edge_on_each_axis():
    from peft_kadapt.training.bench.protocol import Candidate, edge_neighbours

    grid = [Candidate(lr, a) for a in (1.0, 4.0, 16.0) for lr in (1e-3, 3e-3, 1e-2)]
    step = [(c.learning_rate, c.alpha, c.extension) for c in edge_neighbours(grid[0], grid)]
    assert step == [(3.33e-4, 1.0, True), (1e-3, 0.25, True)]  # the corner: one step out along both axes
    assert edge_neighbours(grid[4], grid) == []  # inside the grid: nothing
    assert [(c.learning_rate, c.alpha) for c in edge_neighbours(grid[5], grid)] == [(3.33e-2, 4.0)]
    references = [Candidate(1e-3), Candidate(1e-2)]  # no alpha axis
    assert [(c.learning_rate, c.alpha) for c in edge_neighbours(references[1], references)] == [(0.1, None)]
    assert edge_neighbours(Candidate(1e-3), [Candidate(1e-3)]) == []  # one value: no step to take


@pytest.mark.parametrize(
    "peak, new_lrs, chosen, tested",
    [
        (1e-2, [9e-3, 2.7e-2], 9e-3, 1),  # 3e-3 was the edge: two rounds outward, the new choice is tested once
        (3e-4, [3.33e-4, 1.11e-4], 3.33e-4, 1),  # the same at the lower edge
        (1.5e-3, [3.33e-4], 1e-3, 0),  # one step out is worse: the recorded choice and its test accuracy stand
    ],
)
def test_extend_edges_tops_up_recorded_runs_on_validation_only(
    tiny_backbone, tmp_path, monkeypatch, peak, new_lrs, chosen, tested
):
    import peft_kadapt.training.bench.protocol as protocol
    from peft_kadapt.training.bench.protocol import superseding
    from peft_kadapt.training.engine import Scores

    fits, tests = [], []
    real_evaluate, real_fit = protocol.evaluate, protocol.fit

    def fit_spy(model, x, y, recipe, *a, **k):
        fits.append(recipe.learning_rate)
        model.scripted_lr = recipe.learning_rate
        return real_fit(model, x, y, recipe, *a, **k)

    def evaluate_scripted(model, x, y, extra, **kwargs):
        if len(y) == 70:  # the test split
            tests.append(model.scripted_lr)
            return real_evaluate(model, x, y, extra, **kwargs)
        return Scores(accuracy=1 / (1 + abs(math.log10(model.scripted_lr / peak))), loss=1.0)  # best at `peak`

    monkeypatch.setattr(protocol, "evaluate", evaluate_scripted)
    monkeypatch.setattr(protocol, "fit", fit_spy)
    args = bench_args(tiny_backbone, tmp_path / "out", "--shots", "5", "--seeds", "0", "--workers", "1")
    args += ["--methods", "linear", "--grid", "linear=1e-3,3e-3", "--speed_rounds", "0"]
    kadapt(args)
    (first,) = read_records(tmp_path / "out" / "records.jsonl")
    fits.clear(), tests.clear()
    kadapt([*args, "--extend_edges", "2"])
    assert fits == new_lrs and len(tests) == tested  # only the new points train; test only for a new choice
    records = read_records(tmp_path / "out" / "records.jsonl")
    (latest,) = superseding(records)
    assert len(records) == 2 and latest.settings["extend_edges"] == 2 and latest.chosen_lr == chosen
    assert [(g["learning_rate"], g["extension"]) for g in latest.grid][:2] == [(1e-3, False), (3e-3, False)]
    assert [g["learning_rate"] for g in latest.grid][2:] == new_lrs
    if not tested:
        assert latest.test_accuracy == first.test_accuracy
    fits.clear()
    kadapt([*args, "--extend_edges", "2"])  # resumes: everything is recorded
    assert fits == [] and len(read_records(tmp_path / "out" / "records.jsonl")) == 2


class Interrupted(Exception):
    """Stands for the kill of a bench process."""


@pytest.mark.parametrize("stop_at", ["second fit", "test"])
def test_a_run_stopped_halfway_resumes_at_its_next_grid_point_and_records_the_same(
    tiny_backbone, tmp_path, monkeypatch, stop_at
):
    """A run killed in its second grid point (or after its whole grid, before the test) trains only the points it
    had not scored, and its record is the one an uninterrupted run writes; the kept points go with the record."""
    import peft_kadapt.training.bench.protocol as protocol

    args = ["--shots", "5", "--seeds", "0", "--workers", "1", "--methods", "lora r=2", "--speed_rounds", "0"]
    args += ["--grid", "lora r=2=1e-3,1e-2,1e-1"]
    kadapt(bench_args(tiny_backbone, tmp_path / "whole", *args))
    (whole,) = read_records(tmp_path / "whole" / "records.jsonl")

    fits = []
    real_fit, real_evaluate = protocol.fit, protocol.evaluate

    def fit(model, x, y, recipe, *a, **k):
        fits.append(recipe.learning_rate)
        if stop_at == "second fit" and len(fits) == 2:
            raise Interrupted
        return real_fit(model, x, y, recipe, *a, **k)

    def evaluate(model, x, y, *a, **k):
        if stop_at == "test" and len(y) == 70:  # the test split
            raise Interrupted
        return real_evaluate(model, x, y, *a, **k)

    monkeypatch.setattr(protocol, "fit", fit)
    monkeypatch.setattr(protocol, "evaluate", evaluate)
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        kadapt(bench_args(tiny_backbone, out, *args))
    assert not (out / "records.jsonl").exists() and len(list((out / "grid_points").iterdir())) == 1
    monkeypatch.setattr(protocol, "evaluate", real_evaluate)
    stop_at, scored = None, fits[:1] if len(fits) == 2 else fits[:]
    fits.clear()
    kadapt(bench_args(tiny_backbone, out, *args))
    (resumed,) = read_records(out / "records.jsonl")
    retrained = [whole.chosen_lr] if whole.chosen_lr in scored else []  # the chosen point trains again to be tested
    assert fits == [lr for lr in (1e-3, 1e-2, 1e-1) if lr not in scored] + retrained
    same = ("grid", "chosen_lr", "chosen_alpha", "validation_accuracy", "test_accuracy", "saved_bytes")
    assert {f: getattr(resumed, f) for f in same} == {f: getattr(whole, f) for f in same}
    assert list((out / "grid_points").iterdir()) == []


def test_variants_parse_after_the_trainer_parser_has_read_model_arguments():
    from transformers import HfArgumentParser

    from peft_kadapt.training.methods import ModelArguments, parse_variant

    HfArgumentParser(ModelArguments)  # resolves the dataclass's field types in place
    spec = parse_variant("kadaptation n=16 alpha=2 targets=q_proj+v_proj")
    assert (spec.kadapt_n, spec.kadapt_alpha, spec.target_modules) == (16, 2.0, "q_proj,v_proj")
    with pytest.raises(ValueError, match="'four' is not a valid int"):
        parse_variant("lora r=four")


@pytest.mark.parametrize("variant", ["lora r=8", "full"])
def test_head_lr_trains_the_head_at_its_own_rate(tiny_backbone, variant):
    import torch

    from peft_kadapt.training import build_model, parse_variant
    from peft_kadapt.training.bench import protocol

    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 2
    settings = protocol.BenchSettings(tiny_backbone, resolution=32, steps=2, batch_size=4, head_learning_rate=0.0)
    model, *_ = protocol._train(variant, protocol.Candidate(1e-2), settings, ["a", "b"], x, y, "cpu")
    torch.manual_seed(settings.train_seed)
    untrained, _ = build_model(parse_variant(variant, model_name_or_path=tiny_backbone), ["a", "b"])
    before = dict(untrained.named_parameters())
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n, _ in trained if "classifier." in n]
    assert head and all(torch.equal(p, before[n]) for n, p in trained if n in head)  # rate 0: the head stayed
    assert any(not torch.equal(p, before[n]) for n, p in trained if n not in head)  # the rest trained


def test_head_lr_is_recorded_and_checked(tiny_backbone, tmp_path):
    out = tmp_path / "out"
    kadapt(
        bench_args(tiny_backbone, out, "--shots", "5", "--seeds", "0", "--methods", "lora r=8", "--head_lr", "1e-2")
    )
    (record,) = read_records(out / "records.jsonl")
    assert record.settings["head_learning_rate"] == 1e-2
    with pytest.raises(ValueError, match=r"--head_lr 0.0: expected a learning rate above 0, e.g. 1e-2"):
        kadapt(bench_args(tiny_backbone, out, "--head_lr", "0"))


@pytest.mark.slow
def test_changed_data_or_model_runs_again(tiny_backbone, tmp_path):
    """Records are keyed by what a local folder holds, not only its name: a class added to the image folder, or a
    model folder rewritten, runs the split again instead of repeating the old numbers."""
    import shutil

    import numpy as np
    from PIL import Image

    data, model = tmp_path / "data", tmp_path / "model"
    shutil.copytree(tiny_backbone, model)
    rng = np.random.default_rng(0)

    def add_class(name):
        (data / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / name / f"{i}.png")

    for name in ("a", "b"):
        add_class(name)
    args = bench_args(
        str(model),
        tmp_path / "out",
        "--methods",
        "linear",
        "--speed_rounds",
        "0",
        "--shots",
        "3",
        "--test_per_class",
        "2",
        "--val_per_class",
        "2",
        "--workers",
        "1",
        "--seeds",
        "0",
    )
    args[args.index("--datasets") + 1] = str(data)
    kadapt(args)
    kadapt(args)  # unchanged: resumes, nothing new
    assert len(read_records(tmp_path / "out" / "records.jsonl")) == 1
    add_class("c")
    kadapt(args)
    records = read_records(tmp_path / "out" / "records.jsonl")
    assert len(records) == 2 and records[-1].test_images == 3 * 2  # three classes now
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")
    kadapt(args)
    assert len(read_records(tmp_path / "out" / "records.jsonl")) == 3
