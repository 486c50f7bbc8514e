"""Pure tensor maths of KAdaptation: no modules, no adapter names.

Shapes (one adapted layer, weight W of shape (k, d) = (out_features, in_features)):

    A: (n, n, n)      the n slow matrices A_i, stacked (A[i] = A_i); shared across the layers of a group
    u: (k/n, n, r)    fast weights, u[:, i] = u_i, left factor of B_i = u_i v_iᵀ
    v: (d/n, n, r)    fast weights, v[:, i] = v_i, right factor

The term index i sits in the middle of u and v so that both enter the forward as plain reshapes (no copies) and their
gradients come back contiguous, as DDP's gradient buckets expect.

    ΔW = s · Σ_i A_i ⊗ (u_i v_iᵀ)        (k, d)

Kronecker identity used by the factored forward: with x of length d viewed row-major as X of shape (n, d/n),
(A_i ⊗ B_i) x viewed as (n, k/n) equals A_i X B_iᵀ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kron_delta_weight(A: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """ΔW = scaling · Σ_i A_i ⊗ (u_i v_iᵀ), shape (k, d)."""
    k_blk, n, _ = u.shape
    d_blk = v.shape[0]
    B = torch.einsum("sir,qir->isq", u, v)  # (n, k/n, d/n): B_i = u_i v_iᵀ
    # ΔW[j*k_blk + s, p*d_blk + q] = Σ_i A_i[j, p] · B_i[s, q]
    delta = torch.einsum("ijp,isq->jspq", A, B)  # (n_j, k/n, n_p, d/n)
    return delta.reshape(n * k_blk, n * d_blk) * scaling


def kron_forward(x: torch.Tensor, A: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """x @ ΔWᵀ without building ΔW: cost per token n·r·(k + d) + n³·r multiply-adds instead of k·d."""
    k_blk, n, r = u.shape
    d_blk = v.shape[0]
    lead = x.shape[:-1]
    X = x.reshape(-1, d_blk)  # (T·n_p, d/n): row t·n + p holds block p of token t
    Z = X @ v.reshape(d_blk, n * r)  # (T·n_p, n_i·r): X v_i for every i
    Z = Z.view(-1, n, n, r).permute(2, 1, 0, 3).reshape(n, n, -1)  # (n_i, n_p, T·r)
    Z = torch.bmm(A, Z)  # (n_i, n_j, T·r): A_i X v_i for every i
    Z = Z.view(n, n, -1, r).permute(2, 1, 0, 3).reshape(-1, n * r)  # (T·n_j, n_i·r)
    Y = F.linear(Z, u.reshape(k_blk, n * r))  # (T·n_j, k/n): Σ_i (A_i X v_i) u_iᵀ
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
