"""Loss terms as small pure functions over logits, tokens and masks.

Shapes: B batch, T time, V vocab, D model, C chunk. Masks are float {0, 1}
arrays [B, T] that select the positions whose *target* token is trained.

Training never builds the whole [B, T, V] logits tensor: `chunked_token_terms`
projects the final hidden states to logits C positions at a time (rematerialised
in the backward pass) and keeps only per-position scalars; given each row's
trained positions (`target_positions`, computed on the host from the loss mask)
it projects only those, skipping the prompts and instructions. `token_logprobs` and
`exact_kl` are its per-block building blocks; over full logits they (with
`next_token_logprobs`, `shift_to_targets`) are the oracle it is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.model.config import ModelConfig
from score_jax.model.transformer import Params, logits_from_hidden


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


def _to_chunks(x_bt: jax.Array, chunk: int) -> jax.Array:
  """[B, T, ...] right-padded to a multiple of `chunk` and split: [T / C, B, C, ...]."""
  b, t = x_bt.shape[:2]
  n = -(-t // chunk)
  pad = [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x_bt.ndim - 2)
  x_bt = jnp.pad(x_bt, pad)
  return jnp.moveaxis(x_bt.reshape(b, n, chunk, *x_bt.shape[2:]), 1, 0)


def target_positions(loss_mask_bt, multiple: int = 32) -> np.ndarray:
  """Host side: each row's trained target positions, left-packed: int32 [B, P].

  P is the most any row has, rounded up to `multiple` (a few compiled shapes)
  and at most T - 1. Padding is 0, which is never a target (position 0 has no
  context), so `index > 0` marks the real entries.
  """
  mask_bt = np.asarray(loss_mask_bt) > 0
  b, t = mask_bt.shape
  if t and mask_bt[:, 0].any():
    raise ValueError("the loss mask selects position 0, which no context predicts.")
  counts_b = mask_bt.sum(axis=1)
  p = max(1, min(t - 1, -(-int(counts_b.max(initial=0)) // multiple) * multiple))
  index_bp = np.zeros((b, p), np.int32)
  for row, positions in enumerate(mask_bt):
    found = np.flatnonzero(positions)
    index_bp[row, :len(found)] = found
  return index_bp


def chunked_token_terms(config: ModelConfig, params: Params, h_btd: jax.Array,
                        tokens_bt: jax.Array, *, chunk: int, ref_params: Params | None = None,
                        ref_h_btd: jax.Array | None = None, with_kl: bool = True,
                        index_bp: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-target-position terms from final hidden states, `chunk` positions at a time.

  Returns fp32 [B, T] arrays aligned to target positions (0 at t = 0), equal to
  the full-logits path: "logprob" = `next_token_logprobs(logits, tokens)`; with a
  reference, "ref_logprob" (no gradient) and, if `with_kl`, "kl" =
  `shift_to_targets(exact_kl(logits, ref_logits))`. Logits come from the model's
  own `logits_from_hidden` (tied projection and final soft-cap). Memory is a few
  fp32 [B, C, V] blocks (logits of both models, their gradient) instead of
  several [B, T, V] tensors: the per-chunk function is rematerialised
  (`jax.checkpoint`), so the backward pass recomputes a chunk's logits rather
  than storing them. chunk <= 0 means one chunk.

  index_bp (`target_positions` of the loss mask): only those positions are
  projected (the vocabulary projection is most of a small model's update);
  the others are 0 in the outputs, so the terms are equal wherever the mask is 1.
  """
  b, t = tokens_bt.shape
  if (ref_params is None) != (ref_h_btd is None):
    raise ValueError("pass both ref_params and ref_h_btd (or neither) to chunked_token_terms.")
  if t < 2:
    zeros = jnp.zeros((b, t), jnp.float32)
    return {"logprob": zeros} | ({} if ref_params is None else {"ref_logprob": zeros, "kl": zeros})
  if ref_params is not None:
    ref_params, ref_h_btd = jax.lax.stop_gradient((ref_params, ref_h_btd))
  if index_bp is None:
    # Context position t predicts token t + 1: drop the last hidden state and the first token.
    h_bnd, targets_bn = h_btd[:, :-1], tokens_bt[:, 1:]
    ref_h_bnd = None if ref_h_btd is None else ref_h_btd[:, :-1]
  else:
    take = jax.vmap(lambda row, i: row[i])  # a per-row gather, batch-sharded like the rows.
    context_bp = jnp.maximum(index_bp - 1, 0)
    h_bnd, targets_bn = take(h_btd, context_bp), take(tokens_bt, index_bp)
    ref_h_bnd = None if ref_h_btd is None else take(ref_h_btd, context_bp)
  out_bn = _aligned_terms(config, params, h_bnd, targets_bn, chunk, ref_params, ref_h_bnd,
                          with_kl)
  if index_bp is None:
    return jax.tree.map(lambda x: jnp.pad(x, ((0, 0), (1, 0))), out_bn)
  valid_bp = index_bp > 0
  scatter = jax.vmap(lambda i, x: jnp.zeros((t,), x.dtype).at[i].add(x))
  return jax.tree.map(lambda x: scatter(index_bp, jnp.where(valid_bp, x, 0.0)), out_bn)


