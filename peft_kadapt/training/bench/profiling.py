"""Step time and training memory of models side by side (used by `kadapt bench` and benchmarks/speed.py)."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def training_memory(model, x, y, forward_kwargs: dict | None = None) -> int:
    """Bytes saved for backward (deduplicated by storage, weights excluded) + grads + AdamW state of trainables."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(pixel_values=x, **(forward_kwargs or {})).logits.float(), y)
    for p in model.parameters():
        storages.pop(p.untyped_storage().data_ptr(), None)
    loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(storages.values()) + 3 * trainable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, x, y, forward_kwargs: dict | None = None) -> float:
    """One forward + backward + optimiser step; returns its seconds."""
    _sync(x.device)
    start = time.perf_counter()
    F.cross_entropy(model(pixel_values=x, **(forward_kwargs or {})).logits.float(), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(x.device)
    return time.perf_counter() - start


def step_times(models: dict, x, y, rounds: int, forward_kwargs: dict | None = None, warmup: int = 1) -> dict:
    """Median step time per model, the models alternating step by step (these machines are noisy)."""
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for name, m in models.items()
    }
    times = {name: [] for name in models}
    for round_ in range(rounds + warmup):
        for name, model in models.items():
            model.train()
            seconds = train_step(model, optimizers[name], x, y, forward_kwargs)
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(model, optimizer, x, y, forward_kwargs: dict | None = None) -> int:
    """Training memory of one step: measured peak above the weights on CUDA, `training_memory` on CPU."""
    if x.device.type != "cuda":
        return training_memory(model, x, y, forward_kwargs)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_step(model, optimizer, x, y, forward_kwargs)
    return torch.cuda.max_memory_allocated() - base


def speed_table(models: dict, x, y, rounds: int, reference: str, forward_kwargs: dict | None = None) -> dict:
    """{name: step_s, memory_bytes, step_ratio, memory_ratio} with ratios to `reference` (which must be in models)."""
    times = step_times(models, x, y, rounds, forward_kwargs)
    out = {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        out[name] = {"step_s": times[name], "memory_bytes": peak_memory(model, optimizer, x, y, forward_kwargs)}
    ref = out[reference]
    for entry in out.values():
        entry["step_ratio"] = entry["step_s"] / ref["step_s"]
        entry["memory_ratio"] = entry["memory_bytes"] / ref["memory_bytes"]
    return out
