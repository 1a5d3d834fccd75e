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
