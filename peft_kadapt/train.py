"""Fine-tune an image classifier with KAdaptation (or a baseline) through the transformers Trainer.

One code path for every method (`kadaptation`, `lora`, `lokr`, `linear` probe, `full` fine-tuning), so comparisons
share data, preprocessing, schedule and evaluation. The checkpoint is chosen on the validation split; the test split
is evaluated once, at the end. Used by `kadapt train` and `examples/image_classification/run_image_classification.py`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForImageClassification, HfArgumentParser, Trainer, TrainingArguments

from .data import few_shot, image_transform, load_image_dataset
from .pretrained import DINOV2_SMALL_ALIAS, IMAGENET_MEAN, IMAGENET_STD, resolve_model


logger = logging.getLogger(__name__)
METHODS = ("kadaptation", "lora", "lokr", "linear", "bitfit", "full")
# Learning rate per method when --learning_rate is not given: the value `kadapt bench` chose most often in the
# few-shot suite of docs/benchmarks.md (50 AdamW steps, batch 16, DINOv2 ViT-S/14 at 56 px).
DEFAULT_LEARNING_RATES = {
    "kadaptation": 3e-3,
    "lora": 3e-3,
    "lokr": 1e-2,
    "linear": 1e-2,
    "bitfit": 1e-3,
    "full": 1e-5,
}
HEAD = "classifier"


@dataclass
class ModelArguments:
    """Which backbone, and how to adapt it."""

    model_name_or_path: str = field(
        default=DINOV2_SMALL_ALIAS,
        metadata={"help": f"Hub id, local path, or the offline alias {DINOV2_SMALL_ALIAS!r}."},
    )
    method: str = field(default="kadaptation", metadata={"help": f"One of {METHODS} (bitfit: biases and head)."})
    target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names to adapt; q/v projections when unset."}
    )
    kadapt_n: int = field(default=8, metadata={"help": "KAdaptation: number of Kronecker terms n."})
    kadapt_r: int = field(default=1, metadata={"help": "KAdaptation: rank r of each fast product."})
    kadapt_alpha: float = field(default=4.0, metadata={"help": "KAdaptation: scaling = alpha / sqrt(n r)."})
    share_slow_weights: str = field(default="per_target", metadata={"help": "per_target, global or none."})
    kadapt_slow_rank: int | None = field(
        default=None, metadata={"help": "KAdaptation: rank of each slow matrix A_i (None = full n x n)."}
    )
    kadapt_config: str | None = field(
        default=None,
        metadata={"help": "A saved KAdaptationConfig (a directory with adapter_config.json, e.g. the one "
                          "`kadapt intrinsic-dim` recommends); replaces the other --kadapt_* and --target_modules flags."},
    )  # fmt: skip
    report_parameters: bool = field(
        default=False,
        metadata={"help": "Print the trainable parameters the KAdaptation config would create (per target and "
                          "sharing group, beside LoRA at --lora_r) and exit without training."},
    )  # fmt: skip
    parameter_budget: int | None = field(
        default=None,
        metadata={"help": "With --report_parameters: also propose (n, r, slow_rank) fitting this budget."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA / LoKr rank."})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA / LoKr alpha."})


@dataclass
class DataArguments:
    """Which images, how many, at what resolution."""

    dataset_name: str = field(
        default="mnist5k", metadata={"help": "fashion_mnist, mnist5k, textiles, digits, a Hub id or an image folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    image_column_name: str = field(default="image", metadata={"help": "Image column of the source."})
    label_column_name: str = field(default="label", metadata={"help": "Label column of the source."})
    shots: int | None = field(default=20, metadata={"help": "Images per class (validation included); 0 = all."})
    val_shots: int | None = field(default=None, metadata={"help": "Validation images per class from the shots."})
    val_pool: int | None = field(
        default=None,
        metadata={"help": "Instead: validation images per class drawn outside the shots (extra labelled images)."},
    )
    test_per_class: int | None = field(
        default=50, metadata={"help": "Test images per class (held out of the pool if there is no test split)."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the few-shot sampling."})
    resolution: int = field(default=112, metadata={"help": "Input resolution in pixels."})


def default_training_arguments(output_dir: str = "outputs/run") -> dict:
    return dict(
        output_dir=output_dir, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy", greater_is_better=True, save_total_limit=2, num_train_epochs=15,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=1e-3, weight_decay=0.01,
        lr_scheduler_type="cosine", warmup_steps=0, logging_strategy="epoch", remove_unused_columns=False,
        report_to=[], seed=0, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip


def build_model(model_args: ModelArguments, names: list[str]):
    """The backbone with a new head and the chosen method applied; returns (model, is_peft)."""
    from peft import LoKrConfig, LoraConfig, get_peft_model

    from .config import TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING, KAdaptationConfig

    if model_args.method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {model_args.method!r}.")
    path = resolve_model(model_args.model_name_or_path)
    labels = dict(enumerate(names))
    model = AutoModelForImageClassification.from_pretrained(
        path, num_labels=len(names), id2label=labels, label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True,
    )  # fmt: skip
    if not hasattr(model, HEAD):
        raise ValueError(f"{type(model).__name__} has no `{HEAD}` head; only classifiers with one are supported.")
    if model_args.target_modules:
        targets = [t.strip() for t in model_args.target_modules.split(",") if t.strip()]
    else:
        targets = TRANSFORMERS_MODELS_TO_KADAPTATION_TARGET_MODULES_MAPPING.get(model.config.model_type)
        if targets is None:
            raise ValueError(f"No default target modules for model type {model.config.model_type!r}: pass "
                             "--target_modules.")  # fmt: skip
    if model_args.method == "full":
        return model, False
    if model_args.method in ("linear", "bitfit"):  # bitfit: the head and every bias
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(HEAD + ".") or (
                model_args.method == "bitfit" and name.endswith(".bias")
            )
        return model, False
    if model_args.method == "kadaptation" and model_args.kadapt_config:
        config = KAdaptationConfig.from_pretrained(model_args.kadapt_config)
        config.modules_to_save = [HEAD]
    elif model_args.method == "kadaptation":
        config = KAdaptationConfig(
            n=model_args.kadapt_n, r=model_args.kadapt_r, alpha=model_args.kadapt_alpha, target_modules=targets,
            share_slow_weights=model_args.share_slow_weights, slow_rank=model_args.kadapt_slow_rank,
            modules_to_save=[HEAD],
        )  # fmt: skip
    elif model_args.method == "lora":
        config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, target_modules=targets,
                            modules_to_save=[HEAD])  # fmt: skip
    else:
        config = LoKrConfig(r=model_args.lora_r, alpha=model_args.lora_alpha, target_modules=targets,
                            modules_to_save=[HEAD])  # fmt: skip
    return get_peft_model(model, config), True


def pos_encoding_kwargs(model, resolution: int) -> dict:
    """`{"interpolate_pos_encoding": True}` when the input size differs from the checkpoint's and the model's forward
    takes that argument (ViT does; DINOv2 always interpolates and does not); else `{}`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_it = "interpolate_pos_encoding" in inspect.signature(type(base).forward).parameters
    return (
        {"interpolate_pos_encoding": True} if takes_it and resolution != getattr(base.config, "image_size", 0) else {}
    )


