"""Train a tiny ViT with KAdaptation for a few AdamW steps, in one process or sharded; run by tests/test_sharding.py.

    python tests/sharded_training.py --engine none --targets qv --base BASE --out DIR        # one-process reference
    torchrun --standalone --nproc_per_node 2 tests/sharded_training.py --engine fsdp2 --targets qv --base BASE --out DIR

Engines: `ddp` (DistributedDataParallel), `fsdp2` (`fully_shard` on every ViT block, then on the root, as Accelerate's TRANSFORMER_BASED_WRAP does),
`fsdp2_root` (the root only), `fsdp1` (`FullyShardedDataParallel` with `transformer_auto_wrap_policy` on the block
class, `device_id=cpu`, `use_orig_params=True`), `fsdp1_root`, `zero3` (DeepSpeed ZeRO-3 over gloo, the base loaded
under `zero.Init`; also checks ΔW, merge and unmerge on the partitioned model), `none` (one process, no wrapper). Each rank trains on
its half of the same global batch, so with gradients averaged across ranks the steps equal the one-process reference.

Writes OUT/rank{rank}.pt: per-step global losses, the peak number of gathered (unsharded) parameter elements seen
at any module's forward or backward, and the adapter's full state dict after training (from the sharded model).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import get_peft_model, get_peft_model_state_dict
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.modeling_vit import ViTLayer

import peft_kadapt


TARGETS = {"qv": ["q_proj", "v_proj"], "all": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]}
GLOBAL_BATCH, STEPS = 8, 3


def save_base(path: str) -> None:
    """The tiny ViT every run starts from (loaded with `from_pretrained`, which ZeRO-3 partitions as it loads)."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(path)


def build(base_path: str, targets: str, method: str = "kadaptation") -> torch.nn.Module:
    base = ViTForImageClassification.from_pretrained(base_path)
    torch.manual_seed(0)
    if method == "lora":  # the control: a tuner without shared weights
        from peft import LoraConfig

        peft_config = LoraConfig(r=2, target_modules=TARGETS[targets], modules_to_save=["classifier"])
    else:
        peft_config = peft_kadapt.KAdaptationConfig(
            n=4, target_modules=TARGETS[targets], modules_to_save=["classifier"]
        )
    return get_peft_model(base, peft_config)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randint(
        0, 3, (STEPS, GLOBAL_BATCH), generator=g
    )


def gathered_elements(model: torch.nn.Module) -> int:
    """Parameter elements present in full on this rank now (a sharded DTensor counts its local shard only)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel()
    return total


class PeakTracker:
    def __init__(self, model):
        self.model, self.peak = model, 0
        for module in model.modules():  # the forward pass: where a root-only wrap holds the whole model gathered
            module.register_forward_pre_hook(self._record)
            module.register_forward_hook(lambda *a: self._record())

    def _record(self, *args):
        self.peak = max(self.peak, gathered_elements(self.model))


ZERO3 = {
    "train_micro_batch_size_per_gpu": GLOBAL_BATCH // 2,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3},
    "gradient_clipping": 0.0,
}


def wrap(model: torch.nn.Module, engine: str) -> torch.nn.Module:
    if engine == "zero3":
        import deepspeed

        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        engine_, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ZERO3)
        return engine_
    if engine == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if engine.startswith("fsdp2"):
        from torch.distributed.fsdp import fully_shard

        if engine == "fsdp2":
            for block in model.base_model.model.vit.layers:
                fully_shard(block)
        fully_shard(model)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={ViTLayer})
    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=policy if engine == "fsdp1" else None,
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )


def full_adapter_state(model: torch.nn.Module, args, peft_model) -> dict[str, torch.Tensor]:
    """The adapter's weights from the (sharded) model, in full, as a user would save them."""
    if args.engine in ("none", "ddp"):
        state = get_peft_model_state_dict(peft_model)
    elif args.engine == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(peft_model.parameters()), modifier_rank=None):
            state = {k: v.clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    elif args.engine.startswith("fsdp2"):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        state = get_peft_model_state_dict(peft_model, state_dict=full)
    else:
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
            full = model.state_dict()
        # peft 0.21 strips only a leading `_fsdp_wrapped_module.` when it matches adapter keys, so with FSDP1 units
        # per block it drops every adapter layer's weights (LoRA's too): load the full state dict into an unwrapped
        # copy and take the adapter from there
        unwrapped = build(args.base, args.targets, args.method)
        unwrapped.load_state_dict(full)
        state = get_peft_model_state_dict(unwrapped)
    return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def merge_checks(model, peft_model, x) -> dict:
    """ΔW of the first adapted layer, and the logits unmerged, merged and unmerged again (ZeRO-3: through the engine,
    which gathers what the forward reads; merge and unmerge gather the base weight themselves)."""
    model.eval()
    layer = next(m for m in peft_model.modules() if isinstance(m, peft_kadapt.KAdaptationLayer))
    out = {"delta": layer.get_delta_weight("default").clone(), "logits": model(pixel_values=x).logits.clone()}
    peft_model.merge_adapter()
    out["merged_logits"] = model(pixel_values=x).logits.clone()
    peft_model.unmerge_adapter()
    out["unmerged_logits"] = model(pixel_values=x).logits.clone()
    return out


class TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, kernel_size=3, padding=1)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


