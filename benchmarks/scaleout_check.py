"""Smoke checks of KAdaptation under FSDP2 and on a 4-bit base, for the prepared GPU check (benchmarks/gpu_check.sh).

    python benchmarks/scaleout_check.py fsdp2 --model_name_or_path DIR --device cuda --dtype bfloat16
    python benchmarks/scaleout_check.py qlora --model_name_or_path DIR --device cuda --dtype bfloat16

`fsdp2`: one process, `fully_shard` on every transformer block and then on the model (what Accelerate's per-block
wrap does), 3 AdamW steps on random images; prints the losses beside those of the same model trained unwrapped, and
whether they agree. `qlora`: the base loaded in 4-bit nf4 with bitsandbytes, KAdaptation on q and v, 3 AdamW steps,
then the largest logit difference between the merged and the unmerged model (one rounding of the 4-bit format). A
check that cannot run (no bitsandbytes) says so and exits 0, so the rest of the GPU check goes on.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from peft import get_peft_model

import peft_kadapt


def images(config, batch: int, device: str, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    x = torch.randn(3, batch, 3, size, size, generator=g).to(device=device, dtype=dtype)
    return x, torch.randint(0, config.num_labels, (3, batch), generator=g).to(device)


def train(model, x, y) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    model.train()
    for step in range(len(x)):
        loss = F.cross_entropy(model(pixel_values=x[step]).logits.float(), y[step])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 5))
    return losses


def build(path: str, device: str, dtype, **load):
    from transformers import AutoModelForImageClassification

    base = AutoModelForImageClassification.from_pretrained(path, num_labels=3, ignore_mismatched_sizes=True, **load)
    torch.manual_seed(0)
    config = peft_kadapt.KAdaptationConfig(modules_to_save=["classifier"])
    model = get_peft_model(base, config)
    return model if load else model.to(device=device, dtype=dtype)


def fsdp2(args, dtype) -> int:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=0, world_size=1)
    reference = build(args.model_name_or_path, args.device, dtype)
    x, y = images(reference.config, args.batch, args.device, dtype)
    expected = train(reference, x, y)
    model = build(args.model_name_or_path, args.device, dtype)
    blocks = [m for m in model.modules() if type(m).__name__ in model.base_model.model._no_split_modules]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    got = train(model, x, y)
    dist.destroy_process_group()
    agree = all(abs(a - b) <= 1e-2 * max(1.0, abs(a)) for a, b in zip(expected, got))
    print(f"| fsdp2, {len(blocks)} block units + root | {got} | unwrapped {expected} | agree: {agree} |")
    return 0 if agree else 1


def qlora(args, dtype) -> int:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        print("| qlora | skipped: bitsandbytes is not installed |")
        return 0
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=["classifier"],
    )
    model = build(args.model_name_or_path, args.device, dtype, quantization_config=quant, device_map=args.device)
    x, y = images(model.config, args.batch, args.device, dtype)
    losses = train(model, x, y)
    model.eval()
    with torch.no_grad():
        unmerged = model(pixel_values=x[0]).logits.float()
        merged = model.merge_and_unload()(pixel_values=x[0]).logits.float()
    print(f"| qlora nf4, {dtype} | losses {losses} | max |merged - unmerged| {(merged - unmerged).abs().max():.4f} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=["fsdp2", "qlora"])
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    return fsdp2(args, dtype) if args.check == "fsdp2" else qlora(args, dtype)


if __name__ == "__main__":
    sys.exit(main())
