"""The Accelerate loop with two real CPU processes (torchrun, gloo)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ViTForImageClassification

from conftest import tiny_vit_config


SCRIPT = Path(__file__).parents[1] / "examples" / "image_classification" / "run_image_classification_no_trainer.py"


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
    # accelerate launch sends --cpu runs to its one-process launcher; --multi_gpu takes the torchrun-based one, and
    # the script's --cpu then gives two CPU processes over gloo
    "accelerate launch": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--main_process_port", "29534"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_agree_and_evaluate_each_example_once(tmp_path, launcher):
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    args = (
        "--cpu --dataset_name digits --shots 10 --test_per_class 11 --resolution 32 --num_train_epochs 2 --kadapt_n 4"
    )
    args += " --per_device_train_batch_size 4 --per_device_eval_batch_size 8 --save_every_rank"
    cmd = [*LAUNCHERS[launcher], str(SCRIPT), *args.split(), "--model_name_or_path", str(tmp_path / "backbone"),
           "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    # 10 classes x 11 test images = 110, split over 2 ranks in batches of 8: padding is dropped, nothing counted twice
    assert metrics["test_examples"] == 110
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and any("kadapt_v" in k for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "kadapt_v" in k)  # it trained
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "adapter_model.safetensors",
        "rank0.safetensors",
        "rank1.safetensors",
    ]


@pytest.fixture(scope="module")
def no_trainer_script():
    """The example script as a module (it is a file, not part of the package), loaded once."""
    spec = importlib.util.spec_from_file_location("no_trainer", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rate", "0"], "--learning_rate must be above 0, got 0.0; leave it out for the method's default"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be 1 or more, got 0"),
        (["--num_train_epochs", "0", "--max_train_steps", "-1"], "--max_train_steps must be 1 or more, got -1"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be 1 or more, got 0"),
    ],
)
def test_impossible_values_are_refused_by_flag_name(no_trainer_script, argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        no_trainer_script.parse_args(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_max_train_steps_stands_in_for_epochs(no_trainer_script):
    args = no_trainer_script.parse_args(["--num_train_epochs", "0", "--max_train_steps", "5"])  # epochs are not used
    assert args.max_train_steps == 5