@torch.no_grad()
def zero3_layer_types() -> dict:
    """transformers' Conv1D (GPT-2) and nn.Conv2d built under `zero.Init` (weights partitioned to shape [0]): the
    adapter gets the right shapes, and merge then unmerge gives back the base weight (gathered to compare)."""
    import deepspeed
    from transformers import GPT2Config, GPT2LMHeadModel

    out = {}
    for name, make, targets in (
        ("conv1d", lambda: GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)), ["c_attn"]),
        ("conv2d", TinyConvNet, ["conv"]),
    ):
        with deepspeed.zero.Init(config_dict_or_path=ZERO3):
            base = make()
        model = get_peft_model(base, peft_kadapt.KAdaptationConfig(n=4, target_modules=targets, init_weights=False))
        layer = next(m for m in model.modules() if isinstance(m, peft_kadapt.KAdaptationLayer))
        weight = layer.get_base_layer().weight
        with deepspeed.zero.GatheredParameters([weight]):
            before = weight.detach().clone()
        delta = layer.get_delta_weight("default")
        layer.merge()
        with deepspeed.zero.GatheredParameters([weight]):
            merged = weight.detach().clone()
        layer.unmerge()
        with deepspeed.zero.GatheredParameters([weight]):
            after = weight.detach().clone()
        out[name] = {
            "features": (layer.in_features, layer.out_features),
            "stored_shape": tuple(weight.shape),
            "delta_shape": tuple(delta.shape),
            "weight_shape": tuple(before.shape),
            "merge_error": (merged - before - delta).abs().max().item(),
            "unmerge_error": (after - before).abs().max().item(),
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--engine", choices=["none", "ddp", "fsdp2", "fsdp2_root", "fsdp1", "fsdp1_root", "zero3"], required=True
    )
    p.add_argument("--base", required=True, help="a folder with the tiny ViT (save_base writes it)")
    p.add_argument("--targets", choices=sorted(TARGETS), required=True)
    p.add_argument("--method", choices=["kadaptation", "lora"], default="kadaptation")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    distributed = args.engine != "none"
    if args.engine == "zero3":
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ZERO3)  # noqa: F841 (while it lives, from_pretrained loads under zero.Init)
        deepspeed.init_distributed("gloo")
    elif distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    peft_model = build(args.base, args.targets, args.method)
    model = wrap(peft_model, args.engine) if distributed else peft_model
    tracker = PeakTracker(model)
    optimizer = model.optimizer if args.engine == "zero3" else None
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images, labels = data()
    local = GLOBAL_BATCH // world
    losses = []
    model.train()
    for step in range(STEPS):
        x = images[step, rank * local : (rank + 1) * local]
        y = labels[step, rank * local : (rank + 1) * local]
        loss = F.cross_entropy(model(pixel_values=x).logits, y)
        if args.engine == "zero3":
            model.backward(loss)
            model.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        total = loss.detach().clone()
        if distributed:
            dist.all_reduce(total)
        losses.append(total.item() / world)
    adapter = full_adapter_state(model, args, peft_model)
    result = {"losses": losses, "peak": tracker.peak, "adapter": adapter}
    if args.engine in ("none", "zero3"):
        result.update(merge_checks(model, peft_model, images[0, :4]))
    if args.engine == "zero3":
        result["layer_types"] = zero3_layer_types()
    os.makedirs(args.out, exist_ok=True)
    torch.save(result, os.path.join(args.out, f"rank{rank}.pt"))
    if distributed:
        # free what holds the process group while Python runs, so nothing of it is left to the interpreter's exit,
        # where a rare abort was seen ("terminate called without an active exception", in CI and here)
        del model, peft_model, optimizer, tracker
        gc.collect()
        dist.barrier()  # neither rank tears gloo down while the other still uses it
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
