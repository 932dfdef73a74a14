"""`nnx.Linear` with a hand-written backward pass: the kernel gradient as one 2-D matmul over the flattened rows.

Being a `jax.custom_vjp`, it supports reverse mode (grad, vjp, grad of grad) but not forward mode: `jax.jvp`,
`jax.jacfwd` or `jax.hessian` through these layers raise. Build a model with plain `nnx.Linear` layers for those.
"""

from __future__ import annotations

import jax
from flax import nnx


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """(..., K) @ (K, N) -> (..., N)."""
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_forward(x, kernel):
    return matmul(x, kernel), (x, kernel)


def _matmul_backward(residuals, grad_out):
    # The kernel gradient as one 2-D matmul over the flattened rows, not autodiff's contraction over two axes
    # (B and T), which XLA:CPU surrounds with transposes.
    x, kernel = residuals
    grad_x = jax.lax.dot_general(grad_out, kernel, (((grad_out.ndim - 1,), (1,)), ((), ())))
    rows = x.reshape(-1, x.shape[-1])
    grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
    grad_kernel = jax.lax.dot_general(rows, grad_rows, (((0,), (0,)), ((), ())))
    return grad_x, grad_kernel


matmul.defvjp(_matmul_forward, _matmul_backward)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """Drop-in for `jax.lax.dot_general` in `nnx.Linear`: its (..., K) x (K, N) case goes through `matmul`."""
    plain_linear = dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2
    if plain_linear and precision is None and preferred_element_type is None and out_sharding is None:
        return matmul(lhs, rhs)
    return jax.lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )


def Linear(in_features: int, out_features: int, **kwargs) -> nnx.Linear:  # noqa: N802 (a constructor)
    """`nnx.Linear` (same parameters, same forward) whose backward pass uses `matmul`'s."""
    return nnx.Linear(in_features, out_features, dot_general=dot_general, **kwargs)