def make_collator(model, resolution: int):
    extra = pos_encoding_kwargs(model, resolution)

    def collate(examples):
        batch = {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }
        return {**batch, **extra}

    return collate


def compute_metrics(eval_pred) -> dict:
    # evaluate.load("accuracy") fetches its script from the Hub; accuracy is computed here to stay offline
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def run(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, quiet: bool = False
) -> dict:
    """Train, select on validation, test once; write the weights, metrics.json, a model card and a curve plot.

    `quiet=True` drops the Trainer's printed log lines (the logs still reach `trainer.state.log_history`)."""
    start = time.perf_counter()
    transformers.set_seed(training_args.seed)
    kwargs = {"name": data_args.dataset_config_name} if data_args.dataset_config_name else {}
    source = load_image_dataset(data_args.dataset_name, data_args.image_column_name, data_args.label_column_name,
                                **kwargs)  # fmt: skip
    shots = data_args.shots or None
    splits = few_shot(source, shots, seed=data_args.sampling_seed, val_shots=data_args.val_shots,
                      test_per_class=data_args.test_per_class, val_pool=data_args.val_pool)  # fmt: skip
    names = splits["train"].features["label"].names
    model, is_peft = build_model(model_args, names)
    mean, std = _normalisation(model_args.model_name_or_path)
    for split in splits.values():
        split.set_transform(image_transform(mean, std, data_args.resolution))
    trainable, total = count_parameters(model)
    logger.info("%s: %s trainable of %s parameters; %s", model_args.method, f"{trainable:,}", f"{total:,}",
                {k: len(v) for k, v in splits.items()})  # fmt: skip
    trainer = Trainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        data_collator=make_collator(model, data_args.resolution), compute_metrics=compute_metrics,
    )  # fmt: skip
    if quiet:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    best_val = trainer.evaluate(splits["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")  # once, after the choice on validation
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))
    weights = output_dir / ("adapter_model.safetensors" if is_peft else "model.safetensors")
    metrics = {
        "method": model_args.method,
        "model_name_or_path": model_args.model_name_or_path,
        "dataset": data_args.dataset_name,
        "shots": shots,
        "sampling_seed": data_args.sampling_seed,
        "resolution": data_args.resolution,
        "train_images": len(splits["train"]),
        "validation_images": len(splits["validation"]),
        "test_images": len(splits["test"]),
        "validation_accuracy": best_val["validation_accuracy"],
        "test_accuracy": test["test_accuracy"],
        "trainable_parameters": trainable,
        "head_parameters": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and HEAD in n),
        "total_parameters": total,
        "saved_file": weights.name,
        "saved_file_bytes": weights.stat().st_size if weights.exists() else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "learning_rate": training_args.learning_rate,
        "num_train_epochs": training_args.num_train_epochs,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
    }
    if trainer.is_world_process_zero():
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_training_curve(trainer.state.log_history, output_dir / "training_curve.png", title=model_args.method)
        if is_peft:
            from .hub import write_model_card

            write_model_card(output_dir, metrics=metrics)
    return metrics


