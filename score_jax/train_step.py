"""Jitted RL train steps over sharded params: Stage I, Stage II and the RL baselines.

`make_rl_step(config, optimizer, objective, state, mesh)` returns a closure
`step(state, ref_params, batch) -> (state, metrics)`; Stage I and Stage II are
two such closures over the same train state (the params are shared, the
objective differs). One teacher-forced forward of the policy and one of the
frozen reference over the full episodes give every attempt's log-probs and KL.

batch: {"tokens": int32 [E, L], "loss_mask": float32 [A, E, L],
        "rewards": float32 [A, E]} with E = prompts * k, each prompt's k
episodes consecutive. A global batch larger than memory is split into
`objective.micro_batches` contiguous chunks of whole prompt groups, whose
gradients are accumulated (identical to the unsplit step: RLOO groups never
straddle chunks, and the loss is a mean over equal-sized chunks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from score_jax import losses, sharding
from score_jax.model import ModelConfig, Params, logits
from score_jax.sft import TrainState

OBJECTIVES = ("stage1", "stage2", "naive_r2", "naive_sum", "single_turn")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Which loss a step optimises and its hyper-parameters (paper Table 5 defaults)."""

  name: str  # one of OBJECTIVES.
  samples_per_prompt: int
  alpha: float = 10.0
  beta1: float = 0.01
  beta2: float = 0.1
  estimator: str = "rloo"  # or "reinforce".
  kl_estimator: str = "exact"  # or "k1", "k3".
  micro_batches: int = 1

  def __post_init__(self):
    if self.name not in OBJECTIVES:
      raise ValueError(f"unknown objective {self.name!r}; choose one of {OBJECTIVES}.")
    if self.kl_estimator not in ("exact", "k1", "k3"):
      raise ValueError(f"unknown kl_estimator {self.kl_estimator!r}; use exact, k1 or k3.")


def episode_terms(config: ModelConfig, params: Params, ref_params: Params, tokens_el: jax.Array,
                  loss_mask_ael: jax.Array, kl_estimator: str) -> dict[str, jax.Array]:
  """Per-attempt sequence log-probs and KL sums [A, E] from one forward of each model."""
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
                   rewards_ae: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss named by `obj.name` (see the spec §2 and §6)."""
  k, est = obj.samples_per_prompt, obj.estimator
  if obj.name == "stage1":
    return losses.stage1_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              beta1=obj.beta1, beta2=obj.beta2, estimator=est)
  if obj.name == "stage2":
    return losses.stage2_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              alpha=obj.alpha, beta1=obj.beta1, estimator=est)
  if obj.name == "naive_sum":  # multi-turn RL, per-turn rewards, no Stage I, no bonus.
    return losses.stage2_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              alpha=0.0, beta1=obj.beta1, estimator=est)
  if obj.name == "naive_r2":  # multi-turn RL on r2 only: beta1 KL on both, no Stage I pin.
    return losses.stage1_loss(seq_logprob_ae, kl_ae, rewards_ae, samples_per_prompt=k,
                              beta1=obj.beta1, beta2=obj.beta1, estimator=est)
  # single_turn: RLOO on the first attempt only.
  adv_e = losses.advantages(rewards_ae[0], k, est)
  pg = losses.policy_gradient(adv_e, seq_logprob_ae[0])
  kl1 = jnp.mean(kl_ae[0])
  return pg + obj.beta1 * kl1, {"pg_loss": pg, "kl_1": kl1}


def make_rl_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                 obj: ObjectiveConfig, state: TrainState, ref_params: Params,
                 mesh: jax.sharding.Mesh):
  """A jitted `step(state, ref_params, batch) -> (state, metrics)`; the state is donated."""
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  ref_shardings = jax.tree.map(lambda x: x.sharding, ref_params)
  batch_shardings = {"tokens": sharding.batch_sharding(mesh, 2),
                     "loss_mask": sharding.logical_sharding(mesh, (None, "batch", None)),
                     "rewards": sharding.logical_sharding(mesh, (None, "batch"))}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  n = obj.micro_batches

  def loss_fn(params, ref_params, micro):
    terms = episode_terms(config, params, ref_params, micro["tokens"], micro["loss_mask"],
                          obj.kl_estimator)
    loss, metrics = objective_loss(obj, terms["seq_logprob"], terms["kl"], micro["rewards"])
    num_tokens_a = jnp.sum(micro["loss_mask"], axis=-1)
    metrics.update(loss=loss, logprob_1=jnp.mean(terms["seq_logprob"][0]),
                   tokens_per_attempt=jnp.mean(num_tokens_a, axis=-1)[0])
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
    micro = {"tokens": split(batch["tokens"], False),
             "loss_mask": split(batch["loss_mask"], True),
             "rewards": split(batch["rewards"], True)}
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulate(grads_acc, micro_batch):
      (_, metrics), grads = grad_fn(state["params"], ref_params, micro_batch)
      return jax.tree.map(jnp.add, grads_acc, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    grads, metrics = jax.lax.scan(accumulate, zeros, micro)
    grads = jax.tree.map(lambda g: g / n, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  jitted = jax.jit(step, in_shardings=(state_shardings, ref_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)

  def run(state: TrainState, ref_params: Params, batch: dict[str, Any]):
    # Episodes arrive laid out however the rollout left them: move them to the step's layout.
    batch = jax.device_put(batch, batch_shardings)
    with jax.set_mesh(mesh):
      return jitted(state, ref_params, batch)

  return run
