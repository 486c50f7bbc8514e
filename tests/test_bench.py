"""`kadapt bench` end to end on a tiny ViT (the CI smoke version of the benchmark), and its protocol."""

import json
import math

import pytest
import torch
from transformers import ViTForImageClassification

from peft_kadapt.bench import METHODS, performance_efficiency
from peft_kadapt.cli import main as kadapt

from conftest import tiny_vit_config


def test_smoke_run_writes_results_table_plot_and_speed(tmp_path):
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    kadapt(["bench", "--model_name_or_path", str(tmp_path / "backbone"), "--datasets", "digits", "--shots", "5,0",
            "--full_shot_subset", "12", "--seeds", "0,1", "--methods", "kadaptation n=8,lora r=8,linear,bitfit",
            "--resolution", "32", "--epochs", "1", "--test_per_class", "10", "--speed_rounds", "1",
            "--output_dir", str(out)])  # fmt: skip
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


def test_validation_chooses_and_test_is_used_once(tmp_path, monkeypatch):
    import peft_kadapt.bench as bench

    calls = []
    real = bench._scores

    def spy(model, x, y, extra):
        calls.append(len(y))
        return real(model, x, y, extra)

    monkeypatch.setattr(bench, "_scores", spy)
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "backbone")
    kadapt(["bench", "--model_name_or_path", str(tmp_path / "backbone"), "--datasets", "digits", "--shots", "5",
            "--seeds", "0", "--methods", "lora r=8", "--resolution", "32", "--epochs", "1", "--test_per_class", "7",
            "--speed_rounds", "1", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert calls == [10, 10, 10, 70]  # three learning rates on validation (1 per class), then test once


def test_performance_efficiency_metric():
    assert performance_efficiency(0.8, 0, 1000) == 0.8
    assert math.isclose(performance_efficiency(0.8, 9000, 1000), 0.8 * math.exp(-1.0))
    with pytest.raises(ValueError, match="Unknown methods"):
        kadapt(["bench", "--methods", "adapter"])
