"""What a KAdaptation config costs on a given model, before training, and which configs fit a parameter budget."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import KAdaptationConfig, default_target_modules, sharing_group
from .layer import check_n_divides, features


@dataclass
class ParameterReport:
    """Trainable adapter parameters of a config on a model (the head and `modules_to_save` excluded)."""

    per_target: dict[str, dict]  # target name -> {"layers", "fast"} (fast = Σ r·(k + d))
    per_group: dict[str, int]  # sharing group -> slow-weight parameters (n³, or 2·n²·ρ)
    fast: int
    slow: int
    lora_rank: int
    lora: int  # LoRA at `lora_rank` on the same layers: Σ lora_rank·(k + d)
    max_rank: int  # the largest rank ΔW can reach on the adapted layers
    bias: int = 0  # biases that train with `bias="all"` or `"kadapt_only"`

    @property
    def total(self) -> int:
        return self.fast + self.slow + self.bias

    def to_markdown(self) -> str:
        lines = ["| target | layers | fast weights |", "|---|---|---|"]
        lines += [f"| {t} | {v['layers']} | {v['fast']:,d} |" for t, v in self.per_target.items()]
        lines += ["", "| sharing group | slow weights |", "|---|---|"]
        lines += [f"| {g} | {p:,d} |" for g, p in self.per_group.items()]
        lines += [
            "",
            f"KAdaptation total: {self.total:,d} (fast {self.fast:,d} + slow {self.slow:,d}"
            + (f" + bias {self.bias:,d}" if self.bias else "")
            + "); "
            f"max rank of ΔW {self.max_rank}; LoRA r={self.lora_rank} on the same layers: {self.lora:,d}",
        ]
        return "\n".join(lines)


def _targets(model: nn.Module, config: KAdaptationConfig) -> list[tuple[str, nn.Module]]:
    config = copy.deepcopy(config)
    if config.target_modules is None:
        config.target_modules = set(
            default_target_modules(getattr(getattr(model, "config", None), "model_type", None))
        )
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D, nn.Conv2d)) and check_target_module_exists(config, name)
    ]
    if not found:
        raise ValueError(
            f"`target_modules`={config.target_modules!r} matches no supported layer (nn.Linear, Conv1D, nn.Conv2d) of this model."
        )
    return found


def parameter_report(model: nn.Module, config: KAdaptationConfig, lora_rank: int = 8) -> ParameterReport:
    """Count, without building the adapter, the trainable parameters `config` would create on `model`."""
    n, r, rho = config.n, config.r, config.slow_rank
    per_target: dict[str, dict] = {}
    groups: set[str] = set()
    fast = lora = 0
    max_rank = 0
    for name, module in _targets(model, config):
        target = name.rsplit(".", 1)[-1]
        d, k = features(module)
        check_n_divides(n, d, k, name)  # a config that cannot be built has no price
        entry = per_target.setdefault(target, {"layers": 0, "fast": 0})
        entry["layers"] += 1
        entry["fast"] += r * (k + d)
        fast += r * (k + d)
        lora += lora_rank * (k + d)
        max_rank = max(max_rank, min(n * (rho or n) * r, k, d))
        groups.add(sharing_group(config.share_slow_weights, target, name))
    slow_each = n**3 if rho is None else 2 * n * n * rho
    per_group = {g: slow_each for g in sorted(groups)}
    bias = _trained_biases(model, config, [m for _, m in _targets(model, config)])
    return ParameterReport(per_target, per_group, fast, slow_each * len(groups), lora_rank, lora, max_rank, bias)


def _trained_biases(model: nn.Module, config: KAdaptationConfig, targets: list[nn.Module]) -> int:
    if config.bias == "kadapt_only":
        return sum(m.bias.numel() for m in targets if m.bias is not None)
    if config.bias == "all":
        saved = tuple(config.modules_to_save or ())
        return sum(
            p.numel()
            for n, p in model.named_parameters()
            if n.endswith(".bias") and not any(f"{s}." in f".{n}" for s in saved)
        )
    return 0


def propose_configs(
    model: nn.Module,
    budget: int,
    target_modules=None,
    share_slow_weights: str = "per_target",
    max_r: int = 8,
    top: int = 5,
) -> list[tuple[dict, ParameterReport]]:
    """Settings (n, r, slow_rank) whose adapter fits in `budget` parameters, most expressive first.

    Ranked by the largest rank ΔW can reach, then by cost (cheaper first). `n` runs over the divisors shared by every
    targeted layer; `slow_rank` over None (full) and powers of two below n/2.
    """
    base = KAdaptationConfig(n=1, target_modules=target_modules, share_slow_weights=share_slow_weights)
    layers = _targets(model, base)
    common = math.gcd(*(math.gcd(*features(m)) for _, m in layers))
    candidates = []
    for n in (m for m in range(1, common + 1) if common % m == 0):
        for r in range(1, max_r + 1):
            # ρ ≥ n/2 costs at least the full n³ with a lower rank bound: never worth proposing
            for rho in [None] + [2**e for e in range(n.bit_length()) if 2 * 2**e < n]:
                config = KAdaptationConfig(
                    n=n, r=r, slow_rank=rho, target_modules=target_modules, share_slow_weights=share_slow_weights
                )
                report = parameter_report(model, config)
                if report.total <= budget:
                    candidates.append(({"n": n, "r": r, "slow_rank": rho}, report))
    if not candidates:
        cheapest = parameter_report(
            model, KAdaptationConfig(n=1, r=1, target_modules=target_modules, share_slow_weights=share_slow_weights)
        )
        raise ValueError(
            f"A budget of {budget:,d} parameters is below the smallest KAdaptation on these layers "
            f"({cheapest.total:,d}: n=1, r=1, one r·(k+d) per layer). Raise the budget or adapt fewer "
            "layers."
        )
    candidates.sort(key=lambda c: (-c[1].max_rank, c[1].total))
    return candidates[:top]


def proposals_markdown(proposals: list[tuple[dict, ParameterReport]]) -> str:
    """The settings `propose_configs` returns, as a markdown table."""
    lines = ["| n | r | slow_rank | parameters | max rank of ΔW |", "|---|---|---|---|---|"]
    for setting, report in proposals:
        lines.append(
            f"| {setting['n']} | {setting['r']} | {setting['slow_rank']} | {report.total:,d} | {report.max_rank} |"
        )
    return "\n".join(lines)
