#!/usr/bin/env python
"""Fine-tune a vision transformer for image classification with KAdaptation and the transformers Trainer.

Needs: peft-kadapt, peft, transformers, datasets, evaluate, accelerate (and Pillow). Copy it and edit it.

    # an image folder (one sub-folder per class), validation carved from it
    python run_image_classification.py --model_name_or_path google/vit-base-patch16-224-in21k \\
        --train_dir path/to/images --output_dir outputs/kadaptation --do_train --do_eval
    # a dataset on the Hub
    python run_image_classification.py --model_name_or_path facebook/dinov2-small --dataset_name beans \\
        --output_dir outputs/beans --do_train --do_eval
    # every argument from a file
    python run_image_classification.py args.json

`--kadapt_n`, `--kadapt_r`, `--kadapt_alpha` and `--target_modules` set the adapter; every `TrainingArguments` option
works (`--learning_rate`, `--num_train_epochs`, `--bf16`, ...). The adapter and the new head are saved to
`--output_dir`; load them with `import peft_kadapt` and `PeftModel.from_pretrained`.
"""

import logging
import os
import random
import sys
from dataclasses import dataclass, field

import datasets
import evaluate
import numpy as np
import torch
import transformers
from datasets import load_dataset
from peft import get_peft_model
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from peft_kadapt import KAdaptationConfig


logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Which images to train and evaluate on."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the Hub (or a local dataset script)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training images, one folder per class."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images, likewise."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Share of train held out when there is no validation."}
    )
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training (to debug quickly)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation likewise."})
    random_flip: bool = field(default=True, metadata={"help": "Flip training images left-right at random."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None:
            raise ValueError("Pass --dataset_name (a Hub dataset) or --train_dir (a folder of images).")


@dataclass
class ModelArguments:
    """Which backbone, and the KAdaptation adapter put on it."""

    model_name_or_path: str = field(metadata={"help": "A Hub id or a local folder of a transformers image model."})
    kadapt_n: int = field(default=8, metadata={"help": "KAdaptation: number of Kronecker terms n."})
    kadapt_r: int = field(default=1, metadata={"help": "KAdaptation: rank r of each fast product."})
    kadapt_alpha: float | None = field(default=None, metadata={"help": "KAdaptation: scale (default: the config's)."})
    target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names to adapt (default: the q and v projections)."}
    )
    metric: str = field(default="accuracy", metadata={"help": "An `evaluate` metric: a Hub name or a local script."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and datasets go."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})


def load_images(data_args: DataTrainingArguments, cache_dir: str | None) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    else:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    if "validation" not in dataset and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=0)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def image_transforms(processor, random_flip: bool):
    """Train: a random crop of 70-100 % of the image, resized, flipped at random; eval: resized. Both normalised."""
    size = processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)

    def to_tensor(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - mean) / std

    def augment(image: Image.Image) -> Image.Image:
        scale = random.uniform(0.7, 1.0)
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        left, top = random.randint(0, image.width - w), random.randint(0, image.height - h)
        image = image.crop((left, top, left + w, top + h))
        return image.transpose(Image.FLIP_LEFT_RIGHT) if random_flip and random.random() < 0.5 else image

    def train(batch):
        batch["pixel_values"] = [to_tensor(augment(image)) for image in batch["image"]]
        return batch

    def evaluation(batch):
        batch["pixel_values"] = [to_tensor(image) for image in batch["image"]]
        return batch

    return train, evaluation


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    training_args.remove_unused_columns = (
        False  # the transforms read the "image" column, which the model does not take
    )

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    # Data: one split to train on, one to evaluate on; the class names come from the training split.
    dataset = load_images(data_args, model_args.cache_dir)
    for name in ("image", "label"):
        column = getattr(data_args, f"{name}_column_name")
        if column != name:
            dataset = dataset.rename_column(column, name)
    labels = dataset["train"].features["label"].names
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))

    metric = evaluate.load(model_args.metric, cache_dir=model_args.cache_dir)

    def compute_metrics(eval_pred):
        return metric.compute(predictions=np.argmax(eval_pred.predictions, axis=1), references=eval_pred.label_ids)

    # Model: the backbone with a new head for these classes, adapted with KAdaptation; only the adapter and the head
    # train (the head through `modules_to_save`, which also saves it with the adapter).
    processor = AutoImageProcessor.from_pretrained(
        model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
    )
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(labels),
        label2id=label2id,
        id2label=id2label,
        ignore_mismatched_sizes=True,  # the checkpoint's head, if any, has other classes
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    config = KAdaptationConfig(
        n=model_args.kadapt_n,
        r=model_args.kadapt_r,
        alpha=model_args.kadapt_alpha,
        target_modules=model_args.target_modules.split(",") if model_args.target_modules else None,
        modules_to_save=["classifier"],
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

    train_transforms, eval_transforms = image_transforms(processor, data_args.random_flip)
    if training_args.do_train:
        if data_args.max_train_samples is not None:
            dataset["train"] = (
                dataset["train"].shuffle(seed=training_args.seed).select(range(data_args.max_train_samples))
            )
        dataset["train"].set_transform(train_transforms)
    if training_args.do_eval:
        if "validation" not in dataset:
            raise ValueError("--do_eval needs a validation split: pass --validation_dir or --train_val_split > 0.")
        if data_args.max_eval_samples is not None:
            dataset["validation"] = (
                dataset["validation"].shuffle(seed=training_args.seed).select(range(data_args.max_eval_samples))
            )
        dataset["validation"].set_transform(eval_transforms)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"] if training_args.do_train else None,
        eval_dataset=dataset["validation"] if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=processor,
        data_collator=collate_fn,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # adapter_config.json, the adapter and the head, the image processor
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
