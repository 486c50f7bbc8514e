"""What collapses when KAdaptation's alpha × learning rate is too large: per-step loss and factor sizes.

Trains KAdaptation on one few-shot split with the bench's recipe (the training engine) for each (alpha, lr) given, and
logs every `--every` steps: training loss, the mean and largest over adapted layers of ‖ΔW‖ / ‖W‖, how far u and A
moved from their initial values relative to their initial size, v's RMS (it starts at 0), and the head's weight norm.

    python benchmarks/collapse.py --settings 4:3e-3,16:3e-3,16:1e-3 --dataset mnist5k --shots 20
"""

from __future__ import annotations

import argparse

import torch
import transformers

from peft_kadapt import KAdaptationLayer
from peft_kadapt.training import (
    ModelArguments,
    Recipe,
    build_model,
    few_shot,
    fit,
    image_normalization,
    image_transform,
    load_image_dataset,
    pos_encoding_kwargs,
    to_tensors,
)


def factors(model) -> dict[str, torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, KAdaptationLayer)]
    return {
        "u": torch.cat([m.kadapt_u["default"].detach().flatten() for m in layers]),
        "v": torch.cat([m.kadapt_v["default"].detach().flatten() for m in layers]),
        "A": torch.cat([p.detach().flatten() for p in layers[0].kadapt_A["default"].values()]),
    }


def factor_sizes(model, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    layers = [m for m in model.modules() if isinstance(m, KAdaptationLayer)]
    ratio = [
        (m.get_delta_weight("default").norm() / m.get_base_layer().weight.norm()).item() for m in layers
    ]  # ‖ΔW‖ / ‖W‖
    now = factors(model)
    head = model.base_model.model.classifier.modules_to_save["default"].weight

    def moved(name):  # how far a factor moved from its initial value, relative to that value's size
        return ((now[name] - initial[name]).norm() / initial[name].norm()).item()

    return {
        "dW/W": sum(ratio) / len(ratio),
        "max dW/W": max(ratio),
        "u moved": moved("u"),
        "A moved": moved("A"),
        "rms v": now["v"].pow(2).mean().sqrt().item(),
        "|head|": head.norm().item(),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="4:3e-3,16:3e-3", help="comma-separated ALPHA:LR")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--shots", type=int, default=20)
    p.add_argument("--resolution", type=int, default=56)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--n", type=int, default=8)
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()
    source = load_image_dataset(args.dataset)
    labels = source["train"].features["label"].names
    split = few_shot(source, args.shots, seed=0, test_per_class=10, val_pool=1)
    x, y = to_tensors(
        split["train"], image_transform(*image_normalization(ModelArguments().model_name_or_path), args.resolution)
    )
    for setting in args.settings.split(","):
        alpha, lr = (float(v) for v in setting.split(":"))
        torch.manual_seed(0)
        model, _ = build_model(ModelArguments(kadapt_n=args.n, kadapt_alpha=alpha), labels)
        extra = pos_encoding_kwargs(model, args.resolution)
        print(f"\nalpha {alpha:g}, lr {lr:g}, n {args.n}: mean training loss of the last steps, factor sizes")
        print("| step | loss | mean ‖ΔW‖/‖W‖ | max ‖ΔW‖/‖W‖ | ‖u−u₀‖/‖u₀‖ | ‖A−A₀‖/‖A₀‖ | rms v | ‖head‖ |")
        print("|---|---|---|---|---|---|---|---|")

        initial = factors(model)

        def log(step, loss, model=model, initial=initial):
            s = factor_sizes(model, initial)
            print(
                f"| {step} | {loss:.3f} | {s['dW/W']:.4f} | {s['max dW/W']:.4f} | {s['u moved']:.4f} | "
                f"{s['A moved']:.4f} | {s['rms v']:.4f} | {s['|head|']:.2f} |"
            )

        log(0, float("nan"))
        recent = []

        def on_step(step, loss, recent=recent, log=log):
            recent.append(loss)
            if step % args.every == 0:
                log(step, sum(recent) / len(recent))
                recent.clear()

        fit(model, x, y, Recipe(lr, args.steps, seed=0), extra, on_step=on_step)


if __name__ == "__main__":
    main()
