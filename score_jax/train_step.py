"""Jitted RL train steps over sharded params: Stage I, Stage II and the RL baselines.

`make_rl_step(config, optimizer, objective, state, mesh)` returns a closure
`step(state, ref_params, batch) -> (state, metrics)`; Stage I and Stage II are
two such closures over the same train state (the params are shared, the
objective differs). One teacher-forced forward of the policy and one of the
frozen reference over the full episodes give every attempt's log-probs and KL.

batch: {"tokens": int32 [E, L], "loss_mask": float32 [A, E, L],
        "rewards": float32 [A, E]} with E = prompts * k, each prompt's k
episodes consecutive; optionally "target_index": int32 [E, P], the
`losses.target_positions` of the attempts' joint mask, so that only generated
tokens are projected to the vocabulary (train.rl_batch adds it); optionally
"sampler_logprobs": float32 [E, L], the rollout's log-probs of the same tokens,
for the sampler/trainer mismatch metrics and the importance correction; and
"offline_first": float32 [E], 1 where y1 came from pi_ref (no y1 policy-gradient
term there; train.rl_batch adds it when rl.offline_first_fraction > 0). A global
batch larger than memory is split into
`objective.micro_batches` contiguous chunks of whole prompt groups, whose
gradients are accumulated (identical to the unsplit step: RLOO groups never
straddle chunks, and the loss is a mean over equal-sized chunks).

Log-probs and KL come from `losses.chunked_token_terms`: the [E, L, V] logits are
never materialised, only `objective.logits_chunk` positions at a time.
LoRA: when state["params"] are `lora.Adapters`, the policy is
`lora.merge(ref_params, adapters)` inside the step (the frozen base is π_ref, so no
second copy of the model exists) and only the adapters get gradients and Adam state.
Optional: a frozen tied embedding (`freeze_embedding` + `frozen_embedding_optimizer`)
and Stage I's adaptive beta2, whose value lives in the train state as
`state["beta2"]` (`add_beta2_state`) so that a checkpoint resumes it exactly.
A step whose loss or gradient is not finite leaves params, optimizer state and beta2
as they were and reports `skipped_update` = 1 (the caller stops after a few in a row).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from score_jax import lora, losses, sharding
from score_jax.model import ModelConfig, Params, forward_hidden, logits
from score_jax.sft import TrainState

OBJECTIVES = ("stage1", "stage2", "naive_r2", "naive_sum", "single_turn")
# Attempts each objective is defined for (None: any). The two-turn objectives index y1 and y2:
# with 1 attempt rewards[1] would clamp to y1, with 3 the last attempt would never be trained.
# single_turn trains y1 only; later attempts are sampled for the metrics.
NUM_ATTEMPTS = {"stage1": 2, "stage2": 2, "naive_r2": 2, "naive_sum": 2, "single_turn": None}


def check_num_attempts(name: str, num_attempts: int) -> None:
  """Refuses an objective / rl.num_attempts pair the objective is not defined for."""
  needed = NUM_ATTEMPTS[name]
  if num_attempts < 1 or (needed is not None and num_attempts != needed):
    wanted = f"={needed} (y1 then y2)" if needed else " >= 1 (it trains y1)"
    raise ValueError(f"objective {name!r} is defined for rl.num_attempts{wanted}, got "
                     f"rl.num_attempts={num_attempts}; set "
                     f"--config.rl.num_attempts={needed or 1} (the paper's 3-attempt variant "
                     "is not implemented).")


def check_kl_estimator(kl_estimator: str) -> None:
  """Refuses KL estimators that are not a usable loss term (k1: zero expected gradient)."""
  if kl_estimator not in ("exact", "k1", "k3"):
    raise ValueError(f"unknown kl_estimator {kl_estimator!r}; use exact, k1 or k3.")
  if kl_estimator == "k1":
    # grad k1 = grad log pi(y), and E_{y~pi}[grad log pi(y)] = 0: as a loss it pins nothing.
    raise ValueError("rl.kl_estimator='k1' cannot be a loss term: its gradient is grad log "
                     "pi_theta(y), whose expectation under y ~ pi_theta is zero, so the beta "
                     "KL terms (Stage I's beta2 pin) would vanish in expectation; use "
                     "rl.kl_estimator='exact' (or 'k3').")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Which loss a step optimises and its hyper-parameters (paper Table 5 defaults)."""

  name: str  # one of OBJECTIVES.
  samples_per_prompt: int
  alpha: float = 10.0
  beta1: float = 0.01
  beta2: float = 0.1
  estimator: str = "rloo"  # or "reinforce".
  kl_estimator: str = "exact"  # or "k3" ("k1" is refused: zero expected gradient).
  micro_batches: int = 1
  # Positions per logits block (memory ~ E x logits_chunk x V per model); 0 builds the full
  # [E, L, V] logits (the unchunked reference path, for tests and benchmarks).
  logits_chunk: int = 128
  freeze_embedding: bool = False  # no gradient into the tied embedding (pair with
  #                                 `frozen_embedding_optimizer` so it never moves).
  # Stage I adaptive beta2 (`losses.adaptive_beta2`); the initial value is `beta2`.
  adaptive_beta2: bool = False
  beta2_target_ratio: float = 1.0
  beta2_gain: float = 0.1
  beta2_min: float = 1e-3
  beta2_max: float = 10.0
  # Token-level truncated importance sampling of the policy-gradient term: each token's
  # log-prob weighted by min(pi_theta / pi_sampler, importance_cap) (needs the batch's
  # "sampler_logprobs"); corrects the sampler/trainer mismatch and tempered sampling.
  importance_correction: bool = False
  importance_cap: float = 2.0

  def __post_init__(self):
    if self.name not in OBJECTIVES:
      raise ValueError(f"unknown objective {self.name!r}; choose one of {OBJECTIVES}.")
    check_kl_estimator(self.kl_estimator)
    if self.logits_chunk < 0:
      raise ValueError(f"logits_chunk must be >= 0 (0 = no chunking), got {self.logits_chunk}.")
    if not 0 < self.beta2_min <= self.beta2_max or self.beta2_gain < 0:
      raise ValueError(f"adaptive beta2 needs 0 < beta2_min <= beta2_max and beta2_gain >= 0; "
                       f"got {self.beta2_min}, {self.beta2_max}, {self.beta2_gain}.")
    if self.importance_cap <= 0:
      raise ValueError(f"importance_cap must be > 0, got {self.importance_cap}.")


