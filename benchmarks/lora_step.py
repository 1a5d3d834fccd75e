"""Memory and time of one Stage II update: LoRA adapters vs full fine-tuning, same batch.

Both run the real `train_step.make_rl_step` (policy + reference forward, exact KL,
backward, clip + Adam) on one synthetic batch. Full: the state is params + Adam
moments and the reference is a second copy of the params. LoRA: the state is the
adapters + their moments, and the reference is the frozen base they are merged into
inside the step (`lora.merge`). Reported per mode: bytes of the step's arguments
(state + reference + batch, from the compiled step's memory analysis), its temporaries,
their sum, and the median step time (wall and process CPU seconds: the CPU time is the
steadier figure on a shared machine) over `--reps` steps after a warm-up; plus the time of
the jitted merge the sampler needs once per LoRA step.

  python -m benchmarks.lora_step                          # the demo model
  python -m benchmarks.lora_step --config gemma3-270m --episodes 4 --length 64 --reps 2
  python -m benchmarks.lora_step --quick                  # a smoke run (tiny model)
  python -m benchmarks.lora_step --config gemma3-270m --episodes 4 --length 64 --reps 2 \
      --dtypes float32,bfloat16                           # + bf16 compute (fp32 masters)

--dtypes: compute dtype(s); the first one's rows are "full" and "lora", a further one's
"full_<dtype>" and "lora_<dtype>" (same params, same batch, same process).

Measured (2026-12, AMD EPYC, 2 cores shared with other jobs: load ~12, so wall times are
inflated; CPU seconds are the comparison), rank 8, alpha 16, default targets, fp32,
logits_chunk 32, Stage II, one device:

  gemma3-270m, 4 x 64 tokens   full         LoRA (1.9M adapter params)
    state (params/adapters+Adam)  3,068 MB     22 MB
    step arguments (+ ref, batch) 4,091 MB     1,044 MB
    step temporaries              2,613 MB     1,724 MB   (no [V, D] embedding gradient)
    step CPU seconds              18.5         15.1       (+ merge for the sampler: 1.0)
  demo model, 16 x 128 tokens    args+temp 231 MB vs 206 MB; state 7.5 MB vs 0.75 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np
import optax

from score_jax import hostinfo, lora, losses, model, sft, sharding, train_step

CONFIGS = {
    "demo": lambda: model.get_config(  # configs/demo.py's model (vocab ~ its tokenizer's).
        "tiny", vocab_size=512, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=32, ffw_hidden=256, sliding_window=64, query_pre_attn_scalar=32),
    "gemma3-270m": lambda: model.get_config("gemma3-270m"),
    "tiny": lambda: model.get_config("tiny", vocab_size=64, num_layers=1),  # --quick
}


def _batch(config: model.ModelConfig, episodes: int, length: int, k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((2, episodes, length), np.float32)
  third = length // 3
  mask[0, :, third:2 * third - 4] = 1.0  # y1, then an instruction, then y2
  mask[1, :, 2 * third:] = 1.0
  mask[1, :, -1] = 0.0  # the last position predicts nothing
  return {"tokens": rng.integers(1, config.vocab_size, (episodes, length)).astype(np.int32),
          "loss_mask": mask,
          "rewards": rng.integers(0, 2, (2, episodes)).astype(np.float32),
          "target_index": losses.target_positions(mask.max(0))}


def measure(config, params, trained, batch, k, reps, logits_chunk):
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-5))
  state = sft.init_train_state(trained, opt, mesh)
  ref = sharding.shard_params(params, mesh)
  obj = train_step.ObjectiveConfig(name="stage2", samples_per_prompt=k, logits_chunk=logits_chunk)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  t0 = time.perf_counter()
  mem = step.lower(state, ref, batch).compile().memory_analysis()
  compile_s = time.perf_counter() - t0
  state, m = step(state, ref, batch)  # warm-up
  jax.block_until_ready(m)
  times, cpu_times = [], []
  for _ in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, m = step(state, ref, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return {"state_MB": state_bytes / 2**20, "args_MB": mem.argument_size_in_bytes / 2**20,
          "temp_MB": mem.temp_size_in_bytes / 2**20,
          "args+temp_MB": (mem.argument_size_in_bytes + mem.temp_size_in_bytes) / 2**20,
          "compile_s": compile_s, "step_s": statistics.median(times),
          "step_cpu_s": statistics.median(cpu_times)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="demo", choices=sorted(CONFIGS))
  parser.add_argument("--episodes", type=int, default=32)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--k", type=int, default=4)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--logits_chunk", type=int, default=32)
  parser.add_argument("--dtypes", default="float32",
                      help="compute dtype(s), comma-separated: float32, bfloat16")
  parser.add_argument("--quick", action="store_true", help="a smoke run: tiny model, seconds")
  args = parser.parse_args(argv)
  dtypes = args.dtypes.split(",")
  if not dtypes or set(dtypes) - {"float32", "bfloat16"}:
    parser.error(f"--dtypes must name float32 and/or bfloat16, got {args.dtypes!r}.")
  if args.quick:
    args.config, args.episodes, args.length, args.rank, args.reps = "tiny", 4, 32, 2, 1
  config = CONFIGS[args.config]()
  params = model.init_params(config, jax.random.key(0))
  adapters = lora.init(config, jax.random.key(1), rank=args.rank, alpha=2.0 * args.rank)
  batch = _batch(config, args.episodes, args.length, args.k)
  rows = {}
  for i, dtype in enumerate(dtypes):
    at = dataclasses.replace(config, dtype=dtype)  # params stay fp32: master weights
    suffix = "" if i == 0 else f"_{dtype}"
    for mode, trained in (("full", params), ("lora", adapters)):
      rows[mode + suffix] = {"dtype": dtype, **measure(at, params, trained, batch, args.k,
                                                       args.reps, args.logits_chunk)}
  merge = jax.jit(lambda p, a: lora.merge(config, p, a))
  jax.block_until_ready(merge(params, adapters))
  t0, c0 = time.perf_counter(), time.process_time()
  jax.block_until_ready(merge(params, adapters))
  rows["lora"].update(merge_s=time.perf_counter() - t0, merge_cpu_s=time.process_time() - c0)
  result = {"config": args.config, "params": config.num_params(),
            "adapter_params": sum(x.size for x in jax.tree.leaves(adapters)),
            "episodes": args.episodes, "length": args.length, "rank": args.rank,
            "cpu": hostinfo.describe(), **rows}
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
