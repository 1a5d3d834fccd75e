"""Loss terms against hand-computed values."""

import numpy as np
import pytest

from score_jax import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_logprobs_matches_log_softmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 4
  targets = rng.integers(0, 7, (2, 5))
  expected = np.take_along_axis(_np_log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(losses.token_logprobs(logits, targets), expected, atol=1e-5)


def test_next_token_logprobs_alignment():
  # Logits that put all mass on token (t + 1) % 3 at position t: the sequence 0,1,2,0 is certain.
  logits = np.full((1, 4, 3), -1e4, np.float32)
  for t in range(4):
    logits[0, t, (t + 1) % 3] = 0.0
  lp = np.asarray(losses.next_token_logprobs(logits, np.array([[0, 1, 2, 0]])))
  np.testing.assert_allclose(lp, [[0, 0, 0, 0]], atol=1e-6)
  lp_wrong = np.asarray(losses.next_token_logprobs(logits, np.array([[0, 2, 2, 0]])))
  # Only the wrong token (position 1) is improbable; position 2 (2 after 2's context 0,2) is
  # predicted from position 1's logits, which favour 2.
  assert lp_wrong[0, 1] < -1e3
  np.testing.assert_allclose(lp_wrong[0, [0, 2, 3]], 0, atol=1e-6)


def test_sft_loss_hand_computed():
  # Uniform logits over 4 tokens: every target costs log 4; only masked positions count.
  logits = np.zeros((1, 3, 4), np.float32)
  tokens = np.array([[1, 2, 3]])
  mask = np.array([[0.0, 0.0, 1.0]])
  assert float(losses.sft_loss(logits, tokens, mask)) == pytest.approx(np.log(4), abs=1e-6)
  assert float(losses.masked_mean(np.ones((1, 3)), np.zeros((1, 3)))) == 0.0


# --- chunked log-probs / KL vs the full-logits oracle ----------------------------------------


def _chunk_setup(preset, **overrides):
  import jax
  import jax.numpy as jnp

  from score_jax import model
  from tests.utils import random_params
  config = model.get_config(preset, vocab_size=37, **overrides)
  params, ref = random_params(config, 0, 3.0), random_params(config, 1, 3.0)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 37, (2, 13)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(13, dtype=jnp.int32), tokens.shape)
  return config, params, ref, tokens, positions


@pytest.mark.parametrize("preset,overrides", [
    ("tiny", {"final_logit_softcap": 2.0}),  # Gemma 2 layout, a soft-cap that binds.
    ("tiny-gemma", {}),                      # Gemma 1: no soft-caps.
])
def test_chunked_token_terms_equal_full_logits_values_and_grads(preset, overrides):
  import jax
  import jax.numpy as jnp

  from score_jax import model
  config, params, ref, tokens, positions = _chunk_setup(preset, **overrides)
  full_logits = model.logits(config, params, tokens)
  if config.final_logit_softcap:  # the cap is active: logits sit near +-cap.
    assert float(jnp.abs(full_logits).max()) > 0.9 * config.final_logit_softcap
  weights = jnp.asarray(np.random.default_rng(3).normal(size=(3, 2, 13)), jnp.float32)

  def oracle(p):
    lg, ref_lg = model.logits(config, p, tokens), model.logits(config, ref, tokens)
    return {"logprob": losses.next_token_logprobs(lg, tokens),
            "ref_logprob": losses.next_token_logprobs(ref_lg, tokens),
            "kl": losses.shift_to_targets(losses.exact_kl(lg, ref_lg))}

  def chunked(p, chunk):
    h, _ = model.forward_hidden(config, p, tokens, positions)
    ref_h, _ = model.forward_hidden(config, ref, tokens, positions)
    return losses.chunked_token_terms(config, p, h, tokens, chunk=chunk, ref_params=ref,
                                      ref_h_btd=ref_h)

  scalar = lambda terms: sum(jnp.sum(w * terms[k]) for w, k in zip(
      weights, ("logprob", "ref_logprob", "kl")))
  # 5 does not divide the 12 predicting positions; 0 is one block. Gradients: chunk 5 only.
  # One jit (one compile) for the oracle and both chunkings.
  want, want_grads, got_5, got_0, grads = jax.jit(lambda p: (
      oracle(p), jax.grad(lambda q: scalar(oracle(q)))(p), chunked(p, 5), chunked(p, 0),
      jax.grad(lambda q: scalar(chunked(q, 5)))(p)))(params)
  for got in (got_5, got_0):
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert np.all(np.asarray(got["logprob"])[:, 0] == 0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5 * np.abs(b).max()),
               grads, want_grads)


