"""Pure tensor maths of KAdaptation: no modules, no adapter names.

Shapes (one adapted layer, weight W of shape (k, d) = (out_features, in_features)):

    A: (n, n, n)      the n slow matrices A_i, stacked; shared across the layers of a group
    u: (n, k/n, r)    fast weights, left factors of B_i = u_i v_iᵀ
    v: (n, d/n, r)    fast weights, right factors

    ΔW = s · Σ_i A_i ⊗ (u_i v_iᵀ)        (k, d)

Kronecker identity used by the factored forward: with x of length d viewed row-major as X of shape (n, d/n),
(A_i ⊗ B_i) x viewed as (n, k/n) equals A_i X B_iᵀ.
"""

from __future__ import annotations

import torch


def kron_delta_weight(A: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """ΔW = scaling · Σ_i A_i ⊗ (u_i v_iᵀ), shape (k, d)."""
    n, k_blk, _ = u.shape
    d_blk = v.shape[1]
    # ΔW[j*k_blk + s, p*d_blk + q] = Σ_i A_i[j, p] · Σ_r u_i[s, r] v_i[q, r]
    B = torch.bmm(u, v.transpose(1, 2))  # (n, k/n, d/n)
    delta = torch.einsum("ijp,isq->jspq", A, B)  # (n_j, k/n, n_p, d/n)
    return delta.reshape(n * k_blk, n * d_blk) * scaling


def kron_forward(x: torch.Tensor, A: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """x @ ΔWᵀ without building ΔW: cost per token n·r·(k + d) + n³·r multiply-adds instead of k·d."""
    n, k_blk, r = u.shape
    d_blk = v.shape[1]
    lead = x.shape[:-1]
    X = x.reshape(-1, d_blk)  # (T·n_p, d/n): row t·n + p holds block p of token t
    Z = X @ v.permute(1, 0, 2).reshape(d_blk, n * r)  # (T·n_p, n_i·r)
    Z = Z.view(-1, n, n, r).permute(2, 1, 0, 3).reshape(n, n, -1)  # (n_i, n_p, T·r)
    Z = torch.bmm(A, Z)  # (n_i, n_j, T·r): A_i X v_i for every i
    Z = Z.view(n, n, -1, r).permute(2, 1, 0, 3).reshape(-1, n * r)  # (T·n_j, n_i·r)
    Y = Z @ u.permute(0, 2, 1).reshape(n * r, k_blk)  # (T·n_j, k/n): Σ_i (A_i X v_i) u_iᵀ
    return (Y * scaling).reshape(*lead, n * k_blk)


def factored_cost(n: int, r: int, in_features: int, out_features: int) -> int:
    """Multiply-adds per token of the factored forward."""
    return n * r * (in_features + out_features) + n**3 * r


# Measured on the 2-core CPU (benchmarks/speed.py --sweep): the three small matmuls and two permutes of the factored
# forward run at roughly a quarter of the speed per multiply-add of one large matmul.
FACTORED_EFFICIENCY_PENALTY = 4


def prefer_factored(n: int, r: int, in_features: int, out_features: int, tokens: int, training: bool) -> bool:
    """Whether the factored forward is cheaper than materialising ΔW, by a measured cost model.

    Materialised costs: building ΔW (about n·k·d), plus, when gradients flow, one extra (tokens × k × d) matmul for
    the gradient of the fused weight W + ΔW. Factored costs tokens · factored_cost, three times over when training.
    """
    kd = in_features * out_features
    passes = 3 if training else 1
    factored = tokens * factored_cost(n, r, in_features, out_features) * passes * FACTORED_EFFICIENCY_PENALTY
    materialised = n * kd * passes + (tokens * kd if training else 0)
    return factored < materialised
