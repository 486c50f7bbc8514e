#!/usr/bin/env python
"""Fine-tune a vision transformer for image classification with KAdaptation in a plain Accelerate loop: one process,
several on one machine, or many GPUs on many nodes.

Needs: peft-kadapt, peft, transformers, datasets, evaluate, accelerate (and Pillow). Copy it and edit it.

    python run_image_classification_no_trainer.py --model_name_or_path facebook/dinov2-small --train_dir images \\
        --output_dir outputs/kadaptation
    torchrun --nproc_per_node 2 run_image_classification_no_trainer.py --cpu ...        # 2 CPU processes (gloo)
    accelerate launch --config_file ddp.yaml run_image_classification_no_trainer.py ... # GPUs, one node or several

Evaluation gathers the predictions of every process with `gather_for_metrics`, which drops the duplicates padded into
the last batch, so accuracy covers the evaluation set exactly once. The main process saves the adapter and the head.
"""

import argparse
import json
import logging
import math
import os
import random

import datasets
import evaluate
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from datasets import load_dataset
from peft import get_peft_model
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification, get_scheduler

from peft_kadapt import KAdaptationConfig


logger = get_logger(__name__)


def parse_args():
    parser = argparse.ArgumentParser(description="Fine-tune an image classifier with KAdaptation and Accelerate.")
    parser.add_argument("--model_name_or_path", required=True, help="A Hub id or a local folder.")
    parser.add_argument("--dataset_name", default=None, help="A dataset on the Hub.")
    parser.add_argument("--train_dir", default=None, help="A folder of training images, one folder per class.")
    parser.add_argument("--validation_dir", default=None, help="A folder of validation images, likewise.")
    parser.add_argument("--train_val_split", type=float, default=0.15, help="Held out when there is no validation.")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    parser.add_argument("--kadapt_n", type=int, default=8, help="KAdaptation: number of Kronecker terms n.")
    parser.add_argument("--kadapt_r", type=int, default=1, help="KAdaptation: rank r of each fast product.")
    parser.add_argument("--kadapt_alpha", type=float, default=None, help="KAdaptation: scale (default: the config's).")
    parser.add_argument("--target_modules", default=None, help="Comma-separated; default: the q and v projections.")
    parser.add_argument("--metric", default="accuracy", help="An `evaluate` metric: a Hub name or a local script.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping (0: none).")
    parser.add_argument("--num_train_epochs", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=None, help="If set, overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="cosine")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="Where the adapter and the results go.")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Write over an earlier run's results in --output_dir (only the files this script writes are replaced).",
    )
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even where a GPU is present.")
    args = parser.parse_args()
    if args.dataset_name is None and args.train_dir is None:
        parser.error("pass --dataset_name (a Hub dataset) or --train_dir (a folder of images)")
    if args.output_dir is not None:
        check_output_dir(parser, args)
    return args


def check_output_dir(parser, args):
    """Never write into the base model's own folder, nor over an earlier run's results unless asked to. Nothing is
    ever deleted: the files this script writes are replaced, any other file in the folder stays."""
    out, model = os.path.abspath(args.output_dir), os.path.abspath(args.model_name_or_path)
    if os.path.isdir(model) and os.path.isdir(out) and os.path.samefile(out, model):
        parser.error(f"--output_dir {args.output_dir} is the base model's folder: pass another folder.")
    if os.path.isfile(out):
        parser.error(f"--output_dir {args.output_dir} is a file: pass a folder.")
    earlier = os.path.join(out, "all_results.json")
    if os.path.exists(earlier) and not args.overwrite_output_dir:
        parser.error(
            f"--output_dir {args.output_dir} holds an earlier run's results ({earlier}): pass another folder, or "
            "--overwrite_output_dir to replace them."
        )


def load_images(args) -> datasets.DatasetDict:
    if args.dataset_name is not None:
        dataset = load_dataset(args.dataset_name)
    else:
        data_files = {"train": os.path.join(args.train_dir, "**")}
        if args.validation_dir is not None:
            data_files["validation"] = os.path.join(args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files)
    if "validation" not in dataset:
        split = dataset["train"].train_test_split(args.train_val_split, seed=0)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    for name in ("image", "label"):
        column = getattr(args, f"{name}_column_name")
        if column != name:
            dataset = dataset.rename_column(column, name)
    return dataset


def image_transforms(processor):
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
        return image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < 0.5 else image

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
    args = parse_args()
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_info()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)

    # Data (the main process first: it prepares the dataset cache the others then read).
    with accelerator.main_process_first():
        dataset = load_images(args)
    labels = dataset["train"].features["label"].names

    # Model: the backbone with a new head for these classes, adapted with KAdaptation; the head trains and is saved
    # with the adapter (`modules_to_save`).
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    config = KAdaptationConfig(
        n=args.kadapt_n,
        r=args.kadapt_r,
        alpha=args.kadapt_alpha,
        target_modules=args.target_modules.split(",") if args.target_modules else None,
        modules_to_save=["classifier"],
    )
    model = get_peft_model(model, config)
    if accelerator.is_main_process:
        model.print_trainable_parameters()

    train_transforms, eval_transforms = image_transforms(processor)
    dataset["train"].set_transform(train_transforms)
    dataset["validation"].set_transform(eval_transforms)
    train_loader = DataLoader(
        dataset["train"], shuffle=True, collate_fn=collate_fn, batch_size=args.per_device_train_batch_size
    )
    eval_loader = DataLoader(dataset["validation"], collate_fn=collate_fn, batch_size=args.per_device_eval_batch_size)

    # Optimiser and schedule: AdamW with weight decay on the weights, not on biases and norms.
    no_decay = ("bias", "norm")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not any(k in n.lower() for k in no_decay)]},
        {"params": [p for n, p in trainable if any(k in n.lower() for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps,
        num_training_steps=max_train_steps,
    )
    model, optimizer, train_loader, eval_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, lr_scheduler
    )
    metric = evaluate.load(args.metric)

    # Train, evaluating after every epoch.
    progress_bar = tqdm(range(max_train_steps), disable=not accelerator.is_local_main_process)
    completed_steps, epoch, results = 0, 0, {}
    while completed_steps < max_train_steps:
        model.train()
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress_bar.update(1)
                completed_steps += 1
            if completed_steps >= max_train_steps:
                break

        model.eval()
        examples = 0
        for batch in eval_loader:
            with torch.no_grad():
                logits = model(**batch).logits
            predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
            metric.add_batch(predictions=predictions, references=references)
            examples += len(references)
        results = {**metric.compute(), "eval_examples": examples, "epoch": epoch, "steps": completed_steps}
        logger.info(f"epoch {epoch}: {results}")
        epoch += 1

    # Save the adapter and the head from the main process, and the last evaluation.
    if args.output_dir is not None:
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(
            args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
        if accelerator.is_main_process:
            processor.save_pretrained(args.output_dir)
            results["num_processes"] = accelerator.num_processes
            with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
                json.dump(results, f, indent=2)
    accelerator.end_training()


if __name__ == "__main__":
    main()
