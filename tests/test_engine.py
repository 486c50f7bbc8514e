"""The training engine follows the Trainer's recipe step for step: a learning rate means the same everywhere."""

import json

import pytest
import torch
import transformers
from datasets import Dataset
from peft import get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Trainer

import peft_kadapt
from peft_kadapt.training import (
    ModelArguments,
    Recipe,
    build_model,
    evaluate,
    few_shot,
    fit,
    image_normalization,
    image_transform,
    load_image_dataset,
    pos_encoding_kwargs,
    to_tensors,
)
from peft_kadapt.training.bench.protocol import read_records
from peft_kadapt.training.cli import main as kadapt

from conftest import make_vit


def trained_pair(recipe: Recipe, n_examples: int = 37):
    """The same model trained by the engine and by the Trainer on the same data."""
    torch.manual_seed(0)
    x, y = torch.randn(n_examples, 3, 32, 32), torch.randint(0, 3, (n_examples,))

    def build():
        transformers.set_seed(recipe.seed)
        return get_peft_model(make_vit(), peft_kadapt.KAdaptationConfig(n=4, modules_to_save=["classifier"]))

    engine = build()
    fit(engine, x, y, recipe)
    trainer_model = build()
    data = Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.numpy()}).with_format("torch")
    args = recipe.training_arguments("unused", save_strategy="no", logging_strategy="no", disable_tqdm=True)
    Trainer(model=trainer_model, args=args, train_dataset=data).train()
    return engine, trainer_model, build()


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(3e-3, max_steps=7, batch_size=8, seed=3),  # crosses an epoch boundary (5 batches per epoch)
        Recipe(1e-2, max_steps=4, batch_size=16, weight_decay=0.1, lr_scheduler_type="linear", warmup_steps=1),
    ],
)
def test_engine_and_trainer_reach_the_same_weights(recipe):
    engine, trainer_model, untrained = trained_pair(recipe)
    moved = 0
    for (name, a), (_, b), (_, c) in zip(
        engine.named_parameters(), trainer_model.named_parameters(), untrained.named_parameters()
    ):
        if a.requires_grad:
            torch.testing.assert_close(a, b, msg=name)
            moved += not torch.equal(a, c)
    assert moved >= 10  # every adapter factor and the head trained


def test_prefix_learning_rates_set_the_rate_of_the_parameters_they_name():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, 32, 32), torch.randint(0, 3, (20,))

    def trained(recipe):
        transformers.set_seed(0)
        model = get_peft_model(make_vit(), peft_kadapt.KAdaptationConfig(n=4, modules_to_save=["classifier"]))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        fit(model, x, y, recipe)
        return before, dict(model.named_parameters())

    before, after = trained(
        Recipe(1e-2, max_steps=3, batch_size=8, prefix_learning_rates=(("base_model.model.classifier", 0.0),))
    )
    head = [n for n in before if ".classifier." in n]
    assert head and all(torch.equal(before[n], after[n]) for n in head)  # a rate of 0: the head did not move
    assert all(not torch.equal(before[n], after[n]) for n in before if "kadapt_" in n and ".classifier." not in n)
    _, every = trained(Recipe(3e-3, max_steps=3, batch_size=8, weight_decay=0.1, prefix_learning_rates=(("", 1e-2),)))
    _, plain = trained(Recipe(1e-2, max_steps=3, batch_size=8, weight_decay=0.1))
    for name in before:  # a prefix matching every parameter is the same as that learning rate, schedule and decay
        torch.testing.assert_close(every[name], plain[name], msg=name)
    with pytest.raises(ValueError, match="prefix_learning_rates: the Trainer trains every parameter at one"):
        Recipe(1e-3, 3, prefix_learning_rates=(("", 1e-2),)).training_arguments("unused")
    with pytest.raises(ValueError, match=r"no trainable parameter's name starts with \['classifier\.'\]"):
        trained(Recipe(1e-2, max_steps=3, batch_size=8, prefix_learning_rates=(("classifier.", 0.0),)))  # PEFT's names


SPLIT = "--shots 5 --test_per_class 7 --resolution 32".split()


def kadapt_train(backbone, out, steps: int):
    """`kadapt train` on the digits split the bench uses, for `steps` steps at lr 3e-3, no selection."""
    flags = f"--dataset_name digits --kadapt_n 4 --learning_rate 3e-3 --max_steps {steps} --val_pool 3"
    flags += " --eval_strategy no --save_strategy no --load_best_model_at_end false --disable_tqdm true"
    kadapt(["train", "--model_name_or_path", backbone, *flags.split(), *SPLIT, "--output_dir", str(out)])


@pytest.mark.slow
def test_bench_and_kadapt_train_agree_on_the_same_split(tiny_backbone, tmp_path):
    bench = "--datasets digits --seeds 0 --steps 6 --val_per_class 3 --workers 1 --speed_rounds 0"
    kadapt(
        [
            "bench",
            "--model_name_or_path",
            tiny_backbone,
            *bench.split(),
            "--methods",
            "kadaptation n=4",
            "--grid",
            "kadaptation n=4=3e-3",
            *SPLIT,
            "--output_dir",
            str(tmp_path / "bench"),
        ]
    )
    (record,) = read_records(tmp_path / "bench" / "records.jsonl")
    kadapt_train(tiny_backbone, tmp_path / "train", steps=6)
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(record.test_accuracy, abs=1e-6)
    assert metrics["validation_accuracy"] == pytest.approx(record.validation_accuracy, abs=1e-6)
    assert metrics["test_images"] == record.test_images == 70


def test_evaluate_scores_in_eval_mode_without_gradient():
    model = make_vit().train()
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    scores = evaluate(model, x, y, batch=2)
    logits = model.eval()(pixel_values=x).logits
    assert scores.accuracy == (logits.argmax(-1) == y).float().mean().item()
    assert scores.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no trainable parameter"):
        fit(model.requires_grad_(False), x, y, Recipe(1e-3, 1))


@pytest.mark.slow
def test_saved_adapter_of_kadapt_train_equals_the_engine_weights(tiny_backbone, tmp_path):
    """Same split, same recipe: the adapter file `kadapt train` writes holds the engine's weights."""
    kadapt_train(tiny_backbone, tmp_path, steps=5)
    source = load_image_dataset("digits")
    splits = few_shot(source, 5, seed=0, test_per_class=7, val_pool=3)
    x, y = to_tensors(splits["train"], image_transform(*image_normalization(tiny_backbone), 32))
    transformers.set_seed(0)
    model, _ = build_model(
        ModelArguments(model_name_or_path=tiny_backbone, kadapt_n=4), source["train"].features["label"].names
    )
    fit(model, x, y, Recipe(3e-3, 5), pos_encoding_kwargs(model, 32))
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for key, value in get_peft_model_state_dict(model).items():
        torch.testing.assert_close(saved[key], value, msg=key)
