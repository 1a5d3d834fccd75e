"""Shared test helpers (importable as `tests.utils`)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_jax import model


def random_params(config: model.ModelConfig, seed: int, final_norm_offset: float = 1.0):
  """Every weight random (norm scales too), embedding small next to the blocks.

  With init_params the tied embedding dominates the residual stream and greedy
  decoding just repeats the last token; these params give varied continuations
  and peaked logits, so argmax ties (which would make the oracles moot) are far
  apart. `final_norm_offset` sharpens the output distribution.
  """
  shapes = jax.eval_shape(lambda key: model.init_params(config, key), jax.random.key(0))
  flat = traverse_util.flatten_dict(shapes, sep="/")
  rng = np.random.default_rng(seed)
  out = {}
  for path, x in flat.items():
    std = 0.05 if path == "embedder/input_embedding" else 0.5
    out[path] = jnp.asarray(rng.normal(0.0, std, x.shape), jnp.float32)
  out["final_norm/scale"] = out["final_norm/scale"] + final_norm_offset
  return traverse_util.unflatten_dict(out, sep="/")


def hand_stage2_loss(config: model.ModelConfig, params, ref, batch, *, alpha: float, beta1: float,
                     k: int = 2):
  """Stage II written out from the paper (Eq. 4), independent of score_jax.losses: RLOO over
  k = 2 samples by hand (the other episode), log_softmax, the exact KL summed per attempt."""
  assert k == 2, "the hand leave-one-out below is the k = 2 case"
  r1, r2 = batch["rewards"]
  big_r2 = r2 + alpha * (r2 - r1)
  loo = lambda r: r - r.reshape(-1, k)[:, ::-1].reshape(-1)  # k=2: minus the other episode
  adv = np.stack([loo(r1), loo(big_r2)])
  tokens = jnp.asarray(batch["tokens"])
  logp = jax.nn.log_softmax(model.logits(config, params, tokens), -1)
  logq = jax.nn.log_softmax(model.logits(config, ref, tokens), -1)
  tok_lp = jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  kl = jnp.sum(jnp.exp(logp) * (logp - logq), -1)[:, :-1]
  total = 0.0
  for a in range(2):
    m = batch["loss_mask"][a][:, 1:]
    total += -jnp.mean(adv[a] * jnp.sum(tok_lp * m, -1)) + beta1 * jnp.mean(jnp.sum(kl * m, -1))
  return total