def _normalisation(model_name_or_path: str) -> tuple[list[float], list[float]]:
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(resolve_model(model_name_or_path))
        return list(processor.image_mean), list(processor.image_std)
    except Exception:  # no processor config: ImageNet statistics, as ViT/DINOv2 use
        return IMAGENET_MEAN, IMAGENET_STD


def plot_training_curve(log_history: list[dict], path: Path, title: str = "") -> None:
    from ._plotting import pyplot

    plt = pyplot()
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e]
    val = [(e["epoch"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), label="validation accuracy", color="tab:orange", marker="o")
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
    ax.set_title(title)
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    defaults = default_training_arguments()
    given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
    for key, value in defaults.items():  # our defaults, unless given on the command line
        if key not in given:
            argv += [f"--{key}", "none" if value == [] else str(value)]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if "learning_rate" not in given:
        training_args.learning_rate = DEFAULT_LEARNING_RATES.get(model_args.method, training_args.learning_rate)
    return model_args, data_args, training_args


def report_parameters(model_args: ModelArguments) -> str:
    """The cost of the KAdaptation settings in `model_args` on its backbone (and budget proposals), as markdown."""
    from .budget import parameter_report, propose_configs
    from .config import KAdaptationConfig

    model = AutoModelForImageClassification.from_pretrained(resolve_model(model_args.model_name_or_path))
    targets = [t.strip() for t in model_args.target_modules.split(",")] if model_args.target_modules else None
    config = KAdaptationConfig(n=model_args.kadapt_n, r=model_args.kadapt_r, slow_rank=model_args.kadapt_slow_rank,
                               target_modules=targets, share_slow_weights=model_args.share_slow_weights)  # fmt: skip
    text = parameter_report(model, config, lora_rank=model_args.lora_r).to_markdown()
    if model_args.parameter_budget is not None:
        text += f"\n\nSettings within {model_args.parameter_budget:,d} parameters (most expressive first):\n"
        text += "| n | r | slow_rank | parameters | max rank of ΔW |\n|---|---|---|---|---|\n"
        for setting, report in propose_configs(model, model_args.parameter_budget, targets,
                                               model_args.share_slow_weights):  # fmt: skip
            text += f"| {setting['n']} | {setting['r']} | {setting['slow_rank']} | {report.total:,d} | {report.max_rank} |\n"
    return text


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(argv)
    if model_args.report_parameters:
        print(report_parameters(model_args))
        return {}
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])  # fmt: skip
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    metrics = run(model_args, data_args, training_args)
    print(json.dumps({k: metrics[k] for k in ("method", "test_accuracy", "validation_accuracy",
                                              "trainable_parameters", "saved_file_bytes", "wall_time_s")}))  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
