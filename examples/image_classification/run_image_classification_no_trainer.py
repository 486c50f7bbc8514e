#!/usr/bin/env python
"""Fine-tune an image classifier with KAdaptation (or a baseline) in a plain Accelerate loop: one process, several
processes on one machine, or many GPUs on many nodes.

    python examples/image_classification/run_image_classification_no_trainer.py --dataset_name digits
    torchrun --nproc_per_node 2 examples/image_classification/run_image_classification_no_trainer.py --cpu ...
    accelerate launch --config_file examples/accelerate/ddp.yaml \\
        examples/image_classification/run_image_classification_no_trainer.py ...

The method (`--method`), its default learning rate and the PEFT config come from the same method table as
`kadapt train` (`peft_kadapt.training.METHODS`). Evaluation gathers predictions from every process with
`gather_for_metrics` (which drops the duplicates padded into the last batch), so accuracy covers the whole evaluation
set exactly once. The checkpoint is chosen on validation after every epoch; test is evaluated once, at the end. The
main process saves the adapter from `unwrap_model` + `get_state_dict`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from peft_kadapt.training import (
    METHODS,
    ModelArguments,
    build_model,
    few_shot,
    image_normalization,
    image_transform,
    load_accuracy,
    load_image_dataset,
    pos_encoding_kwargs,
)


logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    defaults = ModelArguments()  # the same defaults as `kadapt train`
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=defaults.model_name_or_path)
    p.add_argument("--method", default=defaults.method, choices=list(METHODS))
    p.add_argument("--target_modules", default=None, help="comma-separated; default: the model type's q/v")
    p.add_argument("--kadapt_n", type=int, default=defaults.kadapt_n)
    p.add_argument("--kadapt_r", type=int, default=defaults.kadapt_r)
    p.add_argument("--kadapt_alpha", type=float, default=defaults.kadapt_alpha)
    p.add_argument("--lora_r", type=int, default=defaults.lora_r)
    p.add_argument("--lora_alpha", type=float, default=defaults.lora_alpha)
    p.add_argument("--dataset_name", default="mnist5k", help="offline name, image folder or Hub id")
    p.add_argument("--image_column_name", default="image")
    p.add_argument("--label_column_name", default="label")
    p.add_argument("--shots", type=int, default=20, help="images per class, validation included; 0 = all")
    p.add_argument("--test_per_class", type=int, default=50)
    p.add_argument("--sampling_seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--per_device_eval_batch_size", type=int, default=64)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=None, help="default: the method's (method table)")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--lr_scheduler_type", default="cosine")
    p.add_argument("--num_train_epochs", type=int, default=15)
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/no_trainer")
    p.add_argument("--cpu", action="store_true", help="force CPU (several processes over gloo under torchrun)")
    p.add_argument(
        "--save_every_rank",
        action="store_true",
        help="also write each process's trainable weights to rank<N>.safetensors (to check that they agree)",
    )
    args = p.parse_args(argv)
    # Refused here, by flag name: a learning rate of 0 would save an untrained adapter as a result, and a count of 0
    # fails late (0 epochs: no checkpoint chosen to load at the end).
    if args.learning_rate is not None and not args.learning_rate > 0:
        p.error(f"--learning_rate must be above 0, got {args.learning_rate}; leave it out for the method's default")
    counts = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"]
    counts.append("num_train_epochs" if args.max_train_steps is None else "max_train_steps")
    for flag in counts:
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be 1 or more, got {getattr(args, flag)}")
    return args


@torch.no_grad()
def evaluate(model, loader, accelerator, metric) -> dict:
    """Accuracy over the whole split: every process's predictions gathered (padding dropped), then `evaluate`."""
    model.eval()
    total = 0
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        metric.add_batch(predictions=predictions, references=labels)
        total += labels.numel()
    return {**metric.compute(), "examples": total}


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    # Data and model. The main process goes first: it converts and caches the offline backbone once.
    with accelerator.main_process_first():
        source = load_image_dataset(args.dataset_name, args.image_column_name, args.label_column_name)
        labels = source["train"].features["label"].names
        model_args = ModelArguments(
            model_name_or_path=args.model_name_or_path,
            method=args.method,
            target_modules=args.target_modules,
            kadapt_n=args.kadapt_n,
            kadapt_r=args.kadapt_r,
            kadapt_alpha=args.kadapt_alpha,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
        )
        model, is_peft = build_model(model_args, labels)
    splits = few_shot(source, args.shots or None, seed=args.sampling_seed, test_per_class=args.test_per_class)
    transform = image_transform(*image_normalization(args.model_name_or_path), args.resolution)
    for split in splits.values():
        split.set_transform(transform)
    extra = pos_encoding_kwargs(model, args.resolution)

    def collate(examples):
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        return {"pixel_values": pixel_values, "labels": torch.tensor([e["labels"] for e in examples]), **extra}

    train_loader = DataLoader(
        splits["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=collate
    )
    eval_loaders = {
        name: DataLoader(splits[name], batch_size=args.per_device_eval_batch_size, collate_fn=collate)
        for name in ("validation", "test")
    }

    # Optimiser and schedule. Weight decay on weights only, as the Trainer does.
    learning_rate = args.learning_rate or METHODS[args.method].learning_rate
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not n.endswith("bias") and "norm" not in n]},
        {"params": [p for n, p in trainable if n.endswith("bias") or "norm" in n], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=0, num_training_steps=max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, loaders))

    metric = load_accuracy()  # evaluate's accuracy, from the Hub or the copy shipped with peft_kadapt

    # Train; after each epoch keep the weights with the best validation accuracy (never test).
    best, best_state, step = -1.0, None, 0
    progress = tqdm(range(max_steps), disable=not accelerator.is_local_main_process)
    while step < max_steps:
        model.train()
        for batch in train_loader:
            with accelerator.accumulate(model):
                outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
                loss = F.cross_entropy(outputs.logits, batch["labels"])
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                progress.update(1)
                if step >= max_steps:
                    break
        validation = evaluate(model, eval_loaders["validation"], accelerator, metric)
        logger.info(
            "step %d: validation accuracy %.4f (%d examples)", step, validation["accuracy"], validation["examples"]
        )
        if validation["accuracy"] > best:
            best = validation["accuracy"]
            best_state = {k: v.detach().clone() for k, v in accelerator.get_state_dict(model).items()}
    accelerator.unwrap_model(model).load_state_dict(best_state)
    test = evaluate(model, eval_loaders["test"], accelerator, metric)

    # Save: the adapter (or the model) from the main process, and the metrics.
    output_dir = Path(args.output_dir)
    if args.save_every_rank:
        from safetensors.torch import save_file

        output_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        mine = {n: p.detach().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}
        save_file(mine, str(output_dir / f"rank{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(output_dir, state_dict=state_dict, is_main_process=True)
        metrics = {
            "method": args.method,
            "learning_rate": learning_rate,
            "validation_accuracy": best,
            "test_accuracy": test["accuracy"],
            "test_examples": test["examples"],
            "num_processes": accelerator.num_processes,
            "steps": step,
        }
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        logger.info("test accuracy %.4f over %d examples", test["accuracy"], test["examples"])
    accelerator.end_training()


if __name__ == "__main__":
    main()
