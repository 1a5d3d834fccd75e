"""Model configs, presets and forward-pass properties that need no external oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import model

# Published parameter counts (model cards / HF configs), in billions.
PUBLISHED_B = {"gemma-2b": 2.51, "gemma-7b": 8.54, "gemma2-2b": 2.61, "gemma2-9b": 9.24,
               "gemma2-27b": 27.2, "gemma3-270m": 0.268, "gemma3-1b": 1.00}


@pytest.mark.parametrize("name", sorted(PUBLISHED_B))
def test_preset_sizes_match_published(name):
  config = model.get_config(name)
  assert config.num_params() / 1e9 == pytest.approx(PUBLISHED_B[name], rel=5e-3)


def test_preset_features():
  g1, g2, g3 = (model.get_config(n) for n in ("gemma-2b", "gemma2-9b", "gemma3-4b"))
  assert g1.num_kv_heads == 1 and g1.attn_logit_softcap is None and not g1.use_post_attn_norm
  assert g2.layer_types[:4] == ("local", "global", "local", "global")
  assert (g2.attn_logit_softcap, g2.final_logit_softcap) == (50.0, 30.0)
  assert g3.layer_types[:6] == ("local",) * 5 + ("global",) and g3.use_qk_norm
  assert (g3.rope_base_local, g3.rope_base_global, g3.rope_scale_global) == (1e4, 1e6, 8.0)
  assert model.get_config("gemma2-27b").query_scale == pytest.approx(144 ** -0.5)


def test_config_errors():
  with pytest.raises(ValueError, match="unknown model preset 'gemma4'"):
    model.get_config("gemma4")
  with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['d_modle'\]"):
    model.get_config("tiny", d_modle=3)
  with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
    model.get_config("tiny", num_kv_heads=3)
  assert model.get_config("tiny-gemma3", num_layers=12).layer_types.count("global") == 2


def test_logits_are_causal():
  config = model.get_config("tiny")
  params = model.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 10))
  changed = tokens.copy()
  changed[0, 6:] = (changed[0, 6:] + 1) % config.vocab_size
  a, b = model.logits(config, params, tokens), model.logits(config, params, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])


def test_sliding_window_limits_context():
  """A local-only model cannot see tokens further back than its window."""
  config = model.get_config("tiny", layer_types=("local", "local"), sliding_window=3)
  params = model.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 12))
  changed = tokens.copy()
  changed[0, 0] = (changed[0, 0] + 1) % config.vocab_size
  a, b = model.logits(config, params, tokens), model.logits(config, params, changed)
  # Two local layers of window 3 reach back 2 + 2 = 4 positions.
  assert not np.allclose(a[:, 4], b[:, 4])
  np.testing.assert_array_equal(a[:, 5:], b[:, 5:])


def test_bf16_params_fp32_logits():
  c32 = model.get_config("tiny")
  c16 = model.get_config("tiny", dtype="bfloat16", param_dtype="bfloat16")
  p32 = model.init_params(c32, jax.random.key(0))
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(model.init_params(c16,
                                                                                jax.random.key(0))))
  tokens = np.random.default_rng(0).integers(0, c32.vocab_size, (2, 8))
  l16, l32 = model.logits(c16, p16, tokens), model.logits(c32, p32, tokens)
  assert l16.dtype == jnp.float32
  assert np.abs(np.asarray(l16) - np.asarray(l32)).max() < 0.1
  assert np.abs(np.asarray(l16) - np.asarray(l32)).max() > 0  # really ran in bf16


def test_remat_same_gradients():
  config = model.get_config("tiny")
  params = model.init_params(config, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 8))
  loss = lambda c: lambda p: model.logits(c, p, tokens).mean()
  g = jax.grad(loss(config))(params)
  g_remat = jax.grad(loss(model.get_config("tiny", remat=True)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_remat)


def test_bad_tokens_shape():
  config = model.get_config("tiny")
  params = model.init_params(config, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\[batch, time\]"):
    model.logits(config, params, np.zeros((3,), np.int32))
