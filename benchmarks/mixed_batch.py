"""Throughput of a mixed-adapter batch against one batch per adapter (inference, no grad).

Four KAdaptation adapters (defaults, each with its own head) on a randomly initialised ViT-S-shaped model. A batch of
`--batch` images whose samples are spread evenly over the four adapters runs once with `adapter_names=[...]`; the same
images run as four batches, one per adapter (`set_adapter` before each). Both alternate, median over `--rounds`.

Usage: python benchmarks/mixed_batch.py [--batch 32] [--image_size 112] [--rounds 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers
from peft import get_peft_model
from speed import vit_s  # this folder's ViT-S-shaped model (the script's folder is on sys.path)

import peft_kadapt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    adapters = ["task0", "task1", "task2", "task3"]
    kadapt = peft_kadapt.KAdaptationConfig(init_weights=False, modules_to_save=["classifier"])
    model = get_peft_model(vit_s(image_size=args.image_size), kadapt, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, kadapt)
    model = model.to(args.device).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    names = [adapters[i % len(adapters)] for i in range(args.batch)]
    groups = {name: [i for i, n in enumerate(names) if n == name] for name in adapters}

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def mixed():
        return model(pixel_values=x, adapter_names=names).logits

    def separate():
        out = torch.empty(args.batch, 10, device=args.device)
        for name, rows in groups.items():
            model.set_adapter(name)
            out[rows] = model(pixel_values=x[rows]).logits
        return out

    times = {"mixed batch": [], "one batch per adapter": []}
    with torch.no_grad():
        torch.testing.assert_close(mixed(), separate(), rtol=1e-4, atol=1e-4)
        for round_ in range(args.rounds + 1):
            for label, fn in (("mixed batch", mixed), ("one batch per adapter", separate)):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if round_:  # the first round warms up
                    times[label].append(time.perf_counter() - start)
    m, s = (statistics.median(times[k]) for k in times)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, ViT-S shape, "
        f"{args.image_size} px, batch {args.batch} over 4 adapters, median of {args.rounds}"
    )
    print("| forward | ms | / one batch per adapter |\n|---|---|---|")
    print(f"| mixed batch (`adapter_names`) | {m * 1e3:.0f} | {m / s:.2f} |")
    print(f"| one batch per adapter | {s * 1e3:.0f} | 1.00 |")


if __name__ == "__main__":
    main()
