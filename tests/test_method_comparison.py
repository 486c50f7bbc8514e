"""benchmarks/method_comparison.py writes bench records in the JSON layout of PEFT's method_comparison."""

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from peft_kadapt.training.bench.protocol import RunRecord


spec = importlib.util.spec_from_file_location(
    "method_comparison", Path(__file__).parents[1] / "benchmarks" / "method_comparison.py"
)
method_comparison = importlib.util.module_from_spec(spec)
spec.loader.exec_module(method_comparison)
QV = "targets=q_proj+v_proj"


def record(variant, dataset, seed, test, lr=1e-3, alpha=4.0):
    grid = [{"learning_rate": lr, "alpha": alpha, "validation_accuracy": 0.5, "validation_loss": 1.0}]
    return RunRecord(dataset=dataset, shots=5, seed=seed, variant=variant, method=variant.split()[0],
                     settings={"model_name_or_path": "m", "resolution": 56}, grid=grid, chosen_lr=lr,
                     chosen_alpha=alpha, validation_accuracy=0.5, test_accuracy=test, test_images=300,
                     trainable_parameters=20_000, adapter_parameters=19_456, saved_bytes=4096, train_seconds=2.0,
                     wall_seconds=10.0)  # fmt: skip


def test_one_file_per_variant_in_peft_s_layout(tmp_path, capsys):
    records = [
        record(f"kadaptation n=8 r=1 {QV}", d, s, t) for d, s, t in (("a", 0, 0.6), ("a", 1, 0.7), ("b", 0, 0.8))
    ]
    records += [record(f"lora r=1 {QV}", "a", 0, 0.5)]
    records += [record("linear", "a", 0, 0.4, alpha=None)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records))
    written = method_comparison.main([str(path), "--output_dir", str(tmp_path / "out")])
    assert sorted(p.name for p in written) == [
        "kadaptation--m-n8-r1-legacy-q_proj+v_proj.json",  # written before the field: legacy
        "linear--m-default.json",
        "lora--m-r1-q_proj+v_proj.json",
    ]
    ka = json.loads(written[0].read_text())
    assert set(ka) == {"run_info", "train_info", "meta_info"}
    run, train = ka["run_info"], ka["train_info"]
    assert run["experiment_name"] == "kadaptation/m-n8-r1-legacy-q_proj+v_proj"
    assert run["peft_config"]["peft_type"] == "KADAPTATION" and run["peft_config"]["parametrization"] == "legacy"
    assert run["peft_config"]["target_modules"] == ["q_proj", "v_proj"] and run["total_time"] == 30.0
    assert run["train_config"]["grid"] == [{"learning_rate": 1e-3, "alpha": 4.0}]
    assert train["train_time"] == 6.0 and train["file_size"] == 4096 and train["num_trainable_params"] == 20_000
    assert train["accelerator_memory_max"] is None  # not measured without --measure
    assert [m.get("dataset") for m in train["metrics"]] == ["a", "a", "b", None]
    assert train["metrics"][-1] == {"splits": 3, "test accuracy": pytest.approx(0.7)}
    assert ka["meta_info"]["dataset_info"] == {"a": {"splits": 2}, "b": {"splits": 1}}
    assert json.loads(written[1].read_text())["run_info"]["peft_config"] is None  # the linear probe has none


def test_until_and_exclude_leave_later_and_named_records_out(tmp_path):
    early = record(f"kadaptation n=8 r=1 {QV}", "a", 0, 0.6)
    early.finished = "2026-12-07T10:00:00+00:00"
    late = record(f"kadaptation n=8 r=1 {QV}", "a", 1, 0.9)
    late.finished = "2026-12-07T11:00:00+00:00"
    peer = record(f"vera r=256 {QV}", "a", 0, 0.5)
    peer.finished = "2026-12-07T09:00:00+00:00"
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in (early, late, peer)))
    argv = [str(path), "--output_dir", str(tmp_path / "out"), "--until", "2026-12-07T10:30:00", "--exclude", "vera"]
    (written,) = method_comparison.main(argv)
    metrics = json.loads(written.read_text())["train_info"]["metrics"]
    assert [m.get("seed") for m in metrics[:-1]] == [0] and metrics[-1]["test accuracy"] == pytest.approx(0.6)
