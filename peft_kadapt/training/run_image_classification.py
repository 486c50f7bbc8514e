#!/usr/bin/env python
"""Fine-tune an image classifier with KAdaptation (or LoRA, LoKr, a linear probe, BitFit, full fine-tuning) with the
transformers Trainer, offline or from the Hub.

    kadapt train --dataset_name mnist5k --shots 20 --output_dir outputs/mnist5k-kadaptation
    kadapt train --dataset_name mnist5k --method lora --lora_r 8 --output_dir outputs/mnist5k-lora
    python -m peft_kadapt.training.run_image_classification ...   # the same program
    kadapt train args.json     # or args.yaml: every argument from a file, same defaults as the flags

The checkpoint is chosen on the validation split; the test split is evaluated once, at the end. Every
`transformers.TrainingArguments` option works (`--learning_rate`, `--num_train_epochs`, `--resume_from_checkpoint`,
...), with the defaults below. The learning rate defaults to the method's (`peft_kadapt.training.METHODS`).
"""

from __future__ import annotations

import contextlib
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
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.training_args import ParallelMode

from peft_kadapt.hub import write_model_card
from peft_kadapt.training import (
    METHODS,
    ModelArguments,
    Recipe,
    build_model,
    check_resolution,
    claim_output_dir,
    few_shot,
    get_method,
    image_normalization,
    image_transform,
    is_head,
    load_accuracy,
    load_checkpoint_weights,
    load_image_dataset,
    plot_training_curve,
    pos_encoding_kwargs,
    staged,
)
from peft_kadapt.training.engine import rate_groups
from peft_kadapt.training.flags import require_counts
from peft_kadapt.training.logs import setup_logging


logger = logging.getLogger(__name__)


LEAVE_OUT = "; leave it out for the default"


