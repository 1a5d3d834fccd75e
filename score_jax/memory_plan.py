"""Per-device memory plan of a SCoRe RL run: which term costs what on a given mesh.

  python -m score_jax.memory_plan --config=configs/recipes/gemma2_2b_v5e_8.py

`plan(model_config, mesh_shape, ...)` predicts, per device, the bytes of

  resident all the time:  params, optimizer state (Adam moments), reference params;
  train step (transient):  episode batch, gradients, FSDP-gathered weights, activations kept
                           for the backward pass;
  rollout (transient):     KV cache and episode buffers (`rollout.rollout_memory_bytes`),
                           the sampler's per-layer weight copy, the prefill's prompt cache
                           and one layer's prefill activations,

and `check_fits(plan, device_bytes)` refuses a plan whose peak does not fit, naming the
largest term and what to change.

How each term is derived (nothing is a per-model constant):
* params / optimizer / reference: the abstract params (`jax.eval_shape(init_params)`)
  and optimizer state (`jax.eval_shape(optimizer.init)`), each leaf divided by the number
  of devices its `sharding.PARAM_RULES` spec splits it over on the mesh.
* activations: JAX's own list of the residuals the backward pass keeps
  (`saved_residuals` of the loss the step differentiates, traced abstractly at the
  per-device micro-batch with the per-device head / MLP / vocab sizes), plus the largest
  rematerialised block's residuals (a remat layer or a logits chunk, recomputed in the
  backward pass). Gradients: one params-sized buffer (the micro-batch accumulator;
  a micro-batch's own gradients replace activations as the backward pass frees them).
* gathered weights: the unsplit-over-fsdp embedding and layer weights (`gathered_bytes`).
* rollout: `rollout.rollout_memory_bytes` (built on `sampling.kv_cache_bytes`) for the
  rollout micro-batch, divided over the data-parallel devices, with the per-device KV heads;
  the prefill's scores are counted as PREFILL_SCORE_COPIES [B, N, P, P] fp32 buffers.

What "measured" means in `tests/test_memory_plan.py`: XLA's buffer assignment for the real
jitted train step compiled on CPU (`compiled.memory_analysis()`: arguments + outputs -
aliased + temporaries, per device of an emulated mesh); results and known gaps in
BENCHMARKS.md. TPU compiles fuse differently: treat the plan as an estimate with the margin
`check_fits` keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax._src import core as jax_core
from jax._src.ad_checkpoint import remat_p, saved_residuals

from score_jax import rollout, sampling, sharding, train_step
from score_jax import model as model_lib
from score_jax.model import ModelConfig, init_params

GiB = 2**30

# HBM per chip (bytes) of the TPU generations the recipes name.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5litepod": 16 * GiB, "v5p": 95 * GiB,
             "v6e": 32 * GiB}

RESIDENT = ("params", "optimizer", "reference")
TRAIN_TERMS = ("batch", "gradients", "gathered_weights", "activations")
ROLLOUT_TERMS = ("rollout_cache_buffers", "decode_weights", "prefill")

# Live [B, N, P, P] fp32 attention-score buffers in one prefill layer (XLA:CPU buffer
# assignment of `sampling.sample` holds 2-3.5 of them at the tiny test sizes).
PREFILL_SCORE_COPIES = 3

# What to change when a term is the largest one.
ADVICE = {
    "params": "shard parameters over more devices (a larger fsdp or tensor axis in mesh_shape)",
    "optimizer": "shard over more devices (larger fsdp axis in mesh_shape)",
    "reference": "shard over more devices (larger fsdp axis in mesh_shape)",
    "batch": "raise rl.micro_batches or use more data-parallel devices",
    "gradients": "shard over more devices (larger fsdp axis in mesh_shape)",
    "gathered_weights": "split the vocabulary and heads over a tensor axis in mesh_shape",
    "activations": ("raise rl.micro_batches, set model.remat=True, or lower "
                    "rl.logits_chunk / max_new_tokens"),
    "rollout_cache_buffers": ("lower rl.rollout_micro_batch (prompts per rollout call), "
                              "max_new_tokens or samples_per_prompt"),
    "decode_weights": "shard over more devices (larger fsdp or tensor axis in mesh_shape)",
    "prefill": "lower rl.rollout_micro_batch or the prompt length",
}


def hbm_bytes(accelerator: str) -> int:
  """HBM per chip for an accelerator type such as 'v4-8', 'v5litepod-16' or 'v5p-16'."""
  generation = accelerator.split("-")[0]
  if generation not in HBM_BYTES:
    raise ValueError(f"unknown TPU generation in {accelerator!r}; known: "
                     f"{', '.join(sorted(HBM_BYTES))} (e.g. 'v5p-16').")
  return HBM_BYTES[generation]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device bytes of every term, and the phases' peaks."""

  terms: dict[str, int]
  mesh_shape: tuple[int, int, int]
  notes: dict[str, str]

  @property
  def resident(self) -> int:
    return sum(self.terms[t] for t in RESIDENT)

  @property
  def train_peak(self) -> int:
    return self.resident + sum(self.terms[t] for t in TRAIN_TERMS)

  @property
  def rollout_peak(self) -> int:
    return self.resident + sum(self.terms[t] for t in ROLLOUT_TERMS)

  @property
  def peak(self) -> int:
    return max(self.train_peak, self.rollout_peak)

  def table(self, device_bytes: int | None = None) -> str:
    """A markdown table of the terms in GiB per device."""
    rows = ["| term | phase | GiB / device | what it is |", "|---|---|---:|---|"]
    for name, value in self.terms.items():
      phase = ("resident" if name in RESIDENT else "train step" if name in TRAIN_TERMS
               else "rollout")
      rows.append(f"| {name} | {phase} | {value / GiB:.2f} | {self.notes.get(name, '')} |")
    rows.append(f"| **train step peak** | | **{self.train_peak / GiB:.2f}** | resident + "
                f"train step terms |")
    rows.append(f"| **rollout peak** | | **{self.rollout_peak / GiB:.2f}** | resident + "
                f"rollout terms |")
    if device_bytes:
      rows.append(f"| HBM per chip | | {device_bytes / GiB:.2f} | peak uses "
                  f"{100 * self.peak / device_bytes:.0f}% |")
    return "\n".join(rows)


