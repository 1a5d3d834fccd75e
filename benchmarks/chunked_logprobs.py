"""Memory (and time) of one Stage II RL step with and without chunked logits.

For each model config and `logits_chunk` setting, the real `train_step.make_rl_step`
Stage II step (policy + reference forward, exact KL, backward, Adam update) is
lowered for abstract arguments and compiled; XLA's buffer assignment then gives:

  temp       bytes of the step's temporaries (activations, logits blocks, gradients):
             the number chunking changes;
  args       params + Adam state + reference + batch (the same for every chunk size,
             smaller with --freeze_embedding: no Adam moments for the [V, D] table);
  peak       temp + args + outputs - aliased (the donated state is updated in place).

logits_chunk = 0 is the unchunked path (the full [E, L, V] logits of both models);
`full logits` is the size of one such fp32 tensor, for scale. Nothing is allocated
for the compile-only rows, so configs far larger than this machine's memory can be
measured. With --time, each row whose peak fits under --time_max_gib is also run
(random params, `--reps` timed steps after one warm-up) and its median step time
reported.

--trained_fraction F < 1 trains only 2 attempts of F * L / 2 positions each (a
prompt, y1, an instruction, y2), and --target_index adds, for each chunked row, the
same step given `target_index` (train.rl_batch's: only the trained positions are
projected to the vocabulary).

  python -m benchmarks.chunked_logprobs                       # the table in BENCHMARKS.md
  python -m benchmarks.chunked_logprobs --quick               # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import losses, model, sft, sharding, train_step

V_262K = 262_144
CONFIGS = {
    # tiny-gemma3's blocks with Gemma 3's real 262k vocabulary: the logits dominate everything.
    "tiny-gemma3-v262k": lambda: model.get_config("tiny-gemma3", vocab_size=V_262K),
    # The real Gemma 3 270M dimensions (d 640, 18 layers, vocab 262,144), remat on.
    "gemma3-270m": lambda: model.get_config("gemma3-270m", remat=True),
    "quick": lambda: model.get_config("tiny", vocab_size=4096),
}


def _abstract(tree: Any, sharding_: jax.sharding.Sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_), tree)


def loss_mask(episodes: int, seq_len: int, trained_fraction: float) -> np.ndarray:
  """[2, E, L]: every position (fraction 1), or y1 ending mid-episode and y2 at the end."""
  mask = np.zeros((2, episodes, seq_len), np.float32)
  if trained_fraction >= 1:
    mask[:, :, 1:] = 1.0
    return mask
  n = max(1, int(seq_len * trained_fraction / 2))
  mask[0, :, seq_len // 2 - n:seq_len // 2] = 1.0
  mask[1, :, seq_len - n:] = 1.0
  return mask


def build_step(config: model.ModelConfig, episodes: int, seq_len: int, chunk: int,
               freeze_embedding: bool, mesh: jax.sharding.Mesh, index_width: int = 0):
  """(step, abstract state, abstract reference, abstract batch) of a Stage II step;
  index_width > 0: the batch carries a target_index of that width."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-6))
  if freeze_embedding:
    opt = train_step.frozen_embedding_optimizer(opt)
  params = jax.eval_shape(lambda key: model.init_params(config, key), jax.random.key(0))
  state = _abstract({"params": params, "opt_state": jax.eval_shape(opt.init, params),
                     "step": jax.ShapeDtypeStruct((), jnp.int32)}, replicated)
  ref = _abstract(params, replicated)
  batch = _abstract({"tokens": jax.ShapeDtypeStruct((episodes, seq_len), jnp.int32),
                     "loss_mask": jax.ShapeDtypeStruct((2, episodes, seq_len), jnp.float32),
                     "rewards": jax.ShapeDtypeStruct((2, episodes), jnp.float32)}, replicated)
  if index_width:
    batch["target_index"] = jax.ShapeDtypeStruct((episodes, index_width), jnp.int32,
                                                 sharding=replicated)
  obj = train_step.ObjectiveConfig("stage2", samples_per_prompt=2, logits_chunk=chunk,
                                   freeze_embedding=freeze_embedding)
  return train_step.make_rl_step(config, opt, obj, state, ref, mesh), opt, state, ref, batch