@dataclass
class DataTrainingArguments:
    """Which images, how many, at what resolution."""

    dataset_name: str = field(
        default="mnist5k", metadata={"help": "fashion_mnist, mnist5k, textiles, digits, a Hub id or an image folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    image_column_name: str = field(default="image", metadata={"help": "Image column of the source."})
    label_column_name: str = field(default="label", metadata={"help": "Label column of the source."})
    shots: int = field(default=20, metadata={"help": "Images per class (validation included); 0 = all."})
    val_shots: int | None = field(
        default=None, metadata={"help": "Validation images per class carved from the shots (default: a fifth)."}
    )
    val_pool: int | None = field(
        default=None,
        metadata={"help": "Instead: validation images per class drawn outside the shots (extra labelled images)."},
    )
    test_per_class: int | None = field(
        default=50, metadata={"help": "Test images per class (held out of the pool if there is no test split)."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the few-shot sampling."})
    resolution: int = field(default=112, metadata={"help": "Input resolution in pixels."})

    def __post_init__(self):
        # Checked here, where the message can name the flag; `few_shot` keeps its own checks for library callers.
        if self.shots < 0:
            raise ValueError(
                f"--shots must be 0 or more (images per class, validation included; 0 = every training image), "
                f"got {self.shots}."
            )
        require_counts(self, ("val_shots", "val_pool", "test_per_class", "resolution"), hint=LEAVE_OUT)
        if self.val_shots is not None and self.val_pool is not None:
            raise ValueError(
                "--val_shots and --val_pool are alternatives (validation carved from the shots, or drawn outside "
                "them); pass one of them."
            )


@dataclass
class ImageClassificationTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of this program: select on validation accuracy every epoch."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where the adapter, metrics and card go."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (default: the method's, from the method table)."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the new classification head, in parameter groups of its own (default: "
            "--learning_rate). For adapters that train at 1e-1 or more (c3a, fourierft), whose default rates assume "
            "the head at 3e-3: docs/training.md."
        },
    )
    num_train_epochs: float = field(default=15.0, metadata={"help": "Training epochs."})
    # the recipe's defaults (one place: the engine's Recipe, also the Accelerate example's, checked by a test)
    per_device_train_batch_size: int = field(
        default=Recipe.batch_size, metadata={"help": "Training batch size per device."}
    )
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    weight_decay: float = field(
        default=Recipe.weight_decay, metadata={"help": "AdamW weight decay (not on biases and norms)."}
    )
    lr_scheduler_type: str = field(default=Recipe.lr_scheduler_type, metadata={"help": "Learning-rate schedule."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint on validation."})
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "The metric that selects."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the image column for the transform."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and data order."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the files of an earlier run in --output_dir (others are kept)."}
    )

    def __post_init__(self):
        # Values the Trainer would take without a word (learning rate 0, 0 epochs: an untrained model saved as a
        # result) or refuse only later, in its data loader, without naming the flag.
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(
                f"--learning_rate must be above 0, got {self.learning_rate}; leave it out for the method's default."
            )
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(
                f"--head_learning_rate must be above 0, got {self.head_learning_rate}; leave it out to train the head "
                "at --learning_rate."
            )
        if self.metric_for_best_model is not None and self.metric_for_best_model.removeprefix("eval_") not in (
            "accuracy",
            "loss",
        ):
            raise ValueError(
                f"--metric_for_best_model {self.metric_for_best_model}: this program measures accuracy and loss; pass "
                "accuracy (the default) or loss."
            )
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError(f"--num_train_epochs must be above 0 (or pass --max_steps), got {self.num_train_epochs}.")
        require_counts(self, ("per_device_train_batch_size", "per_device_eval_batch_size"), hint=LEAVE_OUT)
        if not torch.cuda.is_available():  # pinned memory only helps copies to a GPU; without one torch warns
            self.dataloader_pin_memory = False
        super().__post_init__()


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, ImageClassificationTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = file_to_argv(parser, argv[0])
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if model_args.method not in METHODS:
        parser.error(f"--method must be one of {', '.join(METHODS)}, got {model_args.method!r}")
    if training_args.learning_rate is None:
        training_args.learning_rate = METHODS[model_args.method].learning_rate
    if training_args.head_learning_rate is not None and model_args.method == "linear":
        parser.error("--head_learning_rate: the linear probe trains the head only; set its rate with --learning_rate")
    return model_args, data_args, training_args


def file_to_argv(parser, path: str) -> list[str]:
    """The keys of a JSON or YAML arguments file as the flags they name, so that the file's values are converted and
    checked exactly as typed flags are (YAML reads `1e-3` as a string; a JSON list stands for a comma-separated flag)."""
    import yaml

    text = Path(path).read_text()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got {type(data).__name__}.")
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(data) - set(actions))
    if unknown:
        raise ValueError(f"Some keys are not used by the HfArgumentParser: {unknown} (in {path}).")
    argv = []
    for key, value in data.items():
        if value is None:  # null: the flag's default
            continue
        many = actions[key].nargs in ("+", "*")
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)] if many else [f"--{key}", ",".join(map(str, value))]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(argv)
    setup_logging()
    check_launch(training_args)
    # One run per output directory: an earlier run's files are refused unless --overwrite_output_dir, files this
    # program did not write are never replaced, a resumed run must be the folder's own, and a second run started into
    # the same directory fails at once.
    check_folders(model_args, training_args)
    resuming = training_args.resume_from_checkpoint is not None
    run = {"command": "kadapt train", "method": model_args.method}
    claim = claim_output_dir(training_args.output_dir, training_args.overwrite_output_dir, resuming, run)
    with claim if training_args.process_index == 0 else contextlib.nullcontext():
        return train_and_test(model_args, data_args, training_args)


def check_launch(training_args) -> None:
    """Refuse a launch of several processes (e.g. torchrun) that the Trainer would not train as one data-parallel run.
    On a machine without a GPU, Accelerate joins them only with --use_cpu: without it each process trains alone, and
    with --ddp_backend gloo alone each trains its own model on its share of the batches (nothing averages gradients).
    FSDP and DeepSpeed it runs only on GPUs (on CPU, --fsdp gave plain data parallelism and --deepspeed failed)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched == 1:
        return
    joined = training_args.parallel_mode == ParallelMode.DISTRIBUTED and training_args.world_size == launched
    started = f"kadapt train was started as {launched} processes (WORLD_SIZE={launched})"
    engine = "--deepspeed" if training_args.deepspeed else "--fsdp" if training_args.fsdp else None
    if engine and not (joined and training_args.distributed_state.distributed_type not in ("NO", "MULTI_CPU")):
        raise ValueError(
            f"{started} with {engine}, but Accelerate runs FSDP and DeepSpeed only on GPUs. On a machine without a "
            f"GPU, leave {engine} out and pass --use_cpu true for data parallelism over gloo."
        )
    if not joined:
        raise ValueError(
            f"{started}, but the Trainer does not run them as one data-parallel run: no process would average its "
            "gradients with the others, and the run would save one process's model. On a machine without a GPU, pass "
            "--use_cpu true (the processes then join over gloo); or start one process."
        )


def check_folders(model_args, training_args) -> None:
    """Refuse, by flag, an --output_dir that is the model's own folder, and a checkpoint to resume from that is
    missing, lies in another run's folder or was written by another kind of method."""
    output_dir = Path(training_args.output_dir).resolve()
    if Path(model_args.model_name_or_path).resolve() == output_dir:
        raise ValueError(
            f"--output_dir {training_args.output_dir} is the folder of --model_name_or_path: the run would write over "
            "the model it starts from. Choose another --output_dir."
        )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        return
    if not Path(checkpoint).is_dir():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such folder.")
    if Path(checkpoint).resolve().parent != output_dir:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} is a checkpoint of another run's folder, not of --output_dir "
            f"{training_args.output_dir}: resume with that run's --output_dir."
        )
    saved = (
        json.loads(config.read_text()).get("peft_type")
        if (config := Path(checkpoint) / "adapter_config.json").is_file()
        else None
    )
    expected = get_method(model_args.method).peft_type
    if saved != expected:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was written by a {saved or 'model without adapter'} run, not by "
            f"--method {model_args.method}: resume with the method that wrote it."
        )