def _factor(spec: jax.sharding.PartitionSpec, mesh) -> int:
  """How many devices a PartitionSpec splits an array over."""
  count = 1
  for entry in spec:
    for axis in (entry if isinstance(entry, tuple) else (entry,)):
      if axis is not None:
        count *= mesh.shape[axis]
  return count


def _nbytes(x) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize


def abstract_mesh(mesh_shape: Sequence[int]) -> jax.sharding.AbstractMesh:
  if len(mesh_shape) != len(sharding.MESH_AXES) or min(mesh_shape) < 1:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} must be {len(sharding.MESH_AXES)} "
                     f"positive sizes for axes {sharding.MESH_AXES} (no -1 in a plan).")
  return jax.sharding.AbstractMesh(tuple(mesh_shape), sharding.MESH_AXES)


def param_factors(config: ModelConfig, mesh) -> dict[str, tuple[Any, int]]:
  """Param path -> (abstract leaf, number of devices PARAM_RULES split it over)."""
  abstract = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  flat = traverse_util.flatten_dict(abstract, sep="/")
  flat_specs = traverse_util.flatten_dict(sharding.param_specs(abstract, mesh), sep="/")
  return {path: (leaf, _factor(flat_specs[path], mesh)) for path, leaf in flat.items()}


def _per_device_tree_bytes(tree, factors: dict[str, tuple[Any, int]]) -> int:
  """Bytes per device of a pytree whose leaves mirror params (e.g. Adam's mu / nu).

  A leaf is matched to the param whose path equals its trailing dict keys; other
  leaves (step counts) are replicated.
  """
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = []
    for entry in reversed(path):
      if not isinstance(entry, jax.tree_util.DictKey):
        break
      keys.insert(0, str(entry.key))
    match = factors.get("/".join(keys))
    total += _nbytes(leaf) // (match[1] if match and match[0].shape == leaf.shape else 1)
  return total


