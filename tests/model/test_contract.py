"""contract.einsum: jnp.einsum's forward, a backward of row-major dots (the fast kind on CPU)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.model import contract

# (equation, lhs shape, rhs shape): the model's contractions (projections, attention, logits).
CASES = [("BTD,DNH->BTNH", (2, 5, 8), (8, 3, 4)), ("BTKGH,BSKH->BKGTS", (2, 5, 2, 3, 4), (2, 6, 2, 4)),
         ("BKGTS,BSKH->BTKGH", (2, 2, 3, 5, 6), (2, 6, 2, 4)), ("BTD,VD->BTV", (2, 5, 8), (11, 8)),
         ("BTD,CDF->CBTF", (2, 5, 8), (2, 8, 7)), ("BTNH,NHD->BTD", (2, 5, 3, 4), (3, 4, 8))]


@pytest.mark.parametrize("eq,sa,sb", CASES)
def test_value_and_gradients_match_float64_autodiff(eq, sa, sb):
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal(sa), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal(sb), jnp.bfloat16)
  out = contract.einsum(eq, a, b)
  assert out.dtype == jnp.float32
  # Oracle: numpy float64 on the same bf16 values; the cotangent is bf16-exact so that the
  # only rounding left is the fp32 accumulation.
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(out, np.einsum(eq, a64, b64), rtol=1e-5, atol=1e-5)
  c = np.asarray(jnp.asarray(rng.standard_normal(out.shape), jnp.bfloat16), np.float64)
  ga, gb = jax.grad(lambda x, y: (contract.einsum(eq, x, y) * c).sum(), (0, 1))(a, b)
  assert ga.dtype == gb.dtype == jnp.bfloat16
  ins, so = eq.split("->")
  la, lb = ins.split(",")
  np.testing.assert_allclose(np.asarray(ga, np.float64), np.einsum(f"{so},{lb}->{la}", c, b64),
                             rtol=1e-2, atol=1e-2)  # the cotangent's cast to bf16 at the end.
  np.testing.assert_allclose(np.asarray(gb, np.float64), np.einsum(f"{la},{so}->{lb}", a64, c),
                             rtol=1e-2, atol=1e-2)


_DOT = re.compile(r" dot\([^)]*\), (?:lhs_batch_dims=\{([\d,]*)\}, )?lhs_contracting_dims=\{(\d+)\}"
                  r"(?:, rhs_batch_dims=\{([\d,]*)\})?, rhs_contracting_dims=\{(\d+)\}")


def _row_major(lhs_batch: str, lhs: str, rhs_batch: str, rhs: str) -> bool:
  """lhs does not contract its first non-batch axis (the x^T g form) and rhs contracts its
  first non-batch axis (not the g w^T form)."""
  count = lambda dims: len([d for d in dims.split(",") if d])
  return int(lhs) != count(lhs_batch) and int(rhs) == count(rhs_batch)


def test_every_backward_dot_is_row_major():
  """The reason the module exists: every dot of the compiled gradient is in the row-major form
  XLA:CPU's bf16 kernels take. The same check fails on jnp.einsum's own autodiff."""
  eq = "BTD,DF->BTF"
  a = jnp.ones((4, 32, 64), jnp.bfloat16)
  b = jnp.ones((64, 128), jnp.bfloat16)
  ours = jax.jit(jax.grad(lambda x, y: contract.einsum(eq, x, y).sum(), (0, 1)))
  plain = jax.jit(jax.grad(lambda x, y: jnp.einsum(eq, x, y, preferred_element_type=jnp.float32)
                           .sum(), (0, 1)))
  ours_dots = _DOT.findall(ours.lower(a, b).compile().as_text())
  plain_dots = _DOT.findall(plain.lower(a, b).compile().as_text())
  assert ours_dots and plain_dots
  assert all(_row_major(*d) for d in ours_dots), ours_dots
  assert not all(_row_major(*d) for d in plain_dots), plain_dots


def test_bad_equations_are_named():
  x = jnp.ones((2, 3), jnp.bfloat16)
  with pytest.raises(ValueError, match="distinct single-letter"):
    contract.matmul_einsum("AA,AB->B", jnp.ones((3, 3), jnp.bfloat16), x.T)
  with pytest.raises(ValueError, match="lone sums"):
    contract.matmul_einsum("AB,BC->C", x, x.T)
