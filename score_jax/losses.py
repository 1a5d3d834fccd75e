"""Loss terms as small pure functions over logits, tokens and masks.

Shapes: B batch, T time, V vocab. Masks are float {0, 1} arrays [B, T] that
select the positions whose *target* token is trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """log softmax(logits)[target] per position, fp32 [B, T].

  Computed as logit[target] - logsumexp(logits), so no [B, T, V] log-softmax
  copy is materialised beside the logits.
  """
  logits_btv = logits_btv.astype(jnp.float32)
  picked_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  return picked_bt - jax.nn.logsumexp(logits_btv, axis=-1)


def next_token_logprobs(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
  """log p(tokens[t+1] | tokens[:t+1]) aligned to the *target* position: [B, T], 0 at t = 0."""
  lp_bt = token_logprobs(logits_btv[:, :-1], tokens_bt[:, 1:])
  return jnp.pad(lp_bt, ((0, 0), (1, 0)))


def masked_mean(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Mean of x over the positions where mask is 1 (0 when the mask is empty)."""
  return jnp.sum(x_bt * mask_bt) / jnp.maximum(jnp.sum(mask_bt), 1.0)


def sft_loss(logits_btv: jax.Array, tokens_bt: jax.Array, loss_mask_bt: jax.Array) -> jax.Array:
  """Token-level cross entropy on the masked target positions (supervised warm-start, STaR, Pair-SFT)."""
  return -masked_mean(next_token_logprobs(logits_btv, tokens_bt), loss_mask_bt)
