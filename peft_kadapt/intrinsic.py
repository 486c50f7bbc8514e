"""Local intrinsic dimension of submodule groups (the paper's first half; Li et al. 2018, Aghajanyan et al. 2020).

For a group S of parameters (e.g. every attention query projection), train only θ_S = θ_S,0 + P_S θ_d, θ_d ∈ R^d
starting at 0 (the classification head trains too), for a grid of d; d90 is the smallest d whose accuracy reaches 90 %
of a reference accuracy. P_S is a seeded random projection, regenerated from the seed and never stored: a dense
Gaussian when D·d is small, Fastfood (Hadamard-based, O(D) memory, O(D log D) time) otherwise. Both are scaled to keep
norms in expectation: E‖P θ_d‖² = ‖θ_d‖².

The model is never modified: the reparameterised forward goes through `torch.func.functional_call`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


DEFAULT_GROUPS = {  # group: module-name regex (transformers 5 and 4.x ViT names)
    "attention.query": r"(\.q_proj|\.query)$",
    "attention.key": r"(\.k_proj|\.key)$",
    "attention.value": r"(\.v_proj|\.value)$",
    "attention.output": r"(\.o_proj|attention\.output\.dense|\.out_proj)$",
    "mlp.fc1": r"(\.fc1|intermediate\.dense)$",
    "mlp.fc2": r"(\.mlp\.fc2|layer\.\d+\.output\.dense)$",
}
DENSE_MAX_ENTRIES = 2**24  # above D·d = 16.8 M entries, use Fastfood


_HADAMARD_BLOCK = 64


def hadamard(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The n × n Sylvester Hadamard matrix (n a power of two), entries ±1."""
    H = torch.ones(1, 1, dtype=dtype, device=device)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last dimension (a power of two): x @ H.

    H_{a·b} = H_a ⊗ H_b, so with x viewed as X (a × b), x @ H is vec(H_a X H_b): a matmul with a 64 × 64 block on the
    last axis, then the same transform along the other axis, recursively. O(L log L) multiply-adds in large matmuls.
    """
    length = x.shape[-1]
    if length & (length - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {length}.")
    if length <= _HADAMARD_BLOCK:
        return x @ hadamard(length, x.dtype, x.device)
    lead = x.shape[:-1]
    X = x.reshape(*lead, length // _HADAMARD_BLOCK, _HADAMARD_BLOCK) @ hadamard(_HADAMARD_BLOCK, x.dtype, x.device)
    X = fwht(X.transpose(-1, -2)).transpose(-1, -2)  # H_a along the other axis
    return X.reshape(*lead, length)


class DenseProjection(nn.Module):
    """P with i.i.d. N(0, 1/D) entries, (D × d), regenerated from the seed."""

    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        self.D, self.d, self.seed = D, d, seed
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.randn(D, d, generator=g) / math.sqrt(D), persistent=False)

    def forward(self, theta_d: torch.Tensor) -> torch.Tensor:
        return self.matrix @ theta_d


class FastfoodProjection(nn.Module):
    """P θ_d = sqrt(L/D) · first D entries of H G Π H B pad_L(θ_d) / sqrt(L ‖G‖²), L = 2^⌈log2 max(D, d)⌉.

    B: random signs, Π: random permutation, G: Gaussian diagonal, H: Walsh-Hadamard. HB and H are √L times
    orthogonal and Π is orthogonal, so E‖H G Π H B x‖² = L ‖G‖² ‖x‖²; keeping D of the L rows keeps D/L of the norm
    in expectation, which the sqrt(L/D) restores.
    """

    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        self.D, self.d, self.seed = D, d, seed
        self.L = 1 << max(1, math.ceil(math.log2(max(D, d))))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randint(0, 2, (self.L,), generator=g).float() * 2 - 1, persistent=False)
        self.register_buffer("Pi", torch.randperm(self.L, generator=g), persistent=False)
        G = torch.randn(self.L, generator=g)
        self.register_buffer("G", G, persistent=False)
        self.scale = math.sqrt(self.L / D) / math.sqrt(self.L * float((G * G).sum()))

    def forward(self, theta_d: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(self.L, dtype=theta_d.dtype, device=theta_d.device)
        x = x.index_copy(0, torch.arange(self.d, device=theta_d.device), theta_d)  # pad to L, differentiably
        x = fwht(x * self.B)[self.Pi] * self.G
        return fwht(x)[: self.D] * self.scale


def make_projection(D: int, d: int, seed: int, kind: str = "auto") -> nn.Module:
    if d > D:
        raise ValueError(
            f"d={d} is larger than the group's parameter count D={D}: the subspace would be the whole "
            "space. Use d <= D."
        )
    if kind == "auto":
        kind = "dense" if D * d <= DENSE_MAX_ENTRIES else "fastfood"
    if kind == "dense":
        return DenseProjection(D, d, seed)
    if kind == "fastfood":
        return FastfoodProjection(D, d, seed)
    raise ValueError(f"`kind` must be 'auto', 'dense' or 'fastfood', got {kind!r}.")


def group_parameters(model: nn.Module, pattern: str) -> list[str]:
    """Names of the parameters (weights and biases) of the modules whose names match `pattern` (re.search)."""
    regex = re.compile(pattern)
    names = [
        f"{module_name}.{p}"
        for module_name, module in model.named_modules()
        if module_name and regex.search(module_name)
        for p, _ in module.named_parameters(recurse=False)
    ]
    if not names:
        raise ValueError(f"The group regex {pattern!r} matches no module with parameters in this model.")
    return names


class Subspace(nn.Module):
    """θ_S = θ_S,0 + P θ_d over the named parameters of `model`; everything else is the model's own."""

    def __init__(
        self, model: nn.Module, names: Iterable[str], d: int, seed: int = 0, kind: str = "auto", scale: float = 1.0
    ):
        super().__init__()
        self.scale = scale  # multiplies P θ_d: with Adam, the same as scaling θ_d's learning rate
        params = dict(model.named_parameters())
        self.names = list(names)
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.D = sum(self.sizes)
        self.model = model
        self.theta_d = nn.Parameter(torch.zeros(d))
        self.projection = make_projection(self.D, d, seed, kind) if d > 0 else None
        self.register_buffer(
            "theta0", torch.cat([params[n].detach().reshape(-1) for n in self.names]), persistent=False
        )

    def overrides(self) -> dict[str, torch.Tensor]:
        if self.projection is None:  # d = 0: the frozen model
            flat = self.theta0
        else:
            flat = self.theta0 + self.scale * self.projection(self.theta_d)
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.overrides(), args, kwargs, strict=False)


@dataclass
class RunResult:
    """One subspace training: `accuracy` is the one d90 is measured on (validation); test is only reported."""

    group: str
    d: int
    D: int
    accuracy: float
    seconds: float
    test_accuracy: float | None = None
    seed: int = 0


def d90(results: list[RunResult], reference: float, fraction: float = 0.9) -> int | None:
    """Smallest d whose accuracy reaches `fraction` × `reference`; None if none does."""
    good = sorted(r.d for r in results if r.accuracy >= fraction * reference)
    return good[0] if good else None
