"""bf16 contractions whose backward reaches XLA:CPU's bf16 matrix kernels.

XLA:CPU runs a bf16 x bf16 -> f32 dot on its fast kernels (YNNPACK / oneDNN, AMX or
AVX512-BF16) only in the row-major form [.., M, K] x [.., K, N]. The dots autodiff writes for
a backward pass contract other dimensions (the weight gradient x^T g contracts the rows of
both operands), and XLA folds any transpose we put in front of them back into the dot's
dimension numbers, or makes it a layout change, so they run on the generic fp32 path:
measured 5-7x slower than the forward dot of the same size (BENCHMARKS.md, "bf16 compute").

`einsum` here is jnp.einsum in the forward (the same numbers as before, so the sampler and
the training forward still agree) with a custom VJP: each cotangent is computed as a
row-major batched matmul over operands that were *physically* transposed first. The copy is
forced by a flatten that goes through `optimization_barrier`: XLA cannot see through the
barrier to fold the transpose into the dot or turn it into a layout, so it writes the
transposed array and the dot that reads it is the fast kind. The copies cost O(size) memory
traffic against the dot's O(M K N) work.

Only for bf16 operands (transformer._contract uses it then); fp32 keeps jnp.einsum itself.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def _parse(eq: str) -> tuple[str, str, str]:
  inputs, out = eq.replace(" ", "").split("->")
  a, b = inputs.split(",")
  for spec in (a, b, out):
    if len(set(spec)) != len(spec) or not spec.isalpha():
      raise ValueError(f"einsum {eq!r}: each operand needs distinct single-letter axes "
                       "(no '...', no repeated letters).")
  if set(out) - set(a) - set(b) or (set(a) ^ set(b)) - set(out):
    raise ValueError(f"einsum {eq!r}: every output axis must come from an operand and every "
                     "axis of only one operand must be in the output (no lone sums).")
  return a, b, out


def physical_transpose(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
  """jnp.transpose(x, perm) materialised in row-major order (see the module docstring)."""
  if tuple(perm) == tuple(range(x.ndim)):
    return x
  y = jnp.transpose(x, perm)
  return lax.optimization_barrier(y.reshape(-1)).reshape(y.shape)


def matmul_einsum(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(eq, a, b) accumulated in fp32, as one row-major batched matmul [G, M, K] x [G, K, N]
  (each operand transposed into that order physically when it is not in it already)."""
  sa, sb, so = _parse(eq)
  batch = [c for c in so if c in sa and c in sb]
  contract = [c for c in sa if c in sb and c not in so]
  free_a = [c for c in sa if c not in sb]
  free_b = [c for c in sb if c not in sa]
  size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}
  prod = lambda axes: int(np.prod([size[c] for c in axes], dtype=np.int64))
  a3 = physical_transpose(a, tuple(sa.index(c) for c in batch + free_a + contract)).reshape(
      prod(batch), prod(free_a), prod(contract))
  b3 = physical_transpose(b, tuple(sb.index(c) for c in batch + contract + free_b)).reshape(
      prod(batch), prod(contract), prod(free_b))
  out = lax.dot_general(a3, b3, (((2,), (1,)), ((0,), (0,))),
                        preferred_element_type=jnp.float32)
  natural = batch + free_a + free_b
  out = out.reshape([size[c] for c in natural])
  perm = tuple(natural.index(c) for c in so)
  if perm != tuple(range(len(perm))):
    # Else XLA folds the transpose into the dot by swapping its operands: the slow form again.
    out = lax.optimization_barrier(out)
  return jnp.transpose(out, perm)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum(eq, a, b, preferred_element_type=float32), with the row-major backward."""
  return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _fwd(eq, a, b):
  return einsum(eq, a, b), (a, b)


def _bwd(eq, residuals, g):
  a, b = residuals
  sa, sb, so = _parse(eq)
  g = g.astype(jnp.promote_types(a.dtype, b.dtype))  # bf16 cotangent operands, fp32 sums.
  da = matmul_einsum(f"{so},{sb}->{sa}", g, b).astype(a.dtype)
  db = matmul_einsum(f"{sa},{so}->{sb}", a, g).astype(b.dtype)
  return da, db


einsum.defvjp(_fwd, _bwd)
