"""How far one adapter step moves each adapted layer: ‖ΔW‖ and the layer's output change after t AdamW steps.

For each method variant (as `kadapt bench` writes them) and each (alpha, learning rate), trains on one few-shot split
with the bench's recipe at a constant learning rate and reports, per layer kind (q_proj, ..., fc2) and averaged over
the blocks, after each of `--steps`:

- `dW/W`: ‖ΔW‖_F / ‖W‖_F, the update against the pretrained weight;
- `dY/Y`: ‖X ΔWᵀ‖_F / ‖X Wᵀ‖_F on the layer's inputs X of a fixed batch of training images (captured before training):
  how much the layer's output moves, which is what the rest of the network sees.

`--reference` names the variant every other is divided by, at the same alpha and learning rate (`lora r={r}`: LoRA at
each variant's own rank, its twin in parameters per layer), so a ratio of 1 means "the same step as that LoRA". One
record per (variant, alpha, lr) goes to `--records`; `--table` recomputes the tables from them.

    python benchmarks/update_size.py --variants "kadaptation n=8,lora r=8" --alphas 16 --lrs 3e-3 --steps 1,10 \\
        --reference "lora r={r}" --records benchmarks/results/update_size.jsonl
    python benchmarks/update_size.py --records benchmarks/results/update_size.jsonl --reference "lora r={r}" --table
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer

from peft_kadapt.training import (
    Recipe,
    build_model,
    few_shot,
    fit,
    get_method,
    image_normalization,
    image_transform,
    load_image_dataset,
    parse_variant,
    pos_encoding_kwargs,
    to_tensors,
    with_alpha,
)


def adapted_layers(model) -> dict[str, BaseTunerLayer]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and hasattr(m, "get_delta_weight")
    }


def layer_inputs(model, layers: dict, pixel_values, extra) -> dict[str, torch.Tensor]:
    """Each adapted layer's input on `pixel_values`, flattened to (tokens, in_features)."""
    seen, handles = {}, []
    for name, layer in layers.items():

        def hook(module, args, name=name):
            seen[name] = args[0].detach().reshape(-1, args[0].shape[-1])

        handles.append(layer.get_base_layer().register_forward_pre_hook(hook))
    with torch.no_grad(), model.disable_adapter():
        model.eval()
        model(pixel_values=pixel_values, **extra)
    for handle in handles:
        handle.remove()
    return seen


@torch.no_grad()
def sizes(layers: dict, inputs: dict) -> dict[str, dict[str, float]]:
    """Per layer kind: mean over blocks of ‖ΔW‖/‖W‖ and ‖XΔWᵀ‖/‖XWᵀ‖."""
    by_kind = defaultdict(lambda: defaultdict(list))
    for name, layer in layers.items():
        W = layer.get_base_layer().weight
        dW = layer.get_delta_weight("default").reshape(W.shape)
        if type(layer.get_base_layer()).__name__ == "Conv1D":  # (in, out) storage
            W, dW = W.T, dW.T
        X = inputs[name]
        kind = name.rsplit(".", 1)[-1]
        by_kind[kind]["dW/W"].append((dW.norm() / W.norm()).item())
        by_kind[kind]["dY/Y"].append(((X @ dW.T).norm() / (X @ W.T).norm()).item())
        by_kind[kind]["|dW|_2/|W|_2"].append((torch.linalg.matrix_norm(dW, 2) / torch.linalg.matrix_norm(W, 2)).item())
    return {k: {m: sum(v) / len(v) for m, v in d.items()} for k, d in by_kind.items()}


def measure(variant: str, alpha: float, lr: float, steps: list[int], x, y, labels, resolution, model_path, seed=0):
    args = parse_variant(variant, model_name_or_path=model_path)
    args = with_alpha(args, alpha)
    torch.manual_seed(seed)
    model, _ = build_model(args, labels)
    extra = pos_encoding_kwargs(model, resolution)
    layers = adapted_layers(model)
    inputs = layer_inputs(model, layers, x[:16], extra)
    out = {}

    def on_step(step, loss):
        if step in steps:
            out[step] = {"loss": loss, "layers": sizes(layers, inputs)}

    recipe = Recipe(lr, max(steps), lr_scheduler_type="constant", seed=seed)
    fit(model, x, y, recipe, extra, on_step=on_step)
    return out