def episode_terms(config: ModelConfig, params: Params, ref_params: Params, tokens_el: jax.Array,
                  loss_mask_ael: jax.Array, kl_estimator: str, logits_chunk: int = 128,
                  target_index_ep: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-attempt sequence log-probs and KL sums [A, E] from one forward of each model.

  logits_chunk > 0: hidden states once per model, then logits block by block
  (`losses.chunked_token_terms`, only at target_index_ep when given); 0: the
  full-logits reference path.
  """
  if logits_chunk > 0:
    positions_el = jnp.broadcast_to(jnp.arange(tokens_el.shape[1], dtype=jnp.int32),
                                    tokens_el.shape)
    h_eld, _ = forward_hidden(config, params, tokens_el, positions_el)
    ref_h_eld, _ = forward_hidden(config, jax.lax.stop_gradient(ref_params), tokens_el,
                                  positions_el)
    terms = losses.chunked_token_terms(config, params, h_eld, tokens_el, chunk=logits_chunk,
                                       ref_params=ref_params, ref_h_btd=ref_h_eld,
                                       with_kl=kl_estimator == "exact",
                                       index_bp=target_index_ep)
    logprob_el = terms["logprob"]
    if kl_estimator == "exact":
      kl_el = terms["kl"]
    else:
      estimate = losses.k1_kl if kl_estimator == "k1" else losses.k3_kl
      kl_el = estimate(logprob_el, terms["ref_logprob"])
    return {"seq_logprob": losses.per_attempt_sum(logprob_el, loss_mask_ael),
            "kl": losses.per_attempt_sum(kl_el, loss_mask_ael),
            "logprob_el": logprob_el}
  policy_logits = logits(config, params, tokens_el)
  ref_logits = jax.lax.stop_gradient(logits(config, ref_params, tokens_el))
  logprob_el = losses.next_token_logprobs(policy_logits, tokens_el)
  if kl_estimator == "exact":
    kl_el = losses.shift_to_targets(losses.exact_kl(policy_logits, ref_logits))
  else:
    ref_logprob_el = losses.next_token_logprobs(ref_logits, tokens_el)
    estimate = losses.k1_kl if kl_estimator == "k1" else losses.k3_kl
    kl_el = estimate(logprob_el, ref_logprob_el)
  return {"seq_logprob": losses.per_attempt_sum(logprob_el, loss_mask_ael),
          "kl": losses.per_attempt_sum(kl_el, loss_mask_ael),
          "logprob_el": logprob_el}


def objective_loss(obj: ObjectiveConfig, seq_logprob_ae: jax.Array, kl_ae: jax.Array,
                   rewards_ae: jax.Array, beta2: jax.Array | None = None,
                   offline_first_e: jax.Array | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss named by `obj.name` (docs/method.md §2 and §6); `beta2` overrides obj.beta2.

  offline_first_e: 1 where y1 was sampled from pi_ref (rollout's offline first
  attempts); those rows get no y1 policy-gradient term, being only prompts for y2.
  """
  check_num_attempts(obj.name, rewards_ae.shape[0])  # at trace time: shapes are static.
  k, est = obj.samples_per_prompt, obj.estimator
  first_weight_e = None if offline_first_e is None else 1.0 - offline_first_e
  if obj.name == "stage1":
    return losses.stage1_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              beta1=obj.beta1, beta2=obj.beta2 if beta2 is None else beta2,
                              estimator=est)
  if obj.name == "stage2":
    return losses.stage2_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              alpha=obj.alpha, beta1=obj.beta1, estimator=est,
                              first_weight_e=first_weight_e)
  if obj.name == "naive_sum":  # multi-turn RL, per-turn rewards, no Stage I, no bonus.
    return losses.stage2_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              alpha=0.0, beta1=obj.beta1, estimator=est,
                              first_weight_e=first_weight_e)
  if obj.name == "naive_r2":  # multi-turn RL on r2 only: beta1 KL on both, no Stage I pin.
    return losses.stage1_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              beta1=obj.beta1, beta2=obj.beta1, estimator=est)
  # single_turn: RLOO on the first attempt only.
  adv_e = losses.advantages(rewards_ae[0], k, est)
  if first_weight_e is not None:
    adv_e = adv_e * first_weight_e
  pg = losses.policy_gradient(adv_e, seq_logprob_ae[0])
  kl1 = jnp.mean(kl_ae[0])
  return pg + obj.beta1 * kl1, {"pg_loss": pg, "kl_1": kl1}


