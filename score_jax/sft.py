"""Supervised fine-tuning on (prompt ids, target ids) pairs.

Used for the warm-start that gives the tiny demo model a non-trivial first
attempt, and by the SFT baselines (STaR, Pair-SFT). The train state is one
pytree {"params", "opt_state", "step"} placed on the mesh by the sharding
rules; the step is jitted with the state's shardings in and out and the old
state donated, so it updates in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import lora, losses, sharding
from score_jax.model import ModelConfig, Params, forward_hidden

TrainState = dict[str, Any]


Segments = Sequence[tuple[Sequence[int], bool]]


def pack_examples(examples: Sequence[Segments], seq_len: int, pad_id: int = 0,
                  bucket: int | None = None) -> dict[str, np.ndarray]:
  """Right-padded tokens [B, seq_len] and a loss mask over the trained segments.

  Each example is a list of (token ids, trained) segments, e.g. a multi-turn
  episode [(x1, False), (y1, True), (instruction, False), (y2, True)].
  With `bucket`, the width shrinks to the longest example rounded up to a multiple
  of `bucket` (at most seq_len): less padding, a handful of compiled shapes.
  """
  if bucket:
    longest = max(sum(len(ids) for ids, _ in segments) for segments in examples)
    seq_len = min(seq_len, -(-longest // bucket) * bucket) if longest <= seq_len else seq_len
  tokens = np.full((len(examples), seq_len), pad_id, np.int32)
  mask = np.zeros((len(examples), seq_len), np.float32)
  for i, segments in enumerate(examples):
    n = sum(len(ids) for ids, _ in segments)
    if n > seq_len:
      raise ValueError(f"example {i} has {n} tokens but seq_len is {seq_len}; raise seq_len.")
    start = 0
    for ids, trained in segments:
      tokens[i, start:start + len(ids)] = ids
      mask[i, start:start + len(ids)] = float(trained)
      start += len(ids)
  return {"tokens": tokens, "loss_mask": mask}


def init_train_state(params: Params | lora.Adapters, optimizer: optax.GradientTransformation,
                     mesh: jax.sharding.Mesh) -> TrainState:
  """Shards the trained tree (params, or LoRA adapters: `lora.shard`) by the rules; the
  optimizer state inherits their shardings.

  The state owns fresh buffers (steps donate it), so the caller's `params` stay valid.
  """
  place = lora.shard if isinstance(params, lora.Adapters) else sharding.shard_params
  params = jax.tree.map(jnp.copy, place(params, mesh))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with jax.set_mesh(mesh):  # scalars (step counts) land replicated on the mesh.
    opt_state = jax.jit(optimizer.init)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
  return {"params": params, "opt_state": opt_state, "step": step}


def make_sft_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                  state: TrainState, mesh: jax.sharding.Mesh, logits_chunk: int = 128,
                  base_params: Params | None = None):
  """A jitted `step(state, batch) -> (state, metrics)` with explicit shardings.

  The loss never builds the [B, T, V] logits: they are computed `logits_chunk`
  positions at a time (`losses.chunked_token_terms`; 0 = one block), and only at
  the batch's optional "target_index" (`losses.target_positions` of its loss mask).
  When state["params"] are `lora.Adapters`, the model is `lora.merge(base_params,
  adapters)` inside the step: only the adapters are trained, `base_params` stay frozen.
  """
  if isinstance(state["params"], lora.Adapters) != (base_params is not None):
    raise ValueError("make_sft_step: pass base_params exactly when the state trains "
                     "lora.Adapters (they are what the adapters are merged into).")
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  base_shardings = jax.tree.map(lambda x: x.sharding, base_params)
  batch_shardings = {"tokens": sharding.batch_sharding(mesh, 2),
                     "loss_mask": sharding.batch_sharding(mesh, 2),
                     "target_index": sharding.batch_sharding(mesh, 2)}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def loss_fn(params, batch, base):
    if base is not None:  # LoRA: the gradient reaches the adapters only.
      params = lora.merge(config, jax.lax.stop_gradient(base), params)
    tokens_bt = batch["tokens"]
    positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1], dtype=jnp.int32),
                                    tokens_bt.shape)
    h_btd, _ = forward_hidden(config, params, tokens_bt, positions_bt)
    logprob_bt = losses.chunked_token_terms(config, params, h_btd, tokens_bt,
                                            chunk=logits_chunk,
                                            index_bp=batch.get("target_index"))["logprob"]
    return -losses.masked_mean(logprob_bt, batch["loss_mask"])

  def step(state, batch, base):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, base)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  jitted = sharding.jit_per_batch_keys(
      step, lambda shardings: (state_shardings, shardings, base_shardings), batch_shardings,
      out_shardings=(state_shardings, replicated), donate_argnums=0)

  def run(state, batch):
    with jax.set_mesh(mesh):
      return jitted(batch)(state, batch, base_params)

  return run