def train_and_test(model_args, data_args, training_args) -> dict:
    start = time.perf_counter()
    transformers.set_seed(training_args.seed)
    splits = load_splits(data_args)
    # Model: the backbone with a new head, adapted as the method table says.
    model, is_peft = build_model(model_args, splits["train"].features["label"].names)
    check_resolution(model.config, data_args.resolution)
    transform = image_transform(*image_normalization(model_args.model_name_or_path), data_args.resolution)
    for split in splits.values():
        split.set_transform(transform)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("%s: %s trainable of %s parameters", model_args.method, f"{trainable:,}", f"{total:,}")
    extra = pos_encoding_kwargs(model, data_args.resolution)
    trainer = make_trainer(model, training_args, splits, extra, scale_flag(model_args.method))
    # Train, choosing the checkpoint on validation; then test once. Models without adapter: the Trainer's own reload
    # misses the names transformers 5 renames, so load them here.
    if training_args.resume_from_checkpoint and not is_peft:
        load_checkpoint_weights(model, training_args.resume_from_checkpoint)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    best = trainer.state.best_model_checkpoint
    if training_args.load_best_model_at_end and best and not is_peft:
        load_checkpoint_weights(trainer.model, best)  # exactly the chosen checkpoint, encoder included
    validation = trainer.evaluate(splits["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")
    metrics = save_run(trainer, model_args, data_args, training_args, is_peft, splits, (validation, test), start)
    summary = ("method", "test_accuracy", "validation_accuracy", "trainable_parameters")
    print(json.dumps({k: metrics[k] for k in summary}))
    return metrics


def load_splits(data_args):
    """A class-balanced few-shot split (train / validation / test) of an offline dataset, a folder or a Hub id."""
    load_kwargs = {"name": data_args.dataset_config_name} if data_args.dataset_config_name else {}
    source = load_image_dataset(
        data_args.dataset_name, data_args.image_column_name, data_args.label_column_name, **load_kwargs
    )
    return few_shot(
        source,
        data_args.shots or None,
        seed=data_args.sampling_seed,
        val_shots=data_args.val_shots,
        test_per_class=data_args.test_per_class,
        val_pool=data_args.val_pool,
    )


def make_trainer(model, training_args, splits, extra: dict, scale_flag: str | None = None) -> Trainer:
    accuracy = load_accuracy()  # evaluate's accuracy, from the Hub or the copy shipped with peft_kadapt

    def compute_metrics(eval_pred) -> dict:
        logits, labels = eval_pred
        return accuracy.compute(predictions=np.argmax(logits, axis=-1), references=labels)

    def collate(examples):
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        return {"pixel_values": pixel_values, "labels": torch.tensor([e["labels"] for e in examples]), **extra}

    return HeadRateTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate,
        compute_metrics=compute_metrics,
        callbacks=[StopWhenDiverged(scale_flag)],
    )


def scale_flag(method: str) -> str | None:
    """The flag that sets `method`'s adapter scale, as a user would write it (None: the method has none)."""
    field_name = METHODS[method].alpha_field
    if field_name is None:
        return None
    return f"--{field_name}" if METHODS[method].options_class is None else f"--peft_options {field_name}=..."


