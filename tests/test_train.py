"""`kadapt train` end to end on a tiny ViT and the offline digits: every method, outputs, selection, resume."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from peft_kadapt.cli import main as kadapt


def train_args(backbone, out, *extra):
    return ["train", "--model_name_or_path", backbone, "--dataset_name", "digits", "--shots", "10",
            "--test_per_class", "10", "--resolution", "32", "--num_train_epochs", "2", "--kadapt_n", "4",
            "--output_dir", str(out), "--disable_tqdm", "true", *extra]  # fmt: skip


@pytest.mark.parametrize("method", ["kadaptation", "lora", "lokr", "linear", "bitfit", "full"])
def test_every_method_trains_and_reports(method, tiny_backbone, tmp_path):
    assert kadapt(train_args(tiny_backbone, tmp_path, "--method", method)) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (metrics["train_images"], metrics["validation_images"], metrics["test_images"]) == (80, 20, 100)
    assert metrics["best_checkpoint"] is not None  # chosen on validation
    assert metrics["saved_file_bytes"] == (tmp_path / metrics["saved_file"]).stat().st_size
    assert (tmp_path / "training_curve.png").stat().st_size > 1000
    head = 32 * 10 + 10
    biases = 2 * (4 * 32 + 48 + 32 + 2 * 32) + 32 + 32  # blocks (q,k,v,o, fc1, fc2, 2 LN), final LN, patch embedding
    expected_trainable = {"linear": head, "bitfit": head + biases, "full": None}.get(method)
    if expected_trainable is not None:
        assert metrics["trainable_parameters"] == expected_trainable
    if method == "kadaptation":
        # q and v of 2 blocks: r·(k + d) = 64 each, plus two 4³ slow-weight sets, plus the head
        assert metrics["trainable_parameters"] == 4 * 64 + 2 * 64 + head
        card = (tmp_path / "README.md").read_text()
        assert "library_name: peft" in card and "import peft_kadapt" in card
        assert "test_accuracy" in card


def test_resume_reproduces_the_uninterrupted_run(tiny_backbone, tmp_path):
    common = ("--lr_scheduler_type", "constant", "--seed", "1")
    kadapt(train_args(tiny_backbone, tmp_path / "full", *common, "--num_train_epochs", "4"))
    kadapt(train_args(tiny_backbone, tmp_path / "part", *common, "--num_train_epochs", "2"))
    checkpoint = sorted((tmp_path / "part").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    kadapt(train_args(tiny_backbone, tmp_path / "part", *common, "--num_train_epochs", "4",
                      "--resume_from_checkpoint", str(checkpoint)))  # fmt: skip
    full = load_file(tmp_path / "full" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "part" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and a["validation_accuracy"] == b["validation_accuracy"]


def test_example_script_and_bad_method(tiny_backbone, tmp_path):
    script = "examples/image_classification/run_image_classification.py"
    done = subprocess.run([sys.executable, script, *train_args(tiny_backbone, tmp_path)[1:], "--method", "lora"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "lora"
    with pytest.raises(
        ValueError, match=r"`method` must be one of \('kadaptation', 'lora', 'lokr', 'linear', 'bitfit', 'full'\)"
    ):
        kadapt(train_args(tiny_backbone, tmp_path / "x", "--method", "adapter"))


def test_val_pool_trains_on_every_shot(tiny_backbone, tmp_path):
    assert kadapt(train_args(tiny_backbone, tmp_path, "--method", "linear", "--val_pool", "3")) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["validation_images"], metrics["test_images"]) == (100, 30, 100)


def test_learning_rate_defaults_per_method_unless_given():
    from peft_kadapt.train import DEFAULT_LEARNING_RATES, parse_args

    for method in ("kadaptation", "linear", "full"):
        _, _, training = parse_args(["--method", method, "--output_dir", "x"])
        assert training.learning_rate == DEFAULT_LEARNING_RATES[method]
    _, _, training = parse_args(["--method", "linear", "--learning_rate", "0.05", "--output_dir", "x"])
    assert training.learning_rate == 0.05
    _, _, training = parse_args(["--method=full", "--learning_rate=2e-5", "--output_dir=x"])
    assert training.learning_rate == 2e-5