def test_target_positions_left_packs_each_rows_mask():
  mask = np.zeros((3, 9), np.float32)
  mask[0, [2, 3, 7]] = 1
  mask[1, 1:9] = 1
  got = losses.target_positions(mask, multiple=4)
  # P = 8 (the most, already a multiple of 4), capped at T - 1 = 8; padding 0.
  np.testing.assert_array_equal(got, [[2, 3, 7, 0, 0, 0, 0, 0], list(range(1, 9)), [0] * 8])
  assert got.dtype == np.int32
  assert losses.target_positions(mask[:1], multiple=4).shape == (1, 4)
  assert losses.target_positions(np.zeros((2, 5)), multiple=4).shape == (2, 1)
  mask[2, 0] = 1
  with pytest.raises(ValueError, match="position 0"):
    losses.target_positions(mask)


def test_chunked_token_terms_at_target_positions_equal_full_path_where_masked():
  """Projecting only the masked positions (index_bp) gives the full path's values and
  gradients on the mask, and 0 elsewhere."""
  import jax
  import jax.numpy as jnp

  from score_jax import model
  config, params, ref, tokens, positions = _chunk_setup("tiny", final_logit_softcap=2.0)
  mask = np.zeros((2, 13), np.float32)
  mask[0, [3, 4, 5, 9, 10]] = 1  # two attempts' worth of targets, prompt and gap skipped.
  mask[1, 6:13] = 1
  index = jnp.asarray(losses.target_positions(mask, multiple=4))  # [2, 8]: padded rows.
  weights = jnp.asarray(np.random.default_rng(3).normal(size=(3, 2, 13)), jnp.float32) * mask

  def terms(p, index_bp):
    h, _ = model.forward_hidden(config, p, tokens, positions)
    ref_h, _ = model.forward_hidden(config, ref, tokens, positions)
    return losses.chunked_token_terms(config, p, h, tokens, chunk=3, ref_params=ref,
                                      ref_h_btd=ref_h, index_bp=index_bp)

  scalar = lambda t: sum(jnp.sum(w * t[k]) for w, k in zip(weights, ("logprob", "ref_logprob",
                                                                     "kl")))
  want, got, want_grads, grads = jax.jit(lambda p: (
      terms(p, None), terms(p, index), jax.grad(lambda q: scalar(terms(q, None)))(p),
      jax.grad(lambda q: scalar(terms(q, index)))(p)))(params)
  for key in want:
    np.testing.assert_allclose(got[key], np.asarray(want[key]) * mask, rtol=1e-5, atol=1e-6,
                               err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-5 * np.abs(b).max()),
               grads, want_grads)


def test_chunked_token_terms_never_builds_full_logits():
  import jax

  from score_jax import model
  config, params, _, tokens, positions = _chunk_setup("tiny")

  def loss(p, chunk):
    h, _ = model.forward_hidden(config, p, tokens, positions)
    return losses.chunked_token_terms(config, p, h, tokens, chunk=chunk)["logprob"].sum()

  def largest_vocab_array(chunk):
    # Every intermediate of the forward and backward pass with a vocab axis (V = 37).
    jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, chunk)
    sizes = []

    def walk(jx):
      for eqn in jx.eqns:
        for v in eqn.outvars:
          shape = getattr(v.aval, "shape", ())
          if shape and shape[-1] == 37:
            sizes.append(int(np.prod(shape)))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          walk(sub)
    walk(jaxpr.jaxpr)
    return max(sizes)

  assert largest_vocab_array(3) == 2 * 3 * 37  # one [B, C, V] block ...
  assert largest_vocab_array(0) == 2 * 12 * 37  # ... vs [B, T-1, V] unchunked.
  with pytest.raises(ValueError, match="ref_params and ref_h_btd"):
    losses.chunked_token_terms(config, params, np.zeros((2, 13, 64), np.float32), tokens,
                               chunk=4, ref_params=params)
