"""The training engine: fit a model on an in-memory split with a given recipe, and score it.

`kadapt bench` and `kadapt intrinsic-dim` train through `fit`; `kadapt train` and the Trainer example train through
`transformers.Trainer` with `Recipe.training_arguments()`. Both follow the same recipe, step for step:

- the optimiser and its arguments are the Trainer's (`Trainer.get_optimizer_cls_and_kwargs`: AdamW), with weight decay
  on the parameters the Trainer decays (not biases, not norms);
- the schedule is `transformers.get_scheduler(lr_scheduler_type)` over `max_steps`, gradients clipped to
  `max_grad_norm`;
- epoch e visits the examples in the order `torch.randperm(n, generator=Generator().manual_seed(seed + e))`, which is
  what the Trainer's seedable sampler does; the last batch of an epoch may be smaller;
- `bf16=True` runs the forward pass under `torch.autocast(dtype=torch.bfloat16)` with fp32 weights and optimiser
  state, as the Trainer's `bf16=True` does. Batches go to the device the model is on (move the model first); the
  split itself may stay on the CPU.

So a learning rate chosen by the bench means the same thing in `kadapt train` (tests/test_engine.py checks that both
reach the same weights and accuracy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Recipe:
    """Optimiser settings of one training run."""

    learning_rate: float
    max_steps: int
    batch_size: int = 16
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    # (name prefix, learning rate): parameters whose name starts with the prefix train at that rate instead of
    # `learning_rate` (first match wins). `fit` only: the Trainer takes one rate.
    prefix_learning_rates: tuple[tuple[str, float], ...] = ()

    def training_arguments(self, output_dir: str, **overrides):
        """`transformers.TrainingArguments` that train with this recipe (plus `overrides`, e.g. evaluation)."""
        from transformers import TrainingArguments

        if self.prefix_learning_rates:
            raise ValueError(
                "Recipe.prefix_learning_rates: the Trainer trains every parameter at one learning rate; "
                "use `fit` for per-parameter rates."
            )
        settings = dict(
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_steps,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
            remove_unused_columns=False,
            report_to="none",
        )
        if self.bf16:
            settings["bf16"] = True
        return TrainingArguments(**{**settings, **overrides})


@dataclass
class Scores:
    accuracy: float
    loss: float  # mean cross-entropy


def optimizer_and_schedule(model: nn.Module, recipe: Recipe):
    """The Trainer's optimiser (class, arguments, weight-decay groups) and schedule for `recipe`."""
    from transformers import Trainer, get_scheduler

    args = replace(recipe, bf16=False, prefix_learning_rates=()).training_arguments(output_dir="unused")
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameter: nothing to fit.")
    unmatched = [
        prefix for prefix, _ in recipe.prefix_learning_rates if not any(n.startswith(prefix) for n, _ in trainable)
    ]
    if unmatched:
        raise ValueError(
            f"Recipe.prefix_learning_rates: no trainable parameter's name starts with {unmatched}; names look like "
            f"{trainable[0][0]!r}."
        )

    def rate(name: str) -> float:
        return next(
            (lr for prefix, lr in recipe.prefix_learning_rates if name.startswith(prefix)), recipe.learning_rate
        )

    rates = [recipe.learning_rate, *(lr for _, lr in recipe.prefix_learning_rates)]
    optimizer = optimizer_cls(rate_groups(trainable, decay, recipe.weight_decay, rate, rates), **optimizer_kwargs)
    schedule = get_scheduler(
        recipe.lr_scheduler_type, optimizer, num_warmup_steps=recipe.warmup_steps, num_training_steps=recipe.max_steps
    )
    return optimizer, schedule


def rate_groups(trainable, decay: set[str], weight_decay: float, rate, rates) -> list[dict]:
    """The Trainer's two weight-decay groups of the `trainable` (name, parameter) pairs, each split by learning rate
    (`rate(name)`, one of `rates`, in that order); empty groups left out."""
    groups = [
        {"params": [p for n, p in trainable if (n in decay) == decays and rate(n) == lr], "weight_decay": wd, "lr": lr}
        for decays, wd in ((True, weight_decay), (False, 0.0))
        for lr in dict.fromkeys(rates)
    ]
    return [g for g in groups if g["params"]]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits `n` examples (the Trainer's seedable sampler)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def fit(
    model: nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    forward_kwargs: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train the parameters of `model` that require grad for `recipe.max_steps` steps; returns the seconds it took.

    `model(pixel_values=..., **forward_kwargs)` must return an object with `.logits`; the loss is cross-entropy.
    `on_step(step, loss)` is called after every optimiser step (e.g. to log or inspect the model).
    """
    optimizer, schedule = optimizer_and_schedule(model, recipe)
    params = [p for p in model.parameters() if p.requires_grad]
    forward_kwargs = forward_kwargs or {}
    device = params[0].device
    model.train()
    start, step, epoch = time.perf_counter(), 0, 0
    while step < recipe.max_steps:
        order = epoch_order(len(labels), recipe.seed, epoch)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                logits = model(pixel_values=pixel_values[idx].to(device), **forward_kwargs).logits
            loss = F.cross_entropy(logits.float(), labels[idx].to(device))
            loss.backward()
            if recipe.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
            if step == recipe.max_steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time them to the end
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(
    model: nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    forward_kwargs: dict | None = None,
    batch: int = 100,
    bf16: bool = False,
) -> Scores:
    """Accuracy and mean cross-entropy of `model` on a split, in eval mode (bf16: under bfloat16 autocast)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = torch.cat(
            [
                model(pixel_values=pixel_values[i : i + batch].to(device), **(forward_kwargs or {}))
                .logits.float()
                .cpu()
                for i in range(0, len(labels), batch)
            ]
        )
    return Scores((logits.argmax(-1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item())
