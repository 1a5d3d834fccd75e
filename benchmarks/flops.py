"""Analytic FLOPs of the SCoRe train step (matmuls + attention), and the TPU scaling table.

Counts multiply-adds as 2 FLOPs and only the matrix products (the projections, the
attention scores and the attention-weighted values, the tied logits projection);
norms, RoPE, soft-caps, softmaxes and the optimizer are left out (a few % at the
sizes here). Attention is counted over the full T x T score matrix, which is what
the model computes (the causal / sliding-window mask is applied to it, not used to
skip work), so no "causal halving" is applied.

A Stage II / Stage I update over E episodes of L tokens runs

  policy     forward + backward (backward = 2 x forward)   3 x (body + logits)
  reference  forward only                                   1 x (body + logits)

= the *model* FLOPs (what MFU divides by). What the hardware also executes
(`hardware` below, for HFU): `losses.chunked_token_terms` rematerialises each
logits block, so the backward pass recomputes both models' logits (+2 x logits), the
last block is padded to a whole `logits_chunk`, and with `config.remat` each policy
layer is recomputed (+1 x body). `jaxpr_matmul_flops` counts the same from the traced
program (every dot_general, scans times their length); tests check the two agree.

  python -m benchmarks.flops        # the recipes' FLOPs per episode and expected TPU step time
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any
from collections.abc import Sequence

from score_jax.model import ModelConfig, get_config


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one RL update over `episodes` x `length` tokens."""

  body_forward: float  # all layers, one forward of one model over the batch
  logits_forward: float  # the tied [D, V] projection over the L - 1 predicting positions
  model: float  # policy fwd + bwd, reference fwd (MFU numerator)
  hardware: float  # model + rematerialised recomputation (HFU numerator)


def forward_flops_per_token(config: ModelConfig, context: int) -> dict[str, float]:
  """Matmul FLOPs of one token's forward pass with `context` keys per attention layer."""
  d, n, k, h, f = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.ffw_hidden)
  proj = 2 * d * (n * h + 2 * k * h + n * h)  # q, k and v, attention output
  attn = 2 * 2 * context * n * h  # scores q.k and probs.v
  mlp = 2 * 3 * d * f  # gate, up, down
  return {"layer_proj": float(proj + mlp), "layer_attn": float(attn),
          "body": float(config.num_layers * (proj + mlp + attn)),
          "logits": float(2 * d * config.vocab_size)}


