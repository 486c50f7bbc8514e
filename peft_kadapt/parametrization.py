"""How the factors of a KAdaptation layer start and how the update is scaled: the one place that decides it.

Two parametrisations (`KAdaptationConfig.parametrization`); both start at ΔW = 0 with gradient to every factor after
the first step, and both store the same tensors (a reparametrisation changes their initial values and the scaling,
never their shapes or names), so adapters of either load the same way:

| | "lora_matched" (default) | "legacy" (peft_kadapt 0.1) |
|---|---|---|
| u (output side, k/n × n × r) | 0, as LoRA's B | N(0, 0.1²) |
| v (input side, d/n × n × r) | N(0, 1/(3·d)), LoRA's A: kaiming-uniform variance on fan-in d | 0 |
| A_i (n × n) | N(0, 1/n): a unit-gain mixing of the n blocks | N(0, 1) |
| scaling | alpha / √(2·r) | alpha / √(n·r) |

Under Adam every stored entry moves by about the learning rate per step, so what sets the size of the update is which
factor starts at zero, the others' sizes and the scaling (docs/kadaptation.md, "What sets the size of the update").
"lora_matched" gives the update of a LoRA layer at the same alpha and learning rate, whatever n, r, the layer's
width or the sharing; "legacy" made an update whose size grew with √(in_features) and was about 10× LoRA r=8's on
ViT-S, which collapsed training at LoRA's usual settings and on the 1536-wide MLP.

With `slow_lr_ratio` m the stored slow weights are Â = A / m (the layers multiply by m through the scaling), so A
learns m times as fast under Adam; with `slow_rank` ρ, A_i = a_i c_iᵀ and each factor carries √m.
"""

from __future__ import annotations

import math


PARAMETRIZATIONS = ("lora_matched", "legacy")
DEFAULT_PARAMETRIZATION = "lora_matched"  # for new configs; a saved config without the field is "legacy"
# alpha when none is given: chosen on validation for each parametrisation (docs/kadaptation.md, "Choosing the defaults")
DEFAULT_ALPHA = {"lora_matched": 16.0, "legacy": 4.0}
LEGACY_U_STD = 0.1


def scaling(parametrization: str, alpha: float, n: int, r: int, slow_lr_ratio: float = 1.0) -> float:
    """The factor in front of Σ_i A_i ⊗ (u_i v_iᵀ)."""
    base = alpha / math.sqrt(2 * r) if parametrization == "lora_matched" else alpha / math.sqrt(n * r)
    return base * slow_lr_ratio


def fast_init_stds(parametrization: str, in_features: int, init_weights: bool) -> tuple[float, float]:
    """(std of u, std of v); 0 means the factor starts at zero (`init_weights=False`: both random, ΔW ≠ 0)."""
    if parametrization == "lora_matched":
        v_std = 1.0 / math.sqrt(3 * in_features)
        return (0.0 if init_weights else v_std), v_std
    return LEGACY_U_STD, (0.0 if init_weights else LEGACY_U_STD)


def slow_init_std(parametrization: str, n: int, slow_rank: int | None, slow_lr_ratio: float = 1.0) -> float:
    """Std of each stored slow-weight entry: of A_i itself, or of each factor a_i, c_i with `slow_rank` ρ (A_i's
    entries then have the same variance as a full A_i's: ρ · std⁴)."""
    variance = 1.0 / n if parametrization == "lora_matched" else 1.0  # of A_i's entries
    if slow_rank is None:
        return math.sqrt(variance) / slow_lr_ratio
    return (variance / slow_rank) ** 0.25 / math.sqrt(slow_lr_ratio)