def most_over_processes(count: int, device) -> int:
    """`count`, or its largest value over the processes of a distributed run (FSDP shards the weights, so a NaN can
    sit in one rank's shard only)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return count
    value = torch.tensor([count], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


FSDP1_PREFIX = "_fsdp_wrapped_module."  # what FSDP1's wrappers add to parameter names


class StopWhenDiverged(TrainerCallback):
    """Stops the run with an error that names `--learning_rate` as soon as a trainable tensor holds NaN or inf:
    checked before every log, evaluation and checkpoint and at the last step, so no checkpoint of a diverged model is
    written and no metric of one is reported (the Trainer would go on, log losses with the non-finite steps filtered
    out, and choose among checkpoints that all score at chance). `scale_flag`: how to lower the adapter's scale."""

    def __init__(self, scale_flag: str | None = None):
        self.scale_flag = scale_flag

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = control.should_log or control.should_evaluate or control.should_save
        if model is not None and (due or state.global_step >= state.max_steps):
            # ZeRO-3 keeps a rank's shard in `ds_tensor` (the parameter itself is empty outside forward and backward)
            local = [(n, getattr(p, "ds_tensor", p)) for n, p in model.named_parameters() if p.requires_grad]
            broken = [n.replace(FSDP1_PREFIX, "") for n, values in local if not torch.isfinite(values).all()]
            if most_over_processes(len(broken), args.device):  # each rank checks its shard; all stop together
                raise ValueError(self.message(args, state, broken))

    on_epoch_end = on_step_end  # the epoch strategies (this program's defaults) set their flags here

    def message(self, args, state, broken: list[str]) -> str:
        rates = f"--learning_rate {args.learning_rate:g}"
        if getattr(args, "head_learning_rate", None) is not None:
            rates += f", --head_learning_rate {args.head_learning_rate:g}"
        scale = f" or the adapter's scale ({self.scale_flag})" if self.scale_flag else ""
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        kept = f"its last checkpoint, {last}, is from before the divergence" if last else "no checkpoint was written"
        what = f"{len(broken)} trainable tensors hold" if broken else "trainable tensors of another process hold"
        first = f" (first: {broken[:3]})" if broken else ""
        return (
            f"Training diverged: after step {state.global_step} (epoch {state.epoch or 0:.3g}) {what} NaN or infinite "
            f"values{first}. Lower the learning rate ({rates}){scale} and train again; no metrics or adapter of this "
            f"run were written, and {kept}."
        )


class HeadRateTrainer(Trainer):
    """The Trainer, with the new head's parameters at `--head_learning_rate` when it is given (the Trainer's optimiser
    and weight-decay groups, each split by rate as `kadapt bench --head_lr` splits them; the schedule scales every
    group alike)."""

    def create_optimizer(self, model=None):
        head_lr, lr = self.args.head_learning_rate, self.args.learning_rate
        if self.optimizer is None and head_lr is not None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            decay = set(self.get_decay_parameter_names(model))
            rate = lambda name: head_lr if is_head(name) else lr  # noqa: E731
            groups = rate_groups(trainable, decay, self.args.weight_decay, rate, [lr, head_lr])
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)


def save_run(trainer, model_args, data_args, training_args, is_peft, splits, scores, start: float) -> dict:
    """The chosen weights, the metrics, the training curve, the head's config and a model card; files appear complete
    or not at all. Returns the metrics."""
    model = trainer.model
    with staged(training_args.output_dir, trainer.is_world_process_zero()) as staging:
        trainer.save_model(str(staging))
        metrics = collect_metrics(model_args, data_args, training_args, model, is_peft, splits, *scores)
        metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
        metrics["wall_time_s"] = round(time.perf_counter() - start, 1)
        if trainer.is_world_process_zero():
            if is_peft:  # the head's classes travel with the adapter: its config (id2label, label2id) beside it
                model.get_base_model().config.save_pretrained(staging)
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
            plot_training_curve(trainer.state.log_history, staging / "training_curve.png", title=model_args.method)
            if is_peft:
                write_model_card(staging, metrics=metrics)
    return metrics


def collect_metrics(model_args, data_args, training_args, model, is_peft, splits, validation, test) -> dict:
    weights = (
        Path(training_args.output_dir) / ".staging" / ("adapter_model.safetensors" if is_peft else "model.safetensors")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "method": model_args.method,
        "model_name_or_path": model_args.model_name_or_path,
        "dataset": data_args.dataset_name,
        "shots": data_args.shots or None,
        "sampling_seed": data_args.sampling_seed,
        "resolution": data_args.resolution,
        "train_images": len(splits["train"]),
        "validation_images": len(splits["validation"]),
        "test_images": len(splits["test"]),
        "labels": splits["train"].features["label"].names,  # the classes, in the order of the head's outputs
        "validation_accuracy": validation["validation_accuracy"],
        "test_accuracy": test["test_accuracy"],
        "trainable_parameters": trainable,
        "head_parameters": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and is_head(n)),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "saved_file": weights.name,
        "saved_file_bytes": weights.stat().st_size if weights.exists() else None,
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "learning_rate": training_args.learning_rate,
        "head_learning_rate": training_args.head_learning_rate,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
    }


if __name__ == "__main__":
    main()
