"""`kadapt bench` end to end on a tiny ViT (the CI smoke version of the benchmark), and its protocol."""

import json
import math

import pytest

from peft_kadapt.bench import METHODS, bar_lines, merge_results, performance_efficiency
from peft_kadapt.cli import main as kadapt


def test_smoke_run_writes_results_table_plot_and_speed(tiny_backbone, tmp_path):
    out = tmp_path / "out"
    kadapt(["bench", "--model_name_or_path", tiny_backbone, "--datasets", "digits", "--shots", "5,0",
            "--full_shot_subset", "12", "--seeds", "0,1", "--methods", "kadaptation n=8,lora r=8,linear,bitfit",
            "--resolution", "32", "--steps", "2", "--test_per_class", "10", "--val_per_class", "3",
            "--speed_rounds", "1", "--workers", "2", "--output_dir", str(out)])  # fmt: skip
    data = json.loads((out / "results.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 4  # shots x seeds x methods
    for run in data["runs"]:
        assert set(run["validation"]) == {str(lr) for lr in METHODS[run["method"]][1]}
        best = max(run["validation"], key=lambda lr: (run["validation"][lr], -run["validation_loss"][lr]))
        assert run["chosen_lr"] == float(best)  # best validation accuracy, ties to the lower validation loss
        assert 0 <= run["test_accuracy"] <= 1 and run["saved_bytes"] > 0
    full = [r for r in data["runs"] if str(r["shots"]).startswith("full")]
    assert full and all(r["shots"] == "full (12/class)" for r in full)
    assert data["speed"]["lora r=8"]["step_vs_lora8"] == 1.0
    table = (out / "results.md").read_text()
    assert "| digits | 5 | kadaptation n=8 |" in table and "± " in table and "step / LoRA r=8" in table
    assert (out / "pareto.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "validation, grid, expected, trained",
    [("pool", [], [30, 30, 30, 70], [50, 50, 50]),  # 3 lrs on the 3-per-class pool, then test once on the kept model
     ("pool", ["--adapter_lrs", "1e-3,1e-2"], [30, 30, 70], [50, 50]),  # a user grid replaces the adapters' grid
     ("pool", ["--grid", "lora r=8=1e-2"], [30, 70], [50]),  # or one method's
     ("shots", [], [10, 10, 10, 70], [40, 40, 40, 50])],  # 1 shot per class carved out; retrained on all 5, tested once
)  # fmt: skip
def test_validation_chooses_and_test_is_used_once(
    tiny_backbone, tmp_path, monkeypatch, validation, grid, expected, trained
):
    import peft_kadapt.bench as bench

    calls, fits = [], []
    real_scores, real_fit = bench._scores, bench._fit

    def spy(model, x, y, extra):
        calls.append(len(y))
        return real_scores(model, x, y, extra)

    def fit_spy(model, x, y, *a, **k):
        fits.append(len(y))
        return real_fit(model, x, y, *a, **k)

    monkeypatch.setattr(bench, "_scores", spy)
    monkeypatch.setattr(bench, "_fit", fit_spy)
    kadapt(["bench", "--model_name_or_path", tiny_backbone, "--datasets", "digits", "--shots", "5",
            "--seeds", "0", "--methods", "lora r=8", "--resolution", "32", "--steps", "2", "--test_per_class", "7",
            "--validation", validation, "--val_per_class", "3", "--workers", "1", "--speed_rounds", "1",
            "--output_dir", str(tmp_path / "out"), *grid])  # fmt: skip
    assert calls == expected
    assert fits == trained  # pool: each lr trains on all 5 shots per class, no retraining; shots: on 4, then all 5


def test_speed_ratios_have_their_lora_reference_even_when_not_benchmarked(tiny_backbone, tmp_path):
    out = tmp_path / "out"
    kadapt(["bench", "--model_name_or_path", tiny_backbone, "--datasets", "digits", "--shots", "5",
            "--seeds", "0", "--methods", "linear", "--resolution", "32", "--steps", "2", "--test_per_class", "7",
            "--val_per_class", "3", "--workers", "1", "--speed_rounds", "1", "--output_dir", str(out)])  # fmt: skip
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["linear"]  # LoRA is timed, not trained
    assert data["speed"]["lora r=8"]["reference_only"] and math.isfinite(data["speed"]["linear"]["step_vs_lora8"])
    assert "| lora r=8 (speed reference only) |" in (out / "results.md").read_text()


def test_validation_pool_is_disjoint_from_shots_and_test():
    from datasets import DatasetDict

    from peft_kadapt.data import few_shot, load_image_dataset

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


def test_performance_efficiency_metric():
    assert performance_efficiency(0.8, 0, 1000) == 0.8
    assert math.isclose(performance_efficiency(0.8, 9000, 1000), 0.8 * math.exp(-1.0))
    with pytest.raises(ValueError, match="Unknown methods"):
        kadapt(["bench", "--methods", "adapter"])
    with pytest.raises(ValueError, match="expected METHOD=LR,LR with METHOD one of"):
        kadapt(["bench", "--methods", "linear", "--grid", "lora r=8=1e-3"])


def _result(lrs: dict, chosen: float, test: float, steps: int = 50) -> dict:
    run = {"dataset": "d", "shots": 5, "seed": 0, "method": "m", "chosen_lr": chosen, "test_accuracy": test,
           "validation": {lr: acc for lr, (acc, _) in lrs.items()},
           "validation_loss": {lr: loss for lr, (_, loss) in lrs.items()}}  # fmt: skip
    return {"settings": {"steps": steps, "output_dir": "x"}, "runs": [run], "speed": {}, "wall_time_s": 1.0}


def test_merge_results_chooses_over_the_union_of_grids():
    low = _result({"0.001": (0.5, 1.0), "0.003": (0.7, 0.8)}, 0.003, 0.61)
    high = _result({"0.003": (0.7, 0.8), "0.01": (0.8, 0.9)}, 0.01, 0.66)
    tie = _result({"0.01": (0.7, 0.9)}, 0.01, 0.99)  # same accuracy as 0.003 in `low`: the lower loss wins
    merged = merge_results([low, high])["runs"]
    assert len(merged) == 1 and merged[0]["chosen_lr"] == 0.01 and merged[0]["test_accuracy"] == 0.66
    assert set(merged[0]["validation"]) == {"0.001", "0.003", "0.01"}
    assert merge_results([low, tie])["runs"][0]["test_accuracy"] == 0.61
    with pytest.raises(ValueError, match="not of the same splits"):
        merge_results([low, _result({"0.003": (0.7, 0.5)}, 0.003, 0.6)])
    with pytest.raises(ValueError, match=r"settings differ in \['steps'\]"):
        merge_results([low, _result({"0.01": (0.8, 0.9)}, 0.01, 0.66, steps=100)])


def test_bar_lines_pair_splits_and_apply_the_three_conditions():
    def run(method, seed, acc, adapter, shots=5):
        return {"dataset": "d", "shots": shots, "seed": seed, "method": method, "test_accuracy": acc,
                "adapter_parameters": adapter}  # fmt: skip

    runs = [run("lora r=8", 0, 0.60, 100), run("lora r=8", 1, 0.70, 100), run("linear", 0, 0.5, 0),
            run("linear", 1, 0.5, 0), run("kadaptation a", 0, 0.62, 50), run("kadaptation a", 1, 0.70, 50),
            run("kadaptation b", 0, 0.70, 51), run("kadaptation b", 1, 0.80, 51),
            run("kadaptation c", 0, 0.55, 10), run("kadaptation c", 1, 0.70, 10),
            run("kadaptation a", 0, 0.1, 50, shots="full (9/class)")]  # fmt: skip  # full shot: not in the bar
    rows = {line.split(" | ")[1]: line for line in bar_lines(runs)[3:]}
    assert rows["kadaptation a"] == "| d | kadaptation a | 2 | 0.660 | 0.650 | +0.010 ± 0.010 | 0.500 | 0.50 | yes |"
    assert rows["kadaptation b"].endswith("| 0.51 | no |")  # more accurate, but over half LoRA's parameters
    assert rows["kadaptation c"].endswith("| 0.10 | no |")  # cheap, but below LoRA
    one = bar_lines([r for r in runs if r["seed"] == 0])[3:]
    assert all(line.endswith("| n/a (1 split) |") and "± n/a" in line for line in one)  # no verdict from one split
