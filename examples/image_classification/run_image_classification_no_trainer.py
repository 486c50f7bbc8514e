#!/usr/bin/env python
"""Fine-tune an image classifier with KAdaptation in a plain Accelerate loop (one process, many GPUs, many nodes).

    python examples/image_classification/run_image_classification_no_trainer.py --dataset_name digits
    torchrun --nproc_per_node 2 examples/image_classification/run_image_classification_no_trainer.py --cpu ...
    accelerate launch --config_file examples/accelerate/ddp.yaml \\
        examples/image_classification/run_image_classification_no_trainer.py ...

Data, model and method come from the same code as `kadapt train`. Evaluation gathers predictions from every process
with `gather_for_metrics` (which drops the duplicates padded into the last batch), so accuracy is computed over the
whole evaluation set exactly once; the main process saves the adapter from `unwrap_model` + `get_state_dict`.
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

from peft_kadapt.data import few_shot, image_transform, load_image_dataset
from peft_kadapt.pretrained import DINOV2_SMALL_ALIAS
from peft_kadapt.train import (
    DEFAULT_LEARNING_RATES,
    METHODS,
    ModelArguments,
    _normalisation,
    build_model,
    make_collator,
)


logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name_or_path", default=DINOV2_SMALL_ALIAS)
    p.add_argument("--method", default="kadaptation", choices=METHODS)
    p.add_argument("--kadapt_n", type=int, default=8)
    p.add_argument("--kadapt_r", type=int, default=1)
    p.add_argument("--dataset_name", default="mnist5k")
    p.add_argument("--image_column_name", default="image")
    p.add_argument("--label_column_name", default="label")
    p.add_argument("--shots", type=int, default=20, help="0 = full shot")
    p.add_argument("--test_per_class", type=int, default=50)
    p.add_argument("--sampling_seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--per_device_eval_batch_size", type=int, default=64)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=None, help="default: the method's, as in `kadapt train`")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--num_train_epochs", type=int, default=15)
    p.add_argument("--max_train_steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/no_trainer")
    p.add_argument("--cpu", action="store_true", help="force CPU (multi-process over gloo under torchrun)")
    p.add_argument(
        "--save_every_rank",
        action="store_true",
        help="also write each process's trainable weights to rank<N>.safetensors (to check they agree)",
    )
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model, loader, accelerator) -> dict:
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        correct += (predictions == labels).sum().item()
        total += labels.numel()
    return {"accuracy": correct / total, "examples": total}


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)

    with accelerator.main_process_first():  # the main process converts / caches the backbone first
        source = load_image_dataset(args.dataset_name, args.image_column_name, args.label_column_name)
        model, is_peft = build_model(
            ModelArguments(model_name_or_path=args.model_name_or_path, method=args.method, kadapt_n=args.kadapt_n,
                           kadapt_r=args.kadapt_r), source["train"].features["label"].names)  # fmt: skip
    splits = few_shot(source, args.shots or None, seed=args.sampling_seed, test_per_class=args.test_per_class)
    mean, std = _normalisation(args.model_name_or_path)
    for split in splits.values():
        split.set_transform(image_transform(mean, std, args.resolution))
    collate = make_collator(model, args.resolution)
    train_loader = DataLoader(splits["train"], shuffle=True, batch_size=args.per_device_train_batch_size,
                              collate_fn=collate)  # fmt: skip
    eval_loaders = {name: DataLoader(splits[name], batch_size=args.per_device_eval_batch_size, collate_fn=collate)
                    for name in ("validation", "test")}  # fmt: skip
    lr = args.learning_rate or DEFAULT_LEARNING_RATES[args.method]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=args.weight_decay)  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, loaders))

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
        val = evaluate(model, eval_loaders["validation"], accelerator)
        logger.info("step %d: validation accuracy %.4f over %d examples", step, val["accuracy"], val["examples"])
        if val["accuracy"] > best:  # model selection on validation, never on test
            best = val["accuracy"]
            best_state = {k: v.detach().clone() for k, v in accelerator.get_state_dict(model).items()}
    accelerator.unwrap_model(model).load_state_dict(best_state)
    test = evaluate(model, eval_loaders["test"], accelerator)

    output_dir = Path(args.output_dir)
    if args.save_every_rank:
        from safetensors.torch import save_file

        output_dir.mkdir(parents=True, exist_ok=True)
        mine = {n: p.detach().contiguous() for n, p in accelerator.unwrap_model(model).named_parameters()
                if p.requires_grad}  # fmt: skip
        save_file(mine, str(output_dir / f"rank{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir, state_dict=state_dict, is_main_process=True)
        metrics = {"method": args.method, "validation_accuracy": best, "test_accuracy": test["accuracy"],
                   "test_examples": test["examples"], "num_processes": accelerator.num_processes, "steps": step}  # fmt: skip
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        logger.info("test accuracy %.4f over %d examples", test["accuracy"], test["examples"])
    accelerator.end_training()


if __name__ == "__main__":
    main()
