"""Speed and memory of KAdaptation against PEFT LoRA and LoKr, measured side by side in one process.

Model: a randomly initialised ViT-S-shaped ViTForImageClassification (hidden 384, 12 blocks, 6 heads, MLP 1536,
patch 16, 224 px, 10 labels); q_proj and v_proj adapted, classifier trained. Batch 8.

- train step: forward + backward + AdamW step; methods alternate step by step, median over --steps rounds.
- memory: bytes that autograd saves for backward (deduplicated by storage) + gradients + AdamW state of the trainable
  parameters, i.e. the training memory on top of the frozen model's weights. Deterministic; measured with
  torch.autograd.graph.saved_tensors_hooks on one step.
- inference: no-grad eval forward of the base model, the unmerged KAdaptation model and the merged one, alternating.

`--sweep` times one adapted 384 x 384 layer (8 x 197 tokens) with the factored and the materialised forward for several
n and r, and prints which one the cost model in peft_kadapt.functional.prefer_factored picks.

Usage: python benchmarks/speed.py [--steps 10] [--batch 8] [--device cpu|cuda] [--dtype float32|bfloat16] [--image_size 224]
       [--sweep]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from peft import LoKrConfig, LoraConfig, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import peft_kadapt
from peft_kadapt.functional import kron_delta_weight, kron_forward, prefer_factored
from peft_kadapt.training import HEAD
from peft_kadapt.training.bench.profiling import speed_table


def vit_s(num_labels: int = 10, image_size: int = 224) -> ViTForImageClassification:
    """A randomly initialised ViT-S-shaped classifier (seed 0)."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=image_size,
        patch_size=16,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def methods() -> dict:
    qv = ["q_proj", "v_proj"]
    head = [HEAD]
    return {
        "LoRA r=8": LoraConfig(r=8, lora_alpha=8, target_modules=qv, modules_to_save=head),
        "LoKr r=8": LoKrConfig(r=8, alpha=8, target_modules=qv, modules_to_save=head),
        "KAdaptation (defaults: n=8, r=1)": peft_kadapt.KAdaptationConfig(modules_to_save=head),
        "KAdaptation n=32 r=1 (paper)": peft_kadapt.KAdaptationConfig(n=32, modules_to_save=head),
        "KAdaptation n=32 r=1 factored": peft_kadapt.KAdaptationConfig(
            n=32, forward_mode="factored", modules_to_save=head
        ),
        "KAdaptation n=32 r=1 slow_rank=1": peft_kadapt.KAdaptationConfig(n=32, slow_rank=1, modules_to_save=head),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_training(args, device, dtype) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device, dtype)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    models = {
        name: get_peft_model(vit_s(image_size=args.image_size).to(device, dtype), config)
        for name, config in methods().items()
    }
    table = speed_table(models, x, y, args.steps, reference="LoRA r=8")
    rows = []
    for name, model in models.items():
        adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and HEAD not in n)
        rows.append((name, adapter, table[name]["step_s"], table[name]["memory_bytes"]))
    return rows


@torch.no_grad()
def bench_inference(args, device, dtype) -> list[tuple]:
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(1))
    x = x.to(device, dtype)
    base = vit_s(image_size=args.image_size).to(device, dtype).eval()
    unmerged = get_peft_model(copy.deepcopy(base), peft_kadapt.KAdaptationConfig(init_weights=False)).eval()
    merged = copy.deepcopy(unmerged).merge_and_unload().eval()
    models = {"base model": base, "KAdaptation unmerged": unmerged, "KAdaptation merged": merged}
    diff = (unmerged(pixel_values=x).logits - merged(pixel_values=x).logits).abs().max().item()
    times = {name: [] for name in models}
    for _ in range(2):
        for model in models.values():
            model(pixel_values=x)
    for _ in range(args.steps):
        for name, model in models.items():
            sync(device)
            start = time.perf_counter()
            model(pixel_values=x)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return [(name, statistics.median(t)) for name, t in times.items()], diff


def bench_sweep(args, device, dtype) -> None:
    tokens, k, d = args.batch * ((args.image_size // 16) ** 2 + 1), 384, 384
    x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(k, d, device=device, dtype=dtype) / d**0.5
    print(f"\none adapted {k}x{d} layer, {tokens} tokens, forward + backward, median of {args.steps} (ms)")
    print("| n | r | factored | materialised | factored / materialised | cost model picks |")
    print("|---|---|---|---|---|---|")
    for n in (4, 8, 16, 32):
        for r in (1, 4):
            A, u, v = (
                torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
                for shape in ((n, n, n), (k // n, n, r), (d // n, n, r))
            )
            fns = {
                "factored": lambda A=A, u=u, v=v: F.linear(x, weight) + kron_forward(x, A, u, v, 1.0),
                "materialised": lambda A=A, u=u, v=v: F.linear(x, weight + kron_delta_weight(A, u, v, 1.0)),
            }
            times = {name: [] for name in fns}
            for i in range(args.steps + 2):
                for name, fn in fns.items():
                    sync(device)
                    start = time.perf_counter()
                    fn().float().square().mean().backward()
                    sync(device)
                    if i >= 2:
                        times[name].append(time.perf_counter() - start)
            f, m = (statistics.median(times[name]) * 1e3 for name in fns)
            pick = "factored" if prefer_factored(n, r, d, k, tokens, training=True) else "materialised"
            print(f"| {n} | {r} | {f:.2f} | {m:.2f} | {f / m:.2f} | {pick} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--image_size", type=int, default=224, help="input size (the tiny profile of gpu_check.sh)")
    parser.add_argument("--sweep", action="store_true", help="time factored vs materialised forward per n and r")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}, {args.dtype}, batch {args.batch}, {args.steps} alternating rounds")
    if args.sweep:
        bench_sweep(args, device, dtype)
        return
    rows = bench_training(args, device, dtype)
    lora = next(r for r in rows if r[0].startswith("LoRA"))
    memory_kind = "peak CUDA memory above weights" if device.type == "cuda" else "saved activations + grads + AdamW"
    print(f"\ntraining step ({memory_kind})")
    print("| method | adapter params | step (ms) | step / LoRA | memory (MiB) | memory / LoRA |")
    print("|---|---|---|---|---|---|")
    for name, params, step, peak in rows:
        print(
            f"| {name} | {params:,d} | {step * 1e3:.0f} | {step / lora[2]:.2f} | {peak / 2**20:.1f} | "
            f"{peak / lora[3]:.2f} |"
        )
    inference, diff = bench_inference(args, device, dtype)
    base_time = inference[0][1]
    print(f"\ninference (no grad, eval); max |logit difference| merged vs unmerged: {diff:.1e}")
    print("| model | forward (ms) | / base |")
    print("|---|---|---|")
    for name, seconds in inference:
        print(f"| {name} | {seconds * 1e3:.0f} | {seconds / base_time:.2f} |")


if __name__ == "__main__":
    main()