def _aligned_terms(config: ModelConfig, params: Params, h_bnd: jax.Array,
                   targets_bn: jax.Array, chunk: int, ref_params: Params | None,
                   ref_h_bnd: jax.Array | None, with_kl: bool) -> dict[str, jax.Array]:
  """chunked_token_terms' blocks: h_bnd[:, n] predicts targets_bn[:, n]; [B, N] outputs."""
  b, n = targets_bn.shape
  chunk = n if chunk <= 0 else min(chunk, n)
  xs = {"h": _to_chunks(h_bnd, chunk), "target": _to_chunks(targets_bn, chunk)}
  if ref_params is not None:
    xs["ref_h"] = _to_chunks(ref_h_bnd, chunk)

  @jax.checkpoint
  def one_chunk(params, ref_params, x):
    logits_bcv = logits_from_hidden(config, params, x["h"])
    out = {"logprob": token_logprobs(logits_bcv, x["target"])}
    if ref_params is not None:
      ref_logits_bcv = logits_from_hidden(config, ref_params, x["ref_h"])
      out["ref_logprob"] = token_logprobs(ref_logits_bcv, x["target"])
      if with_kl:
        out["kl"] = exact_kl(logits_bcv, ref_logits_bcv)
    return out

  _, out_kbc = jax.lax.scan(lambda carry, x: (carry, one_chunk(params, ref_params, x)), None, xs)
  # [N / C, B, C] -> [B, N].
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1)[:, :n], out_kbc)


# --- KL to the frozen reference, on generated tokens only -------------------------------------


def exact_kl(policy_logits_btv: jax.Array, ref_logits_btv: jax.Array) -> jax.Array:
  """KL(pi_theta(.|ctx) || pi_ref(.|ctx)) over the whole vocabulary, per position: [B, T].

  Position t holds the KL of the distributions that predict token t+1; use
  `shift_to_targets` to align it with the target positions that masks select.
  Summed over a sampled y ~ pi_theta, its *value* is an unbiased estimate of the
  sequence KL(pi_theta(y|x) || pi_ref(y|x)), with less variance than k1 / k3.
  Its *gradient* is not that of the sequence KL: it differentiates each token's
  KL with the sampled prefix held fixed, and drops the score-function term
  sum_t grad log pi_theta(y_t|y_<t) * sum_{s>t} KL_s (how the policy's choice of
  y_t changes the later contexts). It is the exact gradient of the per-token KL at
  the sampled contexts, and 0 wherever pi_theta = pi_ref. Costs one extra
  [B, T, V] pass (the default on small vocabularies). The gradient flows into the
  policy logits only.
  """
  logp_btv = jax.nn.log_softmax(policy_logits_btv.astype(jnp.float32), axis=-1)
  logq_btv = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits_btv).astype(jnp.float32), -1)
  return jnp.sum(jnp.exp(logp_btv) * (logp_btv - logq_btv), axis=-1)


def k1_kl(policy_logprobs_bt: jax.Array, ref_logprobs_bt: jax.Array) -> jax.Array:
  """Sample estimator log pi_theta(y) - log pi_ref(y) per sampled token.

  Unbiased for KL's value under y ~ pi_theta, but useless as a loss term: its
  gradient grad log pi_theta(y) has zero expectation under y ~ pi_theta (so
  `train_step` refuses it as a loss); it can be negative per token.
  """
  return policy_logprobs_bt - jax.lax.stop_gradient(ref_logprobs_bt)


