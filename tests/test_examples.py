"""The example scripts users copy: public API only, and they run (Trainer; Accelerate with two CPU processes)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessor

from conftest import TORCHRUN, tiny_vit_config


ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
TRAINER = EXAMPLES / "image_classification" / "run_image_classification.py"
NO_TRAINER = EXAMPLES / "image_classification" / "run_image_classification_no_trainer.py"
# what a copied example may need: the standard library, the ecosystem, and peft_kadapt's public names
ALLOWED = {
    "accelerate",
    "datasets",
    "evaluate",
    "numpy",
    "peft",
    "PIL",
    "torch",
    "tqdm",
    "transformers",
    "peft_kadapt",
}
METRIC = ROOT / "peft_kadapt" / "training" / "evaluate_metrics" / "accuracy.py"  # evaluate's accuracy, offline
CLASSES = ("circle", "square", "stripes")


def imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("script", [TRAINER, NO_TRAINER], ids=["trainer", "no_trainer"])
def test_examples_import_only_the_public_api(script):
    for module, names in imports(script):
        top = module.split(".")[0]
        assert top in sys.stdlib_module_names or top in ALLOWED, f"{script.name} imports {module}"
        if top == "peft_kadapt":
            assert module == "peft_kadapt" and set(names) <= {"KAdaptationConfig"}, f"{script.name}: {module} {names}"


def accelerate_example() -> dict:
    """The Accelerate example's functions, loaded from its file (it is a script, not a module)."""
    namespace = {}
    exec(compile(NO_TRAINER.read_text(), str(NO_TRAINER), "exec"), namespace)
    return namespace


def test_the_accelerate_example_trains_with_the_package_recipe_by_default(monkeypatch):
    # one recipe: the engine's Recipe defaults are the Accelerate example's (which may not import them) and
    # kadapt train's
    from peft_kadapt.training import Recipe
    from peft_kadapt.training.run_image_classification import parse_args as kadapt_train_args

    namespace = accelerate_example()
    monkeypatch.setattr(sys, "argv", ["x", "--model_name_or_path", "m", "--train_dir", "d"])
    example = namespace["parse_args"]()
    *_, trainer = kadapt_train_args(["--output_dir", "o"])
    for recipe_field, example_flag, trainer_field in [
        ("batch_size", "per_device_train_batch_size", "per_device_train_batch_size"),
        ("weight_decay", "weight_decay", "weight_decay"),
        ("lr_scheduler_type", "lr_scheduler_type", "lr_scheduler_type"),
        ("warmup_steps", "num_warmup_steps", "warmup_steps"),
        ("max_grad_norm", "max_grad_norm", "max_grad_norm"),
        ("seed", "seed", "seed"),
    ]:
        expected = getattr(Recipe, recipe_field)
        assert getattr(example, example_flag) == expected, example_flag
        value = getattr(trainer, trainer_field)
        assert getattr(value, "value", value) == expected, trainer_field  # the scheduler is an enum there


def test_the_accelerate_example_keeps_the_model_folder_and_earlier_results(monkeypatch, tmp_path, capsys):
    namespace = accelerate_example()
    model, out = tmp_path / "model", tmp_path / "out"
    model.mkdir()

    def parse(*flags):
        monkeypatch.setattr(sys, "argv", ["x", "--model_name_or_path", str(model), "--train_dir", "d", *flags])
        return namespace["parse_args"]()

    with pytest.raises(SystemExit):
        parse("--output_dir", str(model))
    assert "is the base model's folder: pass another folder" in capsys.readouterr().err
    out.mkdir()
    (out / "all_results.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        parse("--output_dir", str(out))
    err = capsys.readouterr().err
    assert "holds an earlier run's results" in err and "--overwrite_output_dir to replace them" in err
    assert parse("--output_dir", str(out), "--overwrite_output_dir").overwrite_output_dir
    assert (out / "notes.txt").read_text() == "mine"  # nothing is deleted


def test_examples_folder_holds_no_symlink():
    links = [p for p in EXAMPLES.rglob("*") if p.is_symlink()]
    assert not links, links


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """train/ and validation/ folders of 3 classes of small drawn images (8 and 3 per class)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 3)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 40, (24, 24, 3), dtype=np.uint8)
                array[6:18, 6:18, label] = 220  # each class lights its own colour channel
                Image.fromarray(array).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    ViTForImageClassification(tiny_vit_config()).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_adapter_loads(output: Path, backbone: str) -> None:
    code = (
        "import sys, peft_kadapt; from peft import PeftModel; from transformers import ViTForImageClassification\n"
        f"base = ViTForImageClassification.from_pretrained({backbone!r}, num_labels=3)\n"
        f"model = PeftModel.from_pretrained(base, {str(output)!r})\n"
        "assert model.peft_config['default'].peft_type.value == 'KADAPTATION'\n"
    )
    run([sys.executable, "-c", code])


@pytest.mark.slow
def test_trainer_example_trains_evaluates_and_saves(image_folder, backbone, tmp_path):
    out = tmp_path / "out"
    run(
        [
            sys.executable,
            str(TRAINER),
            "--model_name_or_path",
            backbone,
            "--train_dir",
            str(image_folder / "train"),
            "--validation_dir",
            str(image_folder / "validation"),
            "--output_dir",
            str(out),
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "3e-3",
            "--kadapt_n",
            "4",
            "--metric",
            str(METRIC),
            "--report_to",
            "none",
            "--use_cpu",
        ]
    )
    results = json.loads((out / "all_results.json").read_text())
    assert 0 <= results["eval_accuracy"] <= 1 and results["epoch"] == 2
    assert (out / "adapter_model.safetensors").exists() and (out / "preprocessor_config.json").exists()
    assert_adapter_loads(out, backbone)


LAUNCHERS = {
    "torchrun": TORCHRUN,
    # accelerate launch sends --cpu runs to its one-process launcher; --multi_gpu takes the torchrun-based one, and
    # the script's --cpu then gives two CPU processes over gloo
    "accelerate launch": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29534",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_accelerate_example_on_two_processes_counts_each_image_once(launcher, image_folder, backbone, tmp_path):
    out = tmp_path / "out"
    run(
        [
            *LAUNCHERS[launcher],
            str(NO_TRAINER),
            "--cpu",
            "--model_name_or_path",
            backbone,
            "--train_dir",
            str(image_folder / "train"),
            "--validation_dir",
            str(image_folder / "validation"),
            "--output_dir",
            str(out),
            "--max_train_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--per_device_eval_batch_size",
            "2",
            "--kadapt_n",
            "4",
            "--metric",
            str(METRIC),
        ]
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["steps"] == 3
    # 9 validation images over 2 ranks in batches of 2: the padding is dropped, nothing is counted twice
    assert results["eval_examples"] == 9
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["adapter_model.safetensors"]
    assert_adapter_loads(out, backbone)