def frozen_embedding_optimizer(
    optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` on every parameter except the tied embedding, which gets zero updates.

  The embedding also gets no optimizer state (no Adam moments: V x D x 2 floats
  saved), and gradient clipping inside `optimizer` sees only the trained params.
  """
  def labels(params):
    return {name: jax.tree.map(lambda _, n=name: "frozen" if n == "embedder" else "train", sub)
            for name, sub in params.items()}

  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def add_beta2_state(state: TrainState, beta2: float, mesh: jax.sharding.Mesh) -> TrainState:
  """Adds the adaptive beta2 (a replicated fp32 scalar) to an RL train state."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return {**state, "beta2": jax.device_put(jnp.asarray(beta2, jnp.float32), replicated)}


def make_rl_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                 obj: ObjectiveConfig, state: TrainState, ref_params: Params,
                 mesh: jax.sharding.Mesh):
  """A jitted `step(state, ref_params, batch) -> (state, metrics)`; the state is donated."""
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  ref_shardings = jax.tree.map(lambda x: x.sharding, ref_params)
  batch_shardings = {"tokens": sharding.batch_sharding(mesh, 2),
                     "loss_mask": sharding.logical_sharding(mesh, (None, "batch", None)),
                     "rewards": sharding.logical_sharding(mesh, (None, "batch")),
                     "target_index": sharding.batch_sharding(mesh, 2),
                     "sampler_logprobs": sharding.batch_sharding(mesh, 2),
                     "offline_first": sharding.batch_sharding(mesh, 1)}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  n = obj.micro_batches
  adapters = isinstance(state["params"], lora.Adapters)
  adaptive = obj.adaptive_beta2 and obj.name == "stage1"
  if adaptive and "beta2" not in state:
    raise ValueError("adaptive_beta2 keeps beta2 in the train state: build the state with "
                     "train_step.add_beta2_state(state, beta2, mesh).")

  def loss_fn(params, ref_params, micro, beta2):
    if adapters:  # LoRA: pi_theta = base + low-rank update; pi_ref = the base itself.
      params = lora.merge(config, jax.lax.stop_gradient(ref_params), params)
    if obj.freeze_embedding:  # no [V, D] embedding gradient is even computed.
      params = {**params, "embedder": jax.lax.stop_gradient(params["embedder"])}
    terms = episode_terms(config, params, ref_params, micro["tokens"], micro["loss_mask"],
                          obj.kl_estimator, obj.logits_chunk, micro.get("target_index"))
    pg_seq_logprob = terms["seq_logprob"]
    mismatch = {}
    if "sampler_logprobs" in micro:
      mismatch = losses.logprob_mismatch(terms["logprob_el"], micro["sampler_logprobs"],
                                         jnp.max(micro["loss_mask"], axis=0))
      if obj.importance_correction:
        weights_el = losses.truncated_importance_weights(
            terms["logprob_el"], micro["sampler_logprobs"], obj.importance_cap)
        pg_seq_logprob = losses.per_attempt_sum(weights_el * terms["logprob_el"],
                                                micro["loss_mask"])
    loss, metrics = objective_loss(obj, pg_seq_logprob, terms["kl"], micro["rewards"], beta2,
                                   micro.get("offline_first"))
    num_tokens_a = jnp.sum(micro["loss_mask"], axis=-1)
    metrics.update(loss=loss, logprob_1=jnp.mean(terms["seq_logprob"][0]),
                   tokens_per_attempt=jnp.mean(num_tokens_a, axis=-1)[0], **mismatch)
    return loss, metrics

  def split(x, attempt_major):
    axis = 1 if attempt_major else 0
    e = x.shape[axis]
    if e % (n * obj.samples_per_prompt):
      raise ValueError(f"{e} episodes do not split into {n} micro-batches of whole groups of "
                       f"k={obj.samples_per_prompt}; adjust micro_batches or the batch size.")
    x = x.reshape(x.shape[:axis] + (n, e // n) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)

  def step(state, ref_params, batch):
    micro = {key: split(x, key in ("loss_mask", "rewards")) for key, x in batch.items()}
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    beta2 = state["beta2"] if adaptive else None

    def accumulate(grads_acc, micro_batch):
      (_, metrics), grads = grad_fn(state["params"], ref_params, micro_batch, beta2)
      return jax.tree.map(jnp.add, grads_acc, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    grads, metrics = jax.lax.scan(accumulate, zeros, micro)
    grads = jax.tree.map(lambda g: g / n, grads)
    metrics = {key: (jnp.max if key.endswith("_max") else jnp.mean)(x)
               for key, x in metrics.items()}
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if adaptive:  # this step used state["beta2"]; the controller sets the next step's.
      metrics["beta2"] = beta2
      new_state["beta2"] = losses.adaptive_beta2(
          beta2, metrics["kl_1"], metrics["pg_2_abs"], target_ratio=obj.beta2_target_ratio,
          gain=obj.beta2_gain, beta_min=obj.beta2_min, beta_max=obj.beta2_max)
    # A NaN / inf loss or gradient never reaches the params (nor Adam's moments, nor beta2).
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    for key in ("params", "opt_state", "beta2"):
      if key in new_state:
        new_state[key] = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                      new_state[key], state[key])
    metrics["skipped_update"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  jitted = sharding.jit_per_batch_keys(
      step, lambda shardings: (state_shardings, ref_shardings, shardings), batch_shardings,
      out_shardings=(state_shardings, replicated), donate_argnums=0)

  def run(state: TrainState, ref_params: Params, batch: dict[str, Any]):
    if obj.importance_correction and "sampler_logprobs" not in batch:
      raise ValueError("importance_correction weights tokens by pi_theta / pi_sampler: the "
                       "batch needs the rollout's 'sampler_logprobs' [E, L].")
    # Episodes arrive laid out however the rollout left them: move them to the step's layout.
    compiled_for_keys = jitted(batch)  # an unknown key is an error that names it.
    batch = jax.device_put(batch, {key: batch_shardings[key] for key in batch})
    with jax.set_mesh(mesh):
      return compiled_for_keys(state, ref_params, batch)

  def lower(state, ref_params, batch):
    # The same step lowered for (abstract) arguments: memory_plan measures its compiled size.
    with jax.set_mesh(mesh):
      return jitted(batch).lower(state, ref_params, batch)

  run.lower = lower
  return run