def rl_step_flops(config: ModelConfig, episodes: int, length: int,
                  logits_chunk: int = 128) -> StepFlops:
  """Model and hardware FLOPs of one `train_step.make_rl_step` update (exact KL)."""
  per_token = forward_flops_per_token(config, length)
  body = episodes * length * per_token["body"]
  logits = episodes * (length - 1) * per_token["logits"]
  model = 4 * (body + logits)
  if logits_chunk <= 0:  # the full-logits path: all L positions, nothing rematerialised.
    padded, remat_logits = logits * length / (length - 1), 0.0
  else:  # blocks of `chunk` positions, the last one padded; each block recomputed.
    chunk = min(logits_chunk, length - 1)
    padded = logits * (-(-(length - 1) // chunk) * chunk) / (length - 1)
    remat_logits = 2 * padded
  hardware = 4 * (body + padded) + remat_logits + (body if config.remat else 0.0)
  return StepFlops(body_forward=body, logits_forward=logits, model=model, hardware=hardware)


def jaxpr_matmul_flops(jaxpr: Any, multiplier: int = 1) -> int:
  """2 x multiply-adds of every dot_general in a (closed) jaxpr, through nested calls.

  A scan's body counts `length` times; remat / pjit / custom-vjp bodies once each
  (as traced: the backward pass's recomputation appears as its own equations).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      contracted = math.prod(lhs_shape[i] for i in lhs_contract)
      total += multiplier * 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
    inner = multiplier * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
          total += jaxpr_matmul_flops(sub, inner)
  return total


def decode_flops_per_token(config: ModelConfig, context: int) -> float:
  """One sampled token: the body over `context` cached keys plus the [D, V] projection."""
  per_token = forward_flops_per_token(config, context)
  return per_token["body"] + per_token["logits"]


# --- TPU scaling on paper -----------------------------------------------------------------------

# Per chip: peak dense bf16 matmul FLOP/s, HBM bandwidth and inter-chip (ICI) bandwidth, bytes/s
# (public Cloud TPU figures). fp32 params under JAX's default matmul precision run single-pass
# bf16 on the MXU, so the bf16 peak is the ceiling for the recipes' fp32 weights.
TPU_CHIPS = {
    "v4": {"flops": 275e12, "hbm_bw": 1.2e12, "ici_bw": 300e9},
    "v5litepod": {"flops": 197e12, "hbm_bw": 0.82e12, "ici_bw": 200e9},
    "v5p": {"flops": 459e12, "hbm_bw": 2.76e12, "ici_bw": 600e9},
}
RECIPES = ("gemma2_2b_v4_8", "gemma2_2b_v5e_8", "gemma2_9b_v5p_16", "gemma3_4b_v5e_8")


@dataclasses.dataclass(frozen=True)
class Assumptions:
  train_mfu: float = 0.40  # of the bf16 peak, for the large-batch update (and prefill)
  bw_efficiency: float = 0.60  # of HBM / ICI bandwidth, for memory-bound decode steps
  param_bytes: int = 4  # fp32 weights, read once per decode step


def recipe_estimate(name: str, a: Assumptions = Assumptions()) -> dict[str, Any]:
  """Step time of `configs/recipes/<name>.py` on its slice, from FLOPs and bytes."""
  import importlib  # deferred: configs/ is only needed for this table.

  from score_jax import memory_plan
  c = importlib.import_module(f"configs.recipes.{name}").get_config()
  rl, mp = c.rl, c.memory_plan
  config = get_config(c.model.preset, remat=True)
  chip = TPU_CHIPS[mp.accelerator.split("-")[0]]
  chips = memory_plan.num_chips(mp.accelerator)
  _, fsdp, tensor = c.mesh_shape
  episodes = rl.prompts_per_step * rl.samples_per_prompt
  new = rl.max_new_tokens
  length = mp.prompt_len + 2 * new + mp.instruction_len + 1
  train = rl_step_flops(config, episodes, length, rl.get("logits_chunk", 128))
  update_s = train.hardware / (chips * chip["flops"] * a.train_mfu)
  # Rollout: calls of `rollout_micro_batch` prompts x k rows run one after another; each
  # attempt is a prefill then `new` decode steps. A decode step reads every weight (the
  # tensor-axis share of it per chip) and the rows' KV cache, and computes the rows' tokens.
  rows = rl.rollout_micro_batch * rl.samples_per_prompt
  calls = rl.prompts_per_step // rl.rollout_micro_batch
  context = mp.prompt_len + new + mp.instruction_len / 2  # mean over both attempts
  kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * a.param_bytes
  weights = config.num_params() * a.param_bytes / tensor
  hbm_s = (weights + rows * context * kv_per_token / chips) / (chip["hbm_bw"] * a.bw_efficiency)
  flops_s = rows * decode_flops_per_token(config, int(context)) / (
      chips * chip["flops"] * a.train_mfu)
  # With FSDP the weights are all-gathered layer by layer at every step (what the memory
  # plan assumes): (1 - 1/fsdp) of them cross ICI per chip per step.
  ici_s = weights * (1 - 1 / fsdp) / (chip["ici_bw"] * a.bw_efficiency)
  prefill_s = 2 * rows * (mp.prompt_len + new // 2) * decode_flops_per_token(
      config, mp.prompt_len) / (chips * chip["flops"] * a.train_mfu)
  rollout_hbm = calls * (prefill_s + 2 * new * max(hbm_s, flops_s))
  rollout_ici = calls * (prefill_s + 2 * new * max(hbm_s, flops_s, ici_s))
  return {"recipe": name, "model": c.model.preset, "slice": mp.accelerator, "chips": chips,
          "mesh": tuple(c.mesh_shape), "episodes": episodes, "length": length,
          "rows_per_call": rows, "train_tflop_per_episode": train.hardware / episodes / 1e12,
          "update_s": update_s, "decode_step_ms": 1e3 * max(hbm_s, flops_s),
          "decode_step_ici_ms": 1e3 * max(hbm_s, flops_s, ici_s),
          "rollout_s": rollout_hbm, "rollout_ici_s": rollout_ici,
          "step_s": update_s + rollout_hbm, "step_ici_s": update_s + rollout_ici}


def tpu_table(a: Assumptions = Assumptions()) -> str:
  """Expected step time and episodes/s of the recipes (both rollout bounds)."""
  lines = ["| recipe | slice (chips), mesh | train TFLOP / episode | update s "
           "| decode ms / step (gathers hoisted / per step) | rollout s | step s "
           "| episodes / s |", "|---|---|---:|---:|---|---|---|---|"]
  for name in RECIPES:
    e = recipe_estimate(name, a)
    lines.append(
        f"| `{name}` | {e['slice']} ({e['chips']}), {e['mesh']} "
        f"| {e['train_tflop_per_episode']:.0f} | {e['update_s']:.0f} "
        f"| {e['decode_step_ms']:.1f} / {e['decode_step_ici_ms']:.1f} "
        f"| {e['rollout_s']:.0f} - {e['rollout_ici_s']:.0f} "
        f"| {e['step_s']:.0f} - {e['step_ici_s']:.0f} "
        f"| {e['episodes'] / e['step_ici_s']:.2f} - {e['episodes'] / e['step_s']:.2f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--train_mfu", type=float, default=Assumptions.train_mfu)
  parser.add_argument("--bw_efficiency", type=float, default=Assumptions.bw_efficiency)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  table = tpu_table(Assumptions(train_mfu=args.train_mfu, bw_efficiency=args.bw_efficiency))
  print(table)
  return table


if __name__ == "__main__":
  main()