def local_model(config: ModelConfig, mesh) -> ModelConfig:
  """The per-device slice of the model: heads, KV heads, MLP and vocab split as the rules say."""
  def local(logical: str, size: int) -> int:
    return size // _factor(sharding.logical_to_spec((logical,), (size,), mesh), mesh)

  heads, kv_heads = local("heads", config.num_heads), local("kv_heads", config.num_kv_heads)
  if heads % kv_heads:  # heads split but KV heads replicated: keep the GQA grouping valid.
    kv_heads = math.gcd(heads, kv_heads)
  return dataclasses.replace(config, num_heads=heads, num_kv_heads=kv_heads,
                             ffw_hidden=local("mlp", config.ffw_hidden),
                             vocab_size=local("vocab", config.vocab_size))


def _residual_bytes(fn, *args) -> int:
  """Bytes of the residuals JAX keeps for fn's backward pass (arguments excluded)."""
  return sum(_nbytes(aval) for aval, why in saved_residuals(fn, *args)
             if not why.startswith("from the argument"))


def _remat_paths(jaxpr, prefix=()) -> list[tuple[tuple, int]]:
  """(path to each jax.checkpoint equation, product of the scan lengths around it)."""
  found = []
  for i, eqn in enumerate(jaxpr.eqns):
    if eqn.primitive is remat_p:
      found.append(((*prefix, (i, None)), 1))
    for name, value in eqn.params.items():
      if isinstance(value, jax_core.ClosedJaxpr):
        scale = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        found += [(path, n * scale) for path, n in
                  _remat_paths(value.jaxpr, (*prefix, (i, name)))]
  return found


def _save_everything(jaxpr, path):
  """`jaxpr` with the checkpoint equation at `path` saving all its residuals (no recompute)."""
  (i, name), rest = path[0], path[1:]
  eqn = jaxpr.eqns[i]
  if name is None:
    new = eqn.replace(params={**eqn.params, "policy": jax.checkpoint_policies.everything_saveable})
  else:
    inner = eqn.params[name]
    new = eqn.replace(params={**eqn.params,
                              name: inner.replace(jaxpr=_save_everything(inner.jaxpr, rest))})
  return jaxpr.replace(eqns=[*jaxpr.eqns[:i], new, *jaxpr.eqns[i + 1:]])


def _largest_remat_block(fn, *args) -> int:
  """Bytes one rematerialised block (a remat layer, a logits chunk) needs while it is recomputed.

  For each jax.checkpoint in fn, the residuals it would add if it saved everything
  instead, divided by the iterations of the scans around it: one iteration's worth.
  """
  closed = jax.make_jaxpr(fn)(*args)
  flat_args = jax.tree.leaves(args)

  def residuals(jaxpr):
    run = jax_core.jaxpr_as_fun(closed.replace(jaxpr=jaxpr))
    return _residual_bytes(lambda *xs: run(*xs)[0], *flat_args)

  base = residuals(closed.jaxpr)
  return max((max(0, residuals(_save_everything(closed.jaxpr, path)) - base) // n
              for path, n in _remat_paths(closed.jaxpr)), default=0)