def k3_kl(policy_logprobs_bt: jax.Array, ref_logprobs_bt: jax.Array) -> jax.Array:
  """Schulman's k3 = (r - 1) - log r with r = pi_ref(y) / pi_theta(y): >= 0, unbiased value.

  Its pathwise gradient is that of KL(pi_ref || pi_theta) in expectation (the
  reverse direction), a known bias of using k3 as a loss; prefer `exact_kl`.
  """
  log_ratio = jax.lax.stop_gradient(ref_logprobs_bt) - policy_logprobs_bt
  return jnp.expm1(log_ratio) - log_ratio


def shift_to_targets(per_position_bt: jax.Array) -> jax.Array:
  """Moves a per-context-position quantity (index t predicts t+1) to target positions."""
  return jnp.pad(per_position_bt[:, :-1], ((0, 0), (1, 0)))


def per_attempt_sum(x_bt: jax.Array, loss_mask_abt: jax.Array) -> jax.Array:
  """Sum of a per-target-position quantity over each attempt's tokens: [A, B]."""
  return jnp.sum(x_bt[None] * loss_mask_abt, axis=-1)


# --- Rewards and advantages ------------------------------------------------------------------


def shaped_rewards(r1_e: jax.Array, r2_e: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """Stage II rewards: R1 = r1, R2 = r2 + alpha * (r2 - r1) (the self-correction bonus)."""
  return r1_e, r2_e + alpha * (r2_e - r1_e)


def rloo_advantages(rewards_e: jax.Array, samples_per_prompt: int) -> jax.Array:
  """A_j = R_j - mean_{i != j} R_i within each prompt's k consecutive episodes: [E]."""
  k = samples_per_prompt
  if k < 2:
    raise ValueError("RLOO needs samples_per_prompt >= 2 (a leave-one-out baseline).")
  r_pk = rewards_e.reshape(-1, k)
  baseline_pk = (jnp.sum(r_pk, axis=1, keepdims=True) - r_pk) / (k - 1)
  return (r_pk - baseline_pk).reshape(-1)


def advantages(rewards_e: jax.Array, samples_per_prompt: int, estimator: str) -> jax.Array:
  """'rloo' (leave-one-out baseline, the default) or 'reinforce' (the raw reward)."""
  if estimator == "rloo":
    return rloo_advantages(rewards_e, samples_per_prompt)
  if estimator == "reinforce":
    return rewards_e
  raise ValueError(f"unknown advantage estimator {estimator!r}; use 'rloo' or 'reinforce'.")


# --- Objective terms -------------------------------------------------------------------------


def policy_gradient(advantage_e: jax.Array, seq_logprob_e: jax.Array) -> jax.Array:
  """REINFORCE surrogate -mean_e A_e * log pi(y_e | x_e); the advantage is a constant."""
  return -jnp.mean(jax.lax.stop_gradient(advantage_e) * seq_logprob_e)


def stage1_loss(seq_logprob_ae: jax.Array, kl_ae: jax.Array, rewards_ae: jax.Array, *,
                samples_per_prompt: int, beta1: float, beta2: float,
                estimator: str = "rloo") -> tuple[jax.Array, dict[str, jax.Array]]:
  """Paper Eq. 3: -A(r2) log pi(y2|x2) + beta2 KL_1 + beta1 KL_2 (mean over episodes).

  No policy-gradient term on y1: in Stage I the first attempt moves only through
  the strong beta2 KL that pins it to the base model.
  """
  adv2_e = advantages(rewards_ae[1], samples_per_prompt, estimator)
  pg = policy_gradient(adv2_e, seq_logprob_ae[1])
  kl1, kl2 = jnp.mean(kl_ae[0]), jnp.mean(kl_ae[1])
  loss = pg + beta2 * kl1 + beta1 * kl2
  return loss, {"pg_loss": pg, "kl_1": kl1, "kl_2": kl2, "adv_2_mean": jnp.mean(adv2_e),
                "adv_2_abs": jnp.mean(jnp.abs(adv2_e)),
                "pg_2_abs": jnp.mean(jnp.abs(adv2_e * seq_logprob_ae[1]))}


def adaptive_beta2(beta2: jax.Array, kl1: jax.Array, pg2_abs: jax.Array, *, target_ratio: float,
                   gain: float, beta_min: float, beta_max: float,
                   max_error: float = 0.2) -> jax.Array:
  """Stage I's adaptive beta2 (method.md §2.4): keep beta2 * KL_1 comparable to the y2 objective.

  A proportional controller in the form of Ziegler et al. (2019),
    rho = beta2 * KL_1 / (target_ratio * M2),   M2 = mean_e |A2_e log pi(y2_e | x2_e)|,
    e = clip(1 - rho, -max_error, max_error),    beta2 <- clip(beta2 (1 + gain e), min, max):
  a KL term smaller than the y2 objective raises beta2, a larger one lowers it,
  by at most gain * max_error per step. With M2 = 0 (no y2 signal in the batch,
  e.g. every group's r2 equal) there is nothing to balance against: beta2 holds.
  """
  target = target_ratio * pg2_abs
  error = jnp.clip(1.0 - beta2 * kl1 / jnp.where(target > 0, target, 1.0), -max_error, max_error)
  error = jnp.where(target > 0, error, 0.0)
  return jnp.clip(beta2 * (1.0 + gain * error), beta_min, beta_max)


def stage2_loss(seq_logprob_ae: jax.Array, kl_ae: jax.Array, rewards_ae: jax.Array, *,
                samples_per_prompt: int, alpha: float, beta1: float,
                estimator: str = "rloo", first_weight_e: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Paper Eq. 4 with shaping: -A(R1) log pi(y1|x1) - A(R2) log pi(y2|x2) + beta1 (KL_1 + KL_2).

  Per-turn credit: each attempt's tokens get that attempt's own advantage.
  first_weight_e: optional per-episode weight of the y1 policy-gradient term; 0 drops
  it (offline first attempts: y1 ~ pi_ref is only a prompt for y2, paper §5.3).
  """
  big_r1, big_r2 = shaped_rewards(rewards_ae[0], rewards_ae[1], alpha)
  adv1_e = advantages(big_r1, samples_per_prompt, estimator)
  if first_weight_e is not None:
    adv1_e = adv1_e * first_weight_e
  adv2_e = advantages(big_r2, samples_per_prompt, estimator)
  pg1 = policy_gradient(adv1_e, seq_logprob_ae[0])
  pg2 = policy_gradient(adv2_e, seq_logprob_ae[1])
  kl1, kl2 = jnp.mean(kl_ae[0]), jnp.mean(kl_ae[1])
  loss = pg1 + pg2 + beta1 * (kl1 + kl2)
  return loss, {"pg_loss": pg1 + pg2, "pg_loss_1": pg1, "pg_loss_2": pg2, "kl_1": kl1,
                "kl_2": kl2, "shaped_r2_mean": jnp.mean(big_r2),
                "adv_1_abs": jnp.mean(jnp.abs(adv1_e)), "adv_2_abs": jnp.mean(jnp.abs(adv2_e))}


# --- Sampler / trainer mismatch --------------------------------------------------------------
# The sampler's log-probs (decode loop, bf16 KV cache) and the update's teacher-forced ones
# (scanned forward) differ by round-off, more so in bf16: the episodes are then slightly
# off-policy. Measured every step; optionally corrected token by token (truncated importance
# sampling, as verl / TRL / Tunix offer).


def logprob_mismatch(logprob_bt: jax.Array, sampler_logprob_bt: jax.Array, mask_bt: jax.Array,
                     low: float = 0.8, high: float = 1.25) -> dict[str, jax.Array]:
  """|log pi_train - log pi_sampler| over the masked tokens: mean, max, and the fraction of
  tokens whose ratio pi_train / pi_sampler leaves [low, high]. No gradient."""
  delta_bt = jax.lax.stop_gradient(logprob_bt - sampler_logprob_bt)
  count = jnp.maximum(jnp.sum(mask_bt), 1.0)
  abs_bt = jnp.abs(delta_bt) * mask_bt
  outside_bt = ((delta_bt < jnp.log(low)) | (delta_bt > jnp.log(high))) * mask_bt
  return {"logprob_mismatch_mean": jnp.sum(abs_bt) / count,
          "logprob_mismatch_max": jnp.max(abs_bt),
          "ratio_outside_frac": jnp.sum(outside_bt) / count}


def truncated_importance_weights(logprob_bt: jax.Array, sampler_logprob_bt: jax.Array,
                                 cap: float) -> jax.Array:
  """Token-level truncated importance weights min(pi_train / pi_sampler, cap), constants
  of the gradient: weighting each token's log-prob in the policy-gradient term by them
  makes sampled-by-another-policy tokens an (upper-truncated) unbiased estimate."""
  if cap <= 0:
    raise ValueError(f"importance cap must be > 0, got {cap}.")
  ratio_bt = jnp.exp(jax.lax.stop_gradient(logprob_bt - sampler_logprob_bt))
  return jnp.minimum(ratio_bt, cap)
