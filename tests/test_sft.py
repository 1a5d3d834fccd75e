"""Supervised warm-start step: learns, and the sharded step equals the single-device one."""

import jax
import numpy as np
import optax
import pytest

from score_jax import losses as losses_lib, model, sft, sharding


def _examples(n=8):
  rng = np.random.default_rng(0)
  # Target = prompt reversed: learnable from the prompt only.
  out = []
  for _ in range(n):
    prompt = list(rng.integers(3, 40, 4))
    out.append([(prompt, False), (prompt[::-1], True)])
  return out


def test_pack_examples():
  batch = sft.pack_examples([[([5, 6], False), ([7], True)],
                             [([8], False), ([9], True), ([4], False), ([10], True)]],
                            seq_len=5, pad_id=0)
  np.testing.assert_array_equal(batch["tokens"], [[5, 6, 7, 0, 0], [8, 9, 4, 10, 0]])
  np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 1, 0, 0], [0, 1, 0, 1, 0]])
  bucketed = sft.pack_examples([[([5, 6], False), ([7], True)]], seq_len=64, bucket=2)
  np.testing.assert_array_equal(bucketed["tokens"], [[5, 6, 7, 0]])
  with pytest.raises(ValueError, match="raise seq_len"):
    sft.pack_examples([[([1, 2, 3], False), ([4, 5], True)]], seq_len=4)


def _train(mesh, steps, target_index=False):
  config = model.get_config("tiny", vocab_size=64)
  params = model.init_params(config, jax.random.key(0))
  opt = optax.adam(3e-3)
  state = sft.init_train_state(params, opt, mesh)
  step = sft.make_sft_step(config, opt, state, mesh)
  batch = sft.pack_examples(_examples(), seq_len=12)
  if target_index:  # project only the trained positions, as the warm-start does.
    batch["target_index"] = losses_lib.target_positions(batch["loss_mask"], multiple=8)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return state, losses


def test_sft_learns_and_sharded_matches_single_device():
  state1, losses1 = _train(sharding.make_mesh((1, 1, 1), jax.devices()[:1]), steps=30)
  assert losses1[-1] < 0.5 * losses1[0]
  state8, losses8 = _train(sharding.make_mesh((2, 2, 2)), steps=30, target_index=True)
  np.testing.assert_allclose(losses8, losses1, rtol=2e-4, atol=1e-5)
  assert int(state8["step"]) == 30
  leaf = state8["params"]["layers"]["mlp"]["linear"]["w"]
  assert len(leaf.sharding.device_set) == 8
