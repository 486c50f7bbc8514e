"""`kadapt train` end to end on a tiny ViT and the offline digits: every method, outputs, selection, resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_peers import peer_options

from peft_kadapt.training import build_model, is_head, parse_variant
from peft_kadapt.training.cli import main as kadapt
from peft_kadapt.training.methods import METHODS
from peft_kadapt.training.run_image_classification import make_trainer, parse_args

from conftest import run_two_processes, train_args


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kadaptation", "lora", "lokr", "linear", "bitfit", "full"])
def test_every_method_trains_and_reports(method, tiny_backbone, tmp_path):
    assert kadapt(train_args(tiny_backbone, tmp_path, "--method", method)) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (metrics["train_images"], metrics["validation_images"], metrics["test_images"]) == (80, 20, 100)
    assert metrics["best_checkpoint"] is not None and metrics["wall_time_s"] > 0  # chosen on validation
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


def weights_file(directory):
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (directory / name).exists():
            return load_file(directory / name)
    raise AssertionError(f"no weights in {directory}")


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


METHOD_NAMES = list(METHODS)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"), [(m, ()) for m in METHOD_NAMES] + [("c3a", ("--head_learning_rate", "3e-3"))]
)  # the head in optimizer groups of its own resumes too
def test_resume_reproduces_the_uninterrupted_run(method, extra, tiny_backbone, tmp_path):
    common = (
        "--method",
        method,
        *peer_options(method),
        *extra,
        "--lr_scheduler_type",
        "constant",
        "--seed",
        "1",
        "--learning_rate",
        "1e-3",
    )
    kadapt(train_args(tiny_backbone, tmp_path / "full", *common, "--num_train_epochs", "4"))
    kadapt(train_args(tiny_backbone, tmp_path / "part", *common, "--num_train_epochs", "2"))
    checkpoint = sorted((tmp_path / "part").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    kadapt(
        train_args(
            tiny_backbone,
            tmp_path / "part",
            *common,
            "--num_train_epochs",
            "4",
            "--resume_from_checkpoint",
            str(checkpoint),
        )
    )
    assert_same_weights(weights_file(tmp_path / "part"), weights_file(tmp_path / "full"))
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and a["validation_accuracy"] == b["validation_accuracy"]
    assert a["head_learning_rate"] == (float(extra[1]) if extra else None)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_saved_model_is_exactly_the_selected_checkpoint(method, tiny_backbone, tmp_path):
    # select the checkpoint with the HIGHEST validation loss: the first epoch, so that best != last
    kadapt(
        train_args(
            tiny_backbone,
            tmp_path,
            "--method",
            method,
            *peer_options(method),
            "--num_train_epochs",
            "3",
            "--learning_rate",
            "3e-3",
            "--metric_for_best_model",
            "loss",
            "--greater_is_better",
            "true",
        )
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    checkpoints = sorted(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    best = tmp_path / metrics["best_checkpoint"].rsplit("/", 1)[-1]
    assert best != checkpoints[-1], "the test needs a selected checkpoint other than the last"
    assert_same_weights(weights_file(tmp_path), weights_file(best))


@pytest.mark.slow
def test_the_program_runs_as_a_module_and_bad_method(tiny_backbone, tmp_path, capsys):
    module = "peft_kadapt.training.run_image_classification"
    done = subprocess.run(
        [sys.executable, "-m", module, *train_args(tiny_backbone, tmp_path)[1:], "--method", "lora"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "lora"
    with pytest.raises(SystemExit):
        kadapt(train_args(tiny_backbone, tmp_path / "x", "--method", "adapter"))
    assert (
        "--method must be one of kadaptation, lora, lokr, linear, bitfit, full, vera, pvera, fourierft, vblora, loha, "
        "ia3, oft, lily, tinylora, c3a, got 'adapter'" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_two_cpu_processes_train_as_one_process_with_use_cpu_and_are_refused_without_it(tiny_backbone, tmp_path):
    def launch(out, *extra):
        return run_two_processes(
            "-m", "peft_kadapt.training.cli", *train_args(tiny_backbone, out, "--method", "lora", *extra)
        )

    # gloo alone joined the processes and split the batches, but nothing averaged the gradients
    for name, extra in {"alone": [], "gloo": ["--ddp_backend", "gloo"]}.items():
        refused = launch(tmp_path / name, *extra)
        assert refused.returncode != 0
        assert "started as 2 processes (WORLD_SIZE=2), but the Trainer does not run them as one" in refused.stderr
        assert "--use_cpu true" in refused.stderr and not (tmp_path / name / "metrics.json").exists()
    # 2 processes of 8 images a step are one process of 16: the same batches, the gradients averaged
    done = launch(tmp_path / "two", "--use_cpu", "true", "--per_device_train_batch_size", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        kadapt(train_args(tiny_backbone, tmp_path / "one", "--method", "lora", "--per_device_train_batch_size", "16"))
        == 0
    )
    two, one = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("two", "one"))
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    # evaluation gathered over both processes: every image counted once, the same scores
    two, one = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("two", "one"))
    for key in ("test_images", "validation_images", "test_accuracy", "validation_accuracy"):
        assert two[key] == one[key], key
    assert Path(two["best_checkpoint"]).name == Path(one["best_checkpoint"]).name


def assert_engine_refused(backbone, out, *engine) -> None:
    """Two CPU processes with `engine` (--fsdp or --deepspeed), with and without --use_cpu: refused before any file."""
    # with --use_cpu Accelerate left the engine out (--fsdp gave DDP); without it each took itself for the only one
    for name, extra in {"gloo": ["--ddp_backend", "gloo"], "use_cpu": ["--use_cpu", "true"]}.items():
        args = train_args(backbone, out / name, "--method", "kadaptation", *engine, *extra)
        refused = run_two_processes("-m", "peft_kadapt.training.cli", *args)
        assert refused.returncode != 0
        assert f"with {engine[0]}, but Accelerate runs FSDP and DeepSpeed only on GPUs" in refused.stderr
        assert f"leave {engine[0]} out and pass --use_cpu true" in refused.stderr and not (out / name).exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the Trainer starts FSDP")
def test_fsdp_on_cpu_processes_is_refused_before_anything_is_written(tiny_backbone, tmp_path):
    wrap = json.dumps({"transformer_layer_cls_to_wrap": ["ViTLayer"]})
    assert_engine_refused(tiny_backbone, tmp_path, "--fsdp", "full_shard auto_wrap", "--fsdp_config", wrap)


@pytest.mark.slow
@pytest.mark.integrations  # DeepSpeed: `make test-integrations`
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the Trainer starts DeepSpeed")
def test_deepspeed_on_cpu_processes_is_refused_before_anything_is_written(tiny_backbone, tmp_path):
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3}}))
    assert_engine_refused(tiny_backbone, tmp_path, "--deepspeed", str(config))


@pytest.mark.slow
def test_val_pool_trains_on_every_shot(tiny_backbone, tmp_path):
    assert kadapt(train_args(tiny_backbone, tmp_path, "--method", "linear", "--val_pool", "3")) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["validation_images"], metrics["test_images"]) == (100, 30, 100)


def test_learning_rate_defaults_per_method_unless_given():
    for method in ("kadaptation", "linear", "full"):
        _, _, training = parse_args(["--method", method, "--output_dir", "x"])
        assert training.learning_rate == METHODS[method].learning_rate
    _, _, training = parse_args(["--method", "linear", "--learning_rate", "0.05", "--output_dir", "x"])
    assert training.learning_rate == 0.05
    _, _, training = parse_args(["--method=full", "--learning_rate=2e-5", "--output_dir=x"])
    assert training.learning_rate == 2e-5


def test_every_spelling_that_help_lists_is_honoured():
    _, data, training = parse_args(["--num-train-epochs", "1", "--learning-rate", "0.5", "--val-pool", "4"])
    assert (training.num_train_epochs, training.learning_rate, data.val_pool) == (1, 0.5, 4)
    _, _, defaults = parse_args([])
    assert (defaults.num_train_epochs, defaults.eval_strategy, defaults.load_best_model_at_end) == (15, "epoch", True)
    assert (defaults.per_device_train_batch_size, defaults.weight_decay, defaults.remove_unused_columns) == (
        16,
        0.01,
        False,
    )


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_an_arguments_file_gives_the_same_run_as_the_flags(tmp_path, suffix):
    import yaml

    flags = {"method": "lora", "dataset_name": "digits", "shots": 10, "num_train_epochs": 2, "output_dir": "o"}
    path = tmp_path / f"args{suffix}"
    path.write_text(json.dumps(flags) if suffix == ".json" else yaml.safe_dump(flags))
    from_file = parse_args([str(path)])
    from_flags = parse_args([f"--{k}={v}" for k, v in flags.items()])
    for a, b in zip(from_file, from_flags):
        assert a == b
    assert from_file[2].learning_rate == METHODS["lora"].learning_rate and from_file[2].remove_unused_columns is False


@pytest.mark.parametrize("method", ["linear", "bitfit", "full"])
def test_methods_without_adapter_need_no_target_modules(method, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    from peft_kadapt.training import ModelArguments, build_model

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    ResNetForImageClassification(config).save_pretrained(tmp_path)  # a model type with no KAdaptation default
    model, is_peft = build_model(ModelArguments(model_name_or_path=str(tmp_path), method=method), ["a", "b", "c"])
    assert not is_peft and any(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(ValueError, match=r"no default `target_modules` for model type 'resnet'. Pass"):
        build_model(ModelArguments(model_name_or_path=str(tmp_path), method="lora"), ["a", "b", "c"])


def test_convert_dinov2_honours_image_size_without_output_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KADAPT_CACHE", str(tmp_path))
    kadapt(["convert-dinov2", "--image-size", "112"])  # the old spelling still works, with a note
    captured = capsys.readouterr()
    assert "--image-size is deprecated and will be removed in 0.3; use --image_size." in captured.err
    path = captured.out.strip()
    assert path == str(tmp_path / "dinov2-small-imgfocus-112px")
    assert json.loads((tmp_path / "dinov2-small-imgfocus-112px" / "config.json").read_text())["image_size"] == 112


@pytest.mark.slow
def test_demo_runs_on_a_tiny_model(tiny_backbone, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_kadapt.training.demo",
            "--model_name_or_path",
            tiny_backbone,
            "--dataset",
            "digits",
            "--shots",
            "5",
            "--epochs",
            "1",
            "--resolution",
            "32",
            "--output_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KAdaptation" in done.stdout and "linear probe" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"kadaptation", "linear"} and not list(tmp_path.glob("*/checkpoint-*"))


@pytest.mark.slow
def test_class_names_travel_with_the_adapter_and_load_from_anywhere(tmp_path, tiny_backbone, monkeypatch):
    """A folder of three named classes: the names reach metrics.json, the card, the head config saved beside the
    adapter, and `load_image_classifier` restores them; the base model path is stored absolute."""
    from PIL import Image

    from peft_kadapt.hub import load_image_classifier

    for label, name in enumerate(("owl", "cat", "zebra")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (16, 16), (80 * label, 40, 200 - 60 * label)).save(tmp_path / "data" / name / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    relative = "backbone"
    subprocess.run(["cp", "-r", tiny_backbone, relative], check=True)
    kadapt(
        [
            "train",
            "--model_name_or_path",
            relative,
            "--dataset_name",
            "data",
            "--shots",
            "5",
            "--test_per_class",
            "2",
            "--resolution",
            "32",
            "--num_train_epochs",
            "1",
            "--kadapt_n",
            "4",
            "--output_dir",
            "out",
            "--disable_tqdm",
            "true",
        ]
    )
    out = tmp_path / "out"
    labels = ["cat", "owl", "zebra"]  # folder classes, sorted
    assert json.loads((out / "metrics.json").read_text())["labels"] == labels
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "cat", "1": "owl", "2": "zebra"}
    assert "| 2 | zebra |" in (out / "README.md").read_text()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "backbone")  # absolute
    monkeypatch.chdir("/")  # another working directory
    model = load_image_classifier(str(out))
    assert model.config.id2label == {0: "cat", 1: "owl", 2: "zebra"}
    with torch.no_grad():
        logits = model(pixel_values=torch.zeros(1, 3, 32, 32), interpolate_pos_encoding=True).logits
    assert logits.shape == (1, 3)


def test_head_learning_rate_puts_the_head_in_groups_of_its_own(tiny_backbone, tmp_path):
    flags = ["--method", "c3a", "--peft_options", "block_size=8", "--target_modules", "q_proj,v_proj"]
    model_args, _, training = parse_args(
        [*flags, "--model_name_or_path", tiny_backbone, "--learning_rate", "0.3", "--head_learning_rate", "0.003"]
        + ["--output_dir", str(tmp_path)]
    )
    model, _ = build_model(model_args, ["a", "b"])
    optimizer = make_trainer(model, training, {"train": [], "validation": []}, {}).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert set(groups) == {n for n, p in model.named_parameters() if p.requires_grad}  # each once, none lost
    assert {n for n, (lr, _) in groups.items() if lr == 0.003} == {n for n in groups if is_head(n)}
    assert {lr for n, (lr, _) in groups.items() if not is_head(n)} == {0.3}
    assert [wd for n, (_, wd) in sorted(groups.items()) if is_head(n)] == [0.0, training.weight_decay]  # bias, weight


@pytest.mark.parametrize("variant", ["linear", "lora r=2", "c3a block_size=8"])
def test_the_bench_head_rate_and_kadapt_train_pick_the_same_head(tiny_backbone, variant):
    # `kadapt bench --head_lr` gives the engine a name prefix, `kadapt train --head_learning_rate` asks is_head
    from peft_kadapt.training.methods import head_prefix

    model, is_peft = build_model(parse_variant(variant, model_name_or_path=tiny_backbone), ["a", "b"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n in names if is_head(n)]
    assert head and head == [n for n in names if n.startswith(head_prefix(is_peft))]


def test_head_learning_rate_is_checked(capsys):
    with pytest.raises(ValueError, match="--head_learning_rate must be above 0, got 0.0"):
        parse_args(["--method", "lora", "--head_learning_rate", "0", "--output_dir", "x"])
    with pytest.raises(SystemExit):
        parse_args(["--method", "linear", "--head_learning_rate", "0.01", "--output_dir", "x"])
    assert "--head_learning_rate: the linear probe trains the head only" in capsys.readouterr().err