def default_optimizer() -> optax.GradientTransformation:
  """The RL optimizer `train.run_rl` builds (its state's shapes are what matter here)."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-6))


def _bytes_under(factors, prefix: str) -> int:
  return sum(_nbytes(leaf) // f for p, (leaf, f) in factors.items() if p.startswith(prefix))


def decode_copy_bytes(config: ModelConfig, factors) -> int:
  """Per-device bytes of `transformer.decode_params`' copies: the block weights in the
  compute dtype (norm scales keep theirs), and the tied embedding when the compute dtype
  differs from the stored one (with fp32 compute the params' own table is read)."""
  ratio = jnp.dtype(config.dtype).itemsize / jnp.dtype(config.param_dtype).itemsize
  total = 0
  for path, (leaf, f) in factors.items():
    if path.startswith("layers/") and path.endswith("/w"):
      total += int(_nbytes(leaf) * ratio) // f
    elif path.startswith("layers/"):
      total += _nbytes(leaf) // f
    elif path.startswith("embedder/") and config.dtype != config.param_dtype:
      total += int(_nbytes(leaf) * ratio) // f
  return total


def activation_bytes(local: ModelConfig, *, episodes: int, length: int, num_attempts: int,
                     samples_per_prompt: int, kl_estimator: str, logits_chunk: int,
                     freeze_embedding: bool) -> int:
  """Saved residuals + the largest remat block of the step's loss for one device's slice."""
  # A device may hold less than a group of k: trace its slice with a per-episode baseline
  # (the advantage's memory is negligible next to the forward's).
  obj = train_step.ObjectiveConfig(
      "stage2", samples_per_prompt=math.gcd(samples_per_prompt, episodes),
      estimator="reinforce", kl_estimator=kl_estimator, logits_chunk=logits_chunk)

  def micro_loss(params, ref_params, tokens, loss_mask, rewards):
    if freeze_embedding:  # as train_step's loss_fn.
      params = {**params, "embedder": jax.lax.stop_gradient(params["embedder"])}
    terms = train_step.episode_terms(local, params, ref_params, tokens, loss_mask,
                                     kl_estimator, logits_chunk)
    return train_step.objective_loss(obj, terms["seq_logprob"], terms["kl"], rewards)[0]

  params = jax.eval_shape(functools.partial(init_params, local), jax.random.key(0))
  args = (params, params, jax.ShapeDtypeStruct((episodes, length), jnp.int32),
          jax.ShapeDtypeStruct((num_attempts, episodes, length), jnp.float32),
          jax.ShapeDtypeStruct((num_attempts, episodes), jnp.float32))
  return _residual_bytes(micro_loss, *args) + _largest_remat_block(micro_loss, *args)


def gathered_bytes(config: ModelConfig, mesh, *, freeze_embedding: bool,
                   hoisted_stacks: int) -> tuple[int, int]:
  """(train step, rollout) bytes of weights all-gathered over the fsdp axis before use.

  The tied embedding is gathered whole (forward_hidden's table constraint) for the policy
  and the reference, and its gradient is whole before its reduce-scatter; block weights
  one layer at a time (forward, reference forward, backward), plus `hoisted_stacks`
  whole-stack gathers where the compiler hoists them out of the layer loop.
  """
  if mesh.shape["fsdp"] == 1:
    return 0, 0
  unsplit = param_factors(config, abstract_mesh((mesh.shape["data"], 1, mesh.shape["tensor"])))
  embed = _bytes_under(unsplit, "embedder")
  layer = _bytes_under(unsplit, "layers/") // config.num_layers
  train = (2 if freeze_embedding else 3) * embed + (3 + hoisted_stacks * config.num_layers) * layer
  return train, embed + layer


def plan(config: ModelConfig, mesh_shape: Sequence[int], *, prompts_per_step: int,
         samples_per_prompt: int, micro_batches: int, prompt_len: int, max_new_tokens: int,
         rollout_micro_batch: int, num_attempts: int = 2, instruction_len: int = 0,
         kl_estimator: str = "exact", logits_chunk: int = 128, freeze_embedding: bool = False,
         optimizer: optax.GradientTransformation | None = None,
         hoisted_stacks: int = 0, offline_first: bool = False) -> Plan:
  """Per-device bytes of one RL step of `config` on a (data, fsdp, tensor) mesh.

  prompts_per_step x samples_per_prompt episodes per step, split into `micro_batches`
  for the gradient; the rollout samples `rollout_micro_batch` prompts per call.
  prompt_len: the longest turn-1 prompt (template included); instruction_len: tokens
  between attempts (the turn-2 template and instruction). Remat and dtype come from
  `config` (params, reference and Adam moments in `config.param_dtype`; activations, KV
  cache and the sampler's weight copies in the compute `config.dtype`). hoisted_stacks:
  whole-stack weight all-gathers the compiler hoists out of the layer loop (0: FSDP as
  intended, one layer at a time; 2 matches XLA:CPU). offline_first: some first attempts
  come from the reference model, whose decode weight copies then live beside the policy's.
  """
  mesh = abstract_mesh(mesh_shape)
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  episodes = prompts_per_step * samples_per_prompt
  if episodes % (micro_batches * samples_per_prompt) or (episodes // micro_batches) % dp:
    raise ValueError(
        f"{episodes} episodes per step in {micro_batches} micro-batches of whole groups of "
        f"k={samples_per_prompt} must also split over the {dp} data-parallel devices "
        f"(data x fsdp); adjust prompts_per_step, micro_batches or mesh_shape.")
  if prompts_per_step % rollout_micro_batch or (rollout_micro_batch * samples_per_prompt) % dp:
    raise ValueError(
        f"rollout_micro_batch={rollout_micro_batch} prompts must divide prompts_per_step="
        f"{prompts_per_step}, and its {rollout_micro_batch * samples_per_prompt} episodes must "
        f"split over the {dp} data-parallel devices.")
  optimizer = optimizer or default_optimizer()
  if freeze_embedding:  # as train.run_rl: no update, no Adam moments for the embedding.
    optimizer = train_step.frozen_embedding_optimizer(optimizer)
  factors = param_factors(config, mesh)
  param_bytes = _bytes_under(factors, "")
  abstract_params = traverse_util.unflatten_dict({p: leaf for p, (leaf, _) in factors.items()},
                                                 sep="/")
  opt_bytes = _per_device_tree_bytes(jax.eval_shape(optimizer.init, abstract_params), factors)
  rc = rollout.RolloutConfig(samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens,
                             instruction_ids=(0,) * instruction_len, stop_tokens=(1,),
                             turn_end_id=1, num_attempts=num_attempts)
  length = rollout.episode_length(prompt_len, rc)
  local = local_model(config, mesh)
  micro_local = episodes // micro_batches // dp
  rollout_local = rollout_micro_batch * samples_per_prompt // dp
  train_gathered, decode_gathered = gathered_bytes(
      config, mesh, freeze_embedding=freeze_embedding, hoisted_stacks=hoisted_stacks)
  # The last attempt's prefill: its prompt-sized cache (alive while copied into the decode
  # cache) and the attention scores of one layer, [B, N, P, P] fp32.
  width = rollout.context_width(length - max_new_tokens)
  terms = {
      "params": param_bytes,
      "optimizer": opt_bytes,
      "reference": param_bytes,
      "batch": episodes // dp * (length * (4 + 4 * num_attempts) + 4 * num_attempts),
      "gradients": param_bytes - (_bytes_under(factors, "embedder") if freeze_embedding else 0),
      "gathered_weights": train_gathered,
      "activations": activation_bytes(
          local, episodes=micro_local, length=length, num_attempts=num_attempts,
          samples_per_prompt=samples_per_prompt, kl_estimator=kl_estimator,
          logits_chunk=logits_chunk, freeze_embedding=freeze_embedding),
      # One rollout call of rollout_micro_batch prompts, spread over the data-parallel devices.
      "rollout_cache_buffers": -(-rollout.rollout_memory_bytes(local, rc, rollout_micro_batch,
                                                               prompt_len) // dp),
      # decode_params' copy keeps each weight's sharding: the block params' bytes again, in
      # the compute dtype (twice with offline first attempts: the reference's copy too).
      "decode_weights": (1 + offline_first) * (decode_copy_bytes(config, factors)
                                               + decode_gathered),
      "prefill": (sampling.kv_cache_bytes(local, rollout_local, width)
                  + PREFILL_SCORE_COPIES * rollout_local * local.num_heads * width * width * 4),
  }
  notes = {
      "params": (f"{config.num_params() / 1e9:.2f}B params, {config.param_dtype} "
                 f"(compute {config.dtype})"),
      "optimizer": "Adam mu and nu (param dtype)",
      "reference": "frozen base model",
      "batch": f"{episodes // dp} episodes x {length} tokens",
      "gradients": "micro-batch accumulator",
      "gathered_weights": "FSDP all-gathered embedding (x3) and layer weights",
      "activations": (f"{micro_local} episode(s) x {length} tokens, remat={config.remat}, "
                      f"logits_chunk={logits_chunk}"),
      "rollout_cache_buffers": (f"{rollout_local} episodes, KV cache of {max_new_tokens} new "
                                f"tokens per attempt"),
      "decode_weights": ("sampler's per-layer weight copy (+ gathered embedding, layer)"
                         + (", policy and reference" if offline_first else "")),
      "prefill": f"prompt cache + one layer's attention scores, {width}-token prompt bucket",
  }
  return Plan(terms=terms, mesh_shape=tuple(mesh_shape), notes=notes)


def num_chips(accelerator: str) -> int:
  """JAX devices of a slice: v4 and v5p names count TensorCores (2 per chip), v5e / v6e chips."""
  generation, _, count = accelerator.partition("-")
  hbm_bytes(accelerator)  # validates the generation.
  if not count.isdigit():
    raise ValueError(f"accelerator {accelerator!r} is not a TPU type like 'v5p-16'.")
  return int(count) // 2 if generation in ("v4", "v5p") else int(count)


def plan_from_config(c) -> tuple[Plan, int]:
  """(plan, HBM bytes per chip) for a recipe config with a `memory_plan` section."""
  if "memory_plan" not in c:
    raise ValueError("the config has no memory_plan section (accelerator, prompt_len, "
                     "instruction_len); see configs/recipes/common.py.")
  mp = c.memory_plan
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  overrides = {k: v for k, v in c.model.items() if k in fields}
  config = model_lib.get_config(c.model.preset, **overrides)
  chips = num_chips(mp.accelerator)
  shape = list(c.mesh_shape)
  if -1 in shape:
    shape[shape.index(-1)] = chips // math.prod(s for s in shape if s != -1)
  if math.prod(shape) != chips:
    raise ValueError(f"mesh_shape {tuple(c.mesh_shape)} does not cover the {chips} devices of "
                     f"{mp.accelerator}.")
  rl = c.rl
  result = plan(config, tuple(shape), prompts_per_step=rl.prompts_per_step,
                samples_per_prompt=rl.samples_per_prompt, micro_batches=rl.micro_batches,
                prompt_len=mp.prompt_len, max_new_tokens=rl.max_new_tokens,
                rollout_micro_batch=rl.rollout_micro_batch, num_attempts=rl.num_attempts,
                instruction_len=mp.instruction_len, kl_estimator=rl.kl_estimator,
                logits_chunk=rl.get("logits_chunk", 128),
                freeze_embedding=rl.get("freeze_embedding", False),
                offline_first=rl.get("offline_first_fraction", 0.0) > 0)
  return result, hbm_bytes(mp.accelerator)


def check_fits(p: Plan, device_bytes: int, headroom: float = 0.9) -> None:
  """Raises ValueError when the plan's peak exceeds `headroom` x device_bytes, naming the
  largest term of the phase that overflows and what to change."""
  budget = int(headroom * device_bytes)
  if p.peak <= budget:
    return
  phase, names = (("train step", RESIDENT + TRAIN_TERMS) if p.train_peak >= p.rollout_peak
                  else ("rollout", RESIDENT + ROLLOUT_TERMS))
  largest = max(names, key=lambda t: p.terms[t])
  raise ValueError(
      f"does not fit: the {phase} needs {p.peak / GiB:.2f} GiB per device, over "
      f"{budget / GiB:.2f} GiB ({headroom:.0%} of {device_bytes / GiB:.0f} GiB). Largest term: "
      f"{largest} = {p.terms[largest] / GiB:.2f} GiB ({p.notes.get(largest, '')}); to shrink "
      f"it, {ADVICE[largest]}.")


def report(c) -> str:
  """The plan's table for a recipe config (check it with `check_fits`)."""
  result, device_bytes = plan_from_config(c)
  return (f"{c.model.preset} on {c.memory_plan.accelerator}, mesh (data, fsdp, tensor) = "
          f"{result.mesh_shape}\n\n{result.table(device_bytes)}\n")


def main(c) -> None:
  print(report(c))
  check_fits(*plan_from_config(c))
  print("fits.")


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "a recipe config file "
                                            "(configs/recipes/*.py).", lock_config=False)
  app.run(lambda argv: main(_CONFIG.value))