def measure(name: str, episodes: int, seq_len: int, chunk: int, freeze_embedding: bool,
            time_it: bool, reps: int, time_max_gib: float, trained_fraction: float = 1.0,
            target_index: bool = False) -> dict[str, Any]:
  config = CONFIGS[name]()
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  mask = loss_mask(episodes, seq_len, trained_fraction)
  index = losses.target_positions(mask.max(0)) if target_index else None
  step, opt, state, ref, batch = build_step(config, episodes, seq_len, chunk, freeze_embedding,
                                            mesh, 0 if index is None else index.shape[1])
  t0 = time.perf_counter()
  compiled = step.lower(state, ref, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes)
  row = {"config": name, "params": config.num_params(), "vocab": config.vocab_size,
         "episodes": episodes, "seq_len": seq_len, "logits_chunk": chunk,
         "freeze_embedding": freeze_embedding, "trained_fraction": trained_fraction,
         "target_index": target_index,
         "full_logits_bytes": episodes * seq_len * config.vocab_size * 4,
         "temp_bytes": mem.temp_size_in_bytes, "arg_bytes": mem.argument_size_in_bytes,
         "peak_bytes": peak, "compile_s": compile_s}
  if time_it and peak <= time_max_gib * 2**30:
    rng = np.random.default_rng(0)
    params = model.init_params(config, jax.random.key(0))
    live = sft.init_train_state(params, opt, mesh)
    ref_live = sharding.shard_params(params, mesh)
    real = {"tokens": rng.integers(0, config.vocab_size, (episodes, seq_len)).astype(np.int32),
            "loss_mask": mask,
            "rewards": rng.integers(0, 2, (2, episodes)).astype(np.float32)}
    if index is not None:
      real["target_index"] = index
    real = jax.device_put(real, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    times = []
    for _ in range(reps + 1):  # the executable compiled above: no second compile.
      t0 = time.perf_counter()
      live, metrics = compiled(live, ref_live, real)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    row["step_s"] = statistics.median(times[1:])  # after one warm-up call.
    row["loss"] = float(metrics["loss"])
  return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  gib = lambda b: f"{b / 2**30:.3g}"
  lines = ["| config | E x L | trained | logits_chunk | frozen emb | target_index | "
           "full logits GiB | temp GiB | args GiB | peak GiB | peak vs unchunked | step s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  base = {}
  for r in rows:
    key = (r["config"], r["episodes"], r["seq_len"], r["trained_fraction"])
    if r["logits_chunk"] == 0 and not r["freeze_embedding"] and not r["target_index"]:
      base[key] = r["peak_bytes"]
    ratio = f"{r['peak_bytes'] / base[key]:.3f}" if key in base else "-"
    step_s = f"{r['step_s']:.2f}" if "step_s" in r else "-"
    lines.append(f"| {r['config']} | {r['episodes']} x {r['seq_len']} | "
                 f"{r['trained_fraction']:g} | {r['logits_chunk']} | "
                 f"{'yes' if r['freeze_embedding'] else 'no'} | "
                 f"{'yes' if r['target_index'] else 'no'} | {gib(r['full_logits_bytes'])} | "
                 f"{gib(r['temp_bytes'])} | {gib(r['arg_bytes'])} | {gib(r['peak_bytes'])} | "
                 f"{ratio} | {step_s} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="tiny-gemma3-v262k,gemma3-270m")
  parser.add_argument("--shapes", default="16x512", help="E x L pairs, comma-separated.")
  parser.add_argument("--chunks", default="0,128,32",
                      help="logits_chunk values (0 = unchunked), comma-separated.")
  parser.add_argument("--freeze_embedding", action="store_true",
                      help="also measure each chunked row with a frozen embedding.")
  parser.add_argument("--trained_fraction", type=float, default=1.0,
                      help="fraction of positions trained (two attempts); 1 = every position.")
  parser.add_argument("--target_index", action="store_true",
                      help="also measure each chunked row projecting only the trained positions.")
  parser.add_argument("--time", action="store_true", help="also run the rows that fit.")
  parser.add_argument("--time_max_gib", type=float, default=6.0)
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--quick", action="store_true", help="tiny smoke run.")
  parser.add_argument("--out", default="", help="write the rows as JSON here.")
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.shapes, args.chunks, args.time, args.reps = "quick", "4x32", "0,8", True, 1
    args.trained_fraction, args.target_index = 0.5, True
  return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
  chunks = [int(c) for c in args.chunks.split(",")]
  rows = []
  for name in args.configs.split(","):
    for episodes, seq_len in shapes:
      for chunk in chunks:
        for frozen in (False, True) if args.freeze_embedding and chunk else (False,):
          for indexed in (False, True) if args.target_index and chunk else (False,):
            rows.append(measure(name, episodes, seq_len, chunk, frozen, args.time, args.reps,
                                args.time_max_gib, args.trained_fraction, indexed))
            print(json.dumps(rows[-1]), flush=True)
  print("\npython -m benchmarks.chunked_logprobs " + " ".join(argv))
  print(format_table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
