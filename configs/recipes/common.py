"""What every recipe shares: configs/math_gemma.py plus a model, a slice and its batch split.

A recipe is `configs/math_gemma.py` (paper Table 5 hyper-parameters: Adam 5e-6, 512 episodes
per step = 128 problems x 4 samples, alpha 10, beta1 0.01, beta2 0.1, 1024 new tokens per
attempt) with the model preset, the mesh and the micro-batch sizes chosen for one slice,
checked by `python -m score_jax.memory_plan --config=configs/recipes/<name>.py` (tables in
BENCHMARKS.md). micro_batches=128 is the most the 512 episodes allow (whole groups of k=4);
rollout_micro_batch is in prompts (x4 episodes) per rollout call.
"""

import ml_collections

from configs import math_gemma


def recipe(*, preset: str, accelerator: str, mesh_shape: tuple[int, int, int],
           micro_batches: int, rollout_micro_batch: int, max_new_tokens: int = 1024,
           prompt_len: int = 512, instruction_len: int = 48) -> ml_collections.ConfigDict:
  c = math_gemma.get_config()
  c.model.preset = preset
  # bf16 matmul operands with fp32 accumulation is how TPUs run (MXU); it halves the
  # activations, KV cache and decode weights. Master weights and Adam stay fp32: steps of
  # lr 5e-6 would vanish in bf16. Sampler/trainer log-prob gaps show in rl/logprob_mismatch_*.
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.mesh_shape = mesh_shape
  c.rl.micro_batches = micro_batches
  c.rl.rollout_micro_batch = rollout_micro_batch
  c.rl.max_new_tokens = max_new_tokens
  # Read only by score_jax.memory_plan: the slice and the sequence lengths the plan assumes
  # (prompt_len: the longest turn-1 prompt with its template; instruction_len: the tokens
  # between attempts).
  c.memory_plan = ml_collections.ConfigDict(dict(
      accelerator=accelerator, prompt_len=prompt_len, instruction_len=instruction_len))
  return c