def reference_for(variant: str, reference: str) -> str:
    """`reference` with `{r}` replaced by the variant's rank (its LoRA twin of the same parameters per layer)."""
    spec = parse_variant(variant)
    rank = getattr(spec, get_method(spec.method).rank_field)
    return reference.format(r=rank)


def table(records: list[dict], reference: str) -> str:
    """Per (alpha, lr): each variant's ratio to its reference, smallest-largest over layer kinds, per step."""
    by_key = {(r["variant"], r["alpha"], r["lr"]): r["steps"] for r in records}
    lines = []
    for alpha, lr in dict.fromkeys((r["alpha"], r["lr"]) for r in records):
        steps = sorted({int(t) for (_, a, rate), s in by_key.items() if (a, rate) == (alpha, lr) for t in s})
        lines += [
            f"\nalpha {alpha:g}, lr {lr:g}: ratio to {reference} at the same alpha and lr; smallest-largest over the "
            "layer kinds; output change dY/Y, then ‖ΔW‖/‖W‖ in brackets",
            "",
            "| variant | " + " | ".join(f"after {t} step(s)" for t in steps) + " |",
            "|---|" + "---|" * len(steps),
        ]
        for (variant, a, rate), mine in by_key.items():
            ref = by_key.get((reference_for(variant, reference), a, rate))
            if (a, rate) != (alpha, lr) or ref is None or ref is mine:
                continue
            lines.append(f"| {variant} | " + " | ".join(ratio_cell(mine[str(t)], ref[str(t)]) for t in steps) + " |")
    return "\n".join(lines)


def ratio_cell(mine: dict, ref: dict) -> str:
    ranges = []
    for metric in ("dY/Y", "dW/W"):
        ratios = [mine["layers"][k][metric] / ref["layers"][k][metric] for k in mine["layers"] if k in ref["layers"]]
        ranges.append(f"{min(ratios):.2f}-{max(ratios):.2f}")
    return f"{ranges[0]} ({ranges[1]})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="kadaptation n=8,lora r=8")
    p.add_argument("--reference", default="lora r=8", help="a variant; {r} stands for each variant's own rank")
    p.add_argument("--alphas", default="4")
    p.add_argument("--lrs", default="3e-3")
    p.add_argument("--steps", default="1,10")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--shots", type=int, default=20)
    p.add_argument("--resolution", type=int, default=56)
    p.add_argument("--model_name_or_path", default="dinov2-small-imgfocus")
    p.add_argument("--records", required=True, help="one JSON line per (variant, alpha, lr) is appended here")
    p.add_argument("--table", action="store_true", help="print the tables from --records and stop")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in open(args.records)], args.reference))
        return
    transformers.logging.set_verbosity_error()
    source = load_image_dataset(args.dataset)
    labels = source["train"].features["label"].names
    split = few_shot(source, args.shots, seed=0, test_per_class=1, val_pool=1)
    x, y = to_tensors(split["train"], image_transform(*image_normalization(args.model_name_or_path), args.resolution))
    steps = [int(s) for s in args.steps.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    variants += [
        ref for ref in dict.fromkeys(reference_for(v, args.reference) for v in variants) if ref not in variants
    ]
    for alpha in (float(a) for a in args.alphas.split(",")):
        for lr in (float(v) for v in args.lrs.split(",")):
            for variant in variants:
                out = measure(variant, alpha, lr, steps, x, y, labels, args.resolution, args.model_name_or_path)
                record = dict(
                    variant=variant,
                    alpha=alpha,
                    lr=lr,
                    dataset=args.dataset,
                    shots=args.shots,
                    resolution=args.resolution,
                    model=args.model_name_or_path,
                    steps=out,
                )
                with open(args.records, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"measured {variant} at alpha {alpha:g}, lr {lr:g}", flush=True)


if __name__ == "__main__":
    main()
