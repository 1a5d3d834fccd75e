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
