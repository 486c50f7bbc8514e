"""Pure tensor maths of KAdaptation: no modules, no adapter names.

Shapes (one adapted layer, weight W of shape (k, d) = (out_features, in_features)):

    A: (n, n, n)      the n slow matrices A_i, stacked (A[i] = A_i); shared across the layers of a group
    u: (k/n, n, r)    fast weights, u[:, i] = u_i, left factor of B_i = u_i v_iᵀ
    v: (d/n, n, r)    fast weights, v[:, i] = v_i, right factor

With `slow_rank` ρ each A_i = a_i c_iᵀ: A holds the left factors a (n, n, ρ) and A_right the right factors c (n, n, ρ).

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


def apply_slow_factors_separately(n: int, slow_rank: int | None) -> bool:
    """Whether a_i (c_iᵀ ·) costs less than building A_i = a_i c_iᵀ and applying it: 2·n·ρ < n² (2ρ < n)."""
    return slow_rank is not None and 2 * slow_rank < n


def slow_matrices(A: torch.Tensor, A_right: torch.Tensor | None = None) -> torch.Tensor:
    """The (n, n, n) stack of A_i: A itself, or a_i c_iᵀ from the factors when `A_right` is given."""
    return A if A_right is None else torch.bmm(A, A_right.transpose(1, 2))


def kron_forward(
    x: torch.Tensor,
    A: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    A_right: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ ΔWᵀ without building ΔW: cost per token n·r·(k + d) + n³·r multiply-adds instead of k·d.

    With factorised slow weights (`A_right` given) the A_i are applied as a_i (c_iᵀ ·), never built, when that is
    cheaper (2ρ < n): n²·ρ·r·2 instead of n³·r per token.
    """
    if A_right is not None and not apply_slow_factors_separately(A.shape[0], A.shape[-1]):
        A, A_right = slow_matrices(A, A_right), None
    k_blk, n, r = u.shape
    d_blk = v.shape[0]
    lead = x.shape[:-1]
    X = x.reshape(-1, d_blk)  # (T·n_p, d/n): row t·n + p holds block p of token t
    Z = X @ v.reshape(d_blk, n * r)  # (T·n_p, n_i·r): X v_i for every i
    Z = Z.view(-1, n, n, r).permute(2, 1, 0, 3).reshape(n, n, -1)  # (n_i, n_p, T·r)
    if A_right is not None:
        Z = torch.bmm(A_right.transpose(1, 2), Z)  # (n_i, ρ, T·r): c_iᵀ X v_i
    Z = torch.bmm(A, Z)  # (n_i, n_j, T·r): A_i X v_i for every i
    Z = Z.view(n, n, -1, r).permute(2, 1, 0, 3).reshape(-1, n * r)  # (T·n_j, n_i·r)
    Y = F.linear(Z, u.reshape(k_blk, n * r))  # (T·n_j, k/n): Σ_i (A_i X v_i) u_iᵀ
    return (Y * scaling).reshape(*lead, n * k_blk)


def factored_cost(n: int, r: int, in_features: int, out_features: int, slow_rank: int | None = None) -> int:
    """Multiply-adds per token of the factored forward."""
    slow = 2 * n * n * slow_rank * r if apply_slow_factors_separately(n, slow_rank) else n**3 * r
    return n * r * (in_features + out_features) + slow


# Measured on the 2-core CPU (benchmarks/speed.py --sweep): the three small matmuls and two permutes of the factored
# forward run at roughly a quarter of the speed per multiply-add of one large matmul.
FACTORED_EFFICIENCY_PENALTY = 4


def prefer_factored(
    n: int, r: int, in_features: int, out_features: int, tokens: int, training: bool, slow_rank: int | None = None
) -> bool:
    """Whether the factored forward is cheaper than materialising ΔW, by a measured cost model.

    Materialised costs: building ΔW (about n·k·d), plus, when gradients flow, one extra (tokens × k × d) matmul for
    the gradient of the fused weight W + ΔW. Factored costs tokens · factored_cost, three times over when training.
    """
    kd = in_features * out_features
    passes = 3 if training else 1
    per_token = factored_cost(n, r, in_features, out_features, slow_rank)
    factored = tokens * per_token * passes * FACTORED_EFFICIENCY_PENALTY
    materialised = n * kd * passes + (tokens * kd if training else 0)
    return factored < materialised
