"""Sharded forward on 8 emulated CPU devices equals the single-device forward."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from score_jax import model, sharding

MESH_SHAPES = [(8, 1, 1), (2, 4, 1), (1, 2, 4)]

# Expected specs, written out per mesh from the rule table (an independent restatement).
# tiny-gemma3: V=512, D=64, N=4, K=2, F=128, L=6.
EXPECTED = {
    (8, 1, 1): {},  # pure data parallelism: every parameter replicated.
    (2, 4, 1): {
        "embedder/input_embedding": P(None, "fsdp"),
        "layers/attn/q_einsum/w": P(None, None, "fsdp", None),
        "layers/attn/kv_einsum/w": P(None, None, None, "fsdp", None),
        "layers/attn/attn_vec_einsum/w": P(None, None, None, "fsdp"),
        "layers/mlp/gating_einsum/w": P(None, None, "fsdp", None),
        "layers/mlp/linear/w": P(None, None, "fsdp"),
    },
    (1, 2, 4): {
        "embedder/input_embedding": P("tensor", "fsdp"),
        "layers/attn/q_einsum/w": P(None, "tensor", "fsdp", None),
        # 2 KV heads cannot split 4 ways: replicated over tensor.
        "layers/attn/kv_einsum/w": P(None, None, None, "fsdp", None),
        "layers/attn/attn_vec_einsum/w": P(None, "tensor", None, "fsdp"),
        "layers/mlp/gating_einsum/w": P(None, None, "fsdp", "tensor"),
        "layers/mlp/linear/w": P(None, "tensor", "fsdp"),
    },
}


def _normalise(spec: P, ndim: int) -> tuple:
  entries = tuple(spec) + (None,) * (ndim - len(spec))
  return entries


@pytest.fixture(scope="module")
def setup():
  assert jax.device_count() == 8, "tests/conftest.py should emulate 8 CPU devices"
  config = model.get_config("tiny-gemma3")
  params = model.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (8, 12)).astype(np.int32)
  fwd = jax.jit(model.logits, static_argnums=0)
  with jax.set_mesh(sharding.make_mesh((1, 1, 1), jax.devices()[:1])):
    reference = np.asarray(fwd(config, params, tokens))
  return config, params, tokens, fwd, reference


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
def test_sharded_forward_matches_single_device(setup, mesh_shape):
  config, params, tokens, fwd, reference = setup
  mesh = sharding.make_mesh(mesh_shape)
  sharded = sharding.shard_params(params, mesh)
  for path, x in traverse_util.flatten_dict(sharded, sep="/").items():
    want = EXPECTED[mesh_shape].get(path, P())
    assert _normalise(x.sharding.spec, x.ndim) == _normalise(want, x.ndim), path
  with jax.set_mesh(mesh):
    out = fwd(config, sharded, jax.device_put(tokens, sharding.batch_sharding(mesh, 2)))
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), reference, atol=2e-5, rtol=0)


def test_jit_with_explicit_shardings():
  """jax.jit with in/out shardings from the rules (the pattern train steps use)."""
  config = model.get_config("tiny")
  mesh = sharding.make_mesh((2, 1, 4))
  params = model.init_params(config, jax.random.key(1))
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (4, 6)).astype(np.int32)
  fwd = jax.jit(lambda p, t: model.logits(config, p, t),
                in_shardings=(sharding.param_shardings(params, mesh),
                              sharding.batch_sharding(mesh, 2)),
                out_shardings=sharding.batch_sharding(mesh, 3))
  with jax.set_mesh(mesh):
    out = fwd(params, tokens)
  np.testing.assert_allclose(np.asarray(out), np.asarray(model.logits(config, params, tokens)),
                             atol=2e-5)


def test_mesh_errors():
  with pytest.raises(ValueError, match="needs 6 devices but 8 are available"):
    sharding.make_mesh((2, 3, 1))
  with pytest.raises(ValueError, match="must have 3 entries"):
    sharding.make_mesh((8,))
  assert dict(sharding.make_mesh((2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="no sharding rule matches parameter 'extra/w'"):
    sharding.param_specs({"extra": {"w": np.zeros((2, 2))}}, sharding.make_mesh((8, 1, 1)))
