"""The Kronecker maths on its own, against `torch.kron`."""

import pytest
import torch

from peft_kadapt.functional import kron_delta_weight, kron_forward


def reference_delta(A, u, v, scaling):
    return scaling * sum(torch.kron(A[i], u[:, i] @ v[:, i].T) for i in range(A.shape[0]))


def factors(n, r, k, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, n, generator=g, dtype=dtype)
    u = torch.randn(k // n, n, r, generator=g, dtype=dtype)
    v = torch.randn(d // n, n, r, generator=g, dtype=dtype)
    return A, u, v


SHAPES = [(1, 1, 6, 4), (2, 1, 8, 4), (4, 2, 16, 24), (8, 3, 32, 16), (3, 5, 9, 27)]


@pytest.mark.parametrize("n,r,k,d", SHAPES)
def test_delta_weight_equals_sum_of_kron(n, r, k, d):
    A, u, v = factors(n, r, k, d)
    torch.testing.assert_close(kron_delta_weight(A, u, v, 0.7), reference_delta(A, u, v, 0.7))


@pytest.mark.parametrize("n,r,k,d", SHAPES)
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_factored_forward_equals_materialised(n, r, k, d, lead):
    A, u, v = factors(n, r, k, d)
    x = torch.randn(*lead, d, dtype=torch.float64)
    expected = x @ reference_delta(A, u, v, 1.3).T
    torch.testing.assert_close(kron_forward(x, A, u, v, 1.3), expected)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_factored_forward_low_precision(dtype, tol):
    A, u, v = factors(4, 2, 16, 8, dtype=torch.float64)
    x = torch.randn(7, 8, dtype=torch.float64)
    expected = x @ reference_delta(A, u, v, 0.5).T
    got = kron_forward(x.to(dtype), A.to(dtype), u.to(dtype), v.to(dtype), 0.5).double()
    assert (got - expected).abs().max() <= tol * expected.abs().max()


def rearrange(delta, n):
    """Van Loan - Pitsianis: block (p, q) of size (k/n, d/n) becomes row p·n + q."""
    k, d = delta.shape
    blocks = delta.reshape(n, k // n, n, d // n).permute(0, 2, 1, 3)
    return blocks.reshape(n * n, (k // n) * (d // n))


def test_rearranged_rank_is_at_most_n_within_a_sharing_group():
    n, r, k, d = 4, 3, 16, 24
    A, _, _ = factors(n, r, k, d)
    layers = [factors(n, r, k, d, seed=s)[1:] for s in range(1, 4)]  # same A, own u and v
    stacked = torch.cat([rearrange(kron_delta_weight(A, u, v, 1.0), n) for u, v in layers], dim=1)
    assert torch.linalg.matrix_rank(stacked).item() <= n
    # and a layer's ΔW itself can exceed the rank of one LoRA-r update
    assert torch.linalg.matrix_rank(kron_delta_weight(A, *layers[0], 1.0)).item() > r


def test_gradients_are_contiguous_in_both_forms():
    A, u, v = (t.float().requires_grad_() for t in factors(4, 2, 16, 8))
    x = torch.randn(5, 8)
    for compute in (lambda: kron_forward(x, A, u, v, 1.0), lambda: x @ kron_delta_weight(A, u, v, 1.0).T):
        A.grad = u.grad = v.grad = None
        compute().square().sum().backward()
        assert all(t.grad.is_contiguous() for t in (A, u, v))  # DDP buckets warn and copy otherwise


@pytest.mark.parametrize("n,rho,r,k,d", [(4, 1, 1, 16, 24), (6, 2, 2, 36, 36), (8, 4, 1, 64, 32), (4, 3, 2, 16, 16)])
def test_factorised_slow_weights(n, rho, r, k, d):
    from peft_kadapt.functional import slow_matrices

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, rho, generator=g, dtype=torch.float64)
    c = torch.randn(n, n, rho, generator=g, dtype=torch.float64)
    _, u, v = factors(n, r, k, d)
    A = torch.stack([a[i] @ c[i].T for i in range(n)])
    torch.testing.assert_close(slow_matrices(a, c), A)
    x = torch.randn(3, d, dtype=torch.float64)
    expected = x @ reference_delta(A, u, v, 0.9).T
    torch.testing.assert_close(kron_forward(x, a, u, v, 0.9, A_right=c), expected)  # a_i (c_iᵀ ·) or built A_i
    # rank(ΔW) <= n·ρ·r instead of n²·r
    assert torch.linalg.matrix_rank(kron_delta_weight(A, u, v, 1.0)).item() <= min(n * rho * r, k, d)
