"""One full SCoRe step, phase by phase, on 1 device and on an emulated 8-device mesh.

A step is what `train.run_rl` does once: `train.rl_batch` (rollout of 2 attempts x
k samples per prompt, decoded to text, verified by the task's reward) -> the Stage II
update (`train_step.make_rl_step`) -> an orbax checkpoint save. Phases:

  sample      rollout + decode to text (`rl_batch`'s time_sample)
  verify      rewards of both attempts (`rl_batch`'s time_verify)
  update      the jitted Stage II step, until its metrics are on the host
  checkpoint  `Checkpointer.save` (the blocking part: device -> host copy) and, apart,
              the wait for the async write to finish (`checkpoint_wait`); a run
              overlaps that wait with the next step

The same global batch runs on a (1, 1, 1) mesh of one CPU device and on the
`--mesh` mesh of 8 emulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set here before JAX starts); the ratio 8 devices / 1 device is the sharding overhead
(both use the same cores: the 8 "devices" share this machine's CPUs). Repetitions
alternate between the two meshes; medians are reported. Model: configs/demo.py's tiny
Gemma 2 (random weights, no warm-start) on the synthetic task.

  python -m benchmarks.score_step                       # the tables in BENCHMARKS.md
  python -m benchmarks.score_step --trace_dir=/tmp/tr   # + a jax.profiler trace, op table
  python -m benchmarks.score_step --quick               # a smoke run
"""

from __future__ import annotations

import os
import sys

# 8 emulated CPU devices, before JAX is imported (no effect if it already was: then the
# caller, e.g. tests/conftest.py, decides the device count).
if "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import trace_summary  # noqa: E402
from configs import demo  # noqa: E402
from score_jax import checkpoint, model, sft, sharding, train, train_step  # noqa: E402

PHASES = ("sample", "verify", "update", "checkpoint", "checkpoint_wait")


class Harness:
  """One SCoRe step on one mesh: the run, a train state, the Stage II step, a checkpointer."""

  def __init__(self, run: train.Run, params: model.Params, workdir: str):
    self.run = run
    cfg = run.config.rl
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))
    self.ref = jax.tree.map(jnp.copy, sharding.shard_params(params, run.mesh))
    self.state = sft.init_train_state(params, opt, run.mesh)
    self.step_fn = train_step.make_rl_step(run.model_config, opt,
                                           train.objective_config(run, "stage2"), self.state,
                                           self.ref, run.mesh)
    self.ckpt = checkpoint.Checkpointer(workdir, save_every=1, keep=2)
    self.step = 0

  def one_step(self) -> dict[str, float]:
    """Runs step `self.step` (fixed problems and key per step) and returns phase seconds."""
    batch, m = train.rl_batch(self.run, self.state["params"], self.ref, self.step)
    t0 = time.perf_counter()
    self.state, metrics = self.step_fn(self.state, self.ref, batch)
    metrics = jax.device_get(metrics)
    t1 = time.perf_counter()
    self.step += 1
    self.ckpt.save(self.step, self.state, {"phase": "rl"}, force=True)
    t2 = time.perf_counter()
    self.ckpt.wait()
    t3 = time.perf_counter()
    return {"sample": m["time_sample"], "verify": m["time_verify"], "update": t1 - t0,
            "checkpoint": t2 - t1, "checkpoint_wait": t3 - t2, "loss": float(metrics["loss"]),
            "tokens": float(m["response_length_1"] + m["response_length_2"])}


def make_config(args: argparse.Namespace):
  c = demo.get_config()
  c.rl.prompts_per_step = args.prompts
  c.rl.samples_per_prompt = args.samples
  c.rl.rollout_micro_batch = args.prompts
  c.rl.max_new_tokens = args.new_tokens
  c.export.enabled = False
  if args.quick:
    c.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   ffw_hidden=64, sliding_window=16, query_pre_attn_scalar=16.0)
    c.task.num_train, c.task.num_eval = 200, 16
  return c


def bench(args: argparse.Namespace) -> dict[str, Any]:
  devices = jax.devices()
  if len(devices) < 8:
    raise RuntimeError(f"{len(devices)} devices; this benchmark needs 8 (set XLA_FLAGS="
                       "--xla_force_host_platform_device_count=8 before JAX starts).")
  config = make_config(args)
  root = tempfile.mkdtemp(prefix="score_step_")
  config.mesh_shape = tuple(args.mesh)
  run8 = train.setup(config, os.path.join(root, "run"))
  run1 = dataclasses.replace(run8, mesh=sharding.make_mesh((1, 1, 1), devices[:1]))
  params = model.init_params(run8.model_config, jax.random.key(args.seed))
  harness = {"1 device": Harness(run1, params, os.path.join(root, "ckpt1")),
             f"8 devices {tuple(args.mesh)}": Harness(run8, params, os.path.join(root, "ckpt8"))}
  first = {name: h.one_step() for name, h in harness.items()}  # compiles
  times = {name: [] for name in harness}
  for _ in range(args.reps):
    for name, h in harness.items():
      times[name].append(h.one_step())
  traces = {}
  if args.trace_dir:
    for i, (name, h) in enumerate(harness.items()):
      log_dir = os.path.join(args.trace_dir, f"mesh{i}")
      with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        h.one_step()
      # The update and the sampler are separate jitted programs: one op table each.
      traces[name] = {phase: trace_summary.summarize(log_dir, module=module)
                      for phase, module in (("update", "jit_step"), ("sample", "jit_rollout"))}
  for h in harness.values():
    h.ckpt.close()
  shutil.rmtree(root, ignore_errors=True)  # the tokenizer and the checkpoints written
  med = {name: {k: statistics.median(t[k] for t in ts) for k in (*PHASES, "tokens")}
         for name, ts in times.items()}
  for m in med.values():
    m["step"] = sum(m[k] for k in PHASES if k != "checkpoint_wait")
  one, eight = med.values()
  return {"model": repr(run8.model_config), "params": run8.model_config.num_params(),
          "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
          "episodes": args.prompts * args.samples, "median_s": med,
          "ratio_8_to_1": {k: eight[k] / one[k] for k in (*PHASES, "step")},
          "first_step_s": first, "times_s": times, "traces": traces,
          "load": os.getloadavg(), "cpus": os.cpu_count()}


def markdown_table(r: dict[str, Any]) -> str:
  names = list(r["median_s"])
  lines = ["| phase | " + " | ".join(f"{n} s" for n in names) + " | share (1 device) "
           "| 8 / 1 |", "|---|" + "---:|" * (len(names) + 2)]
  one = r["median_s"][names[0]]
  for k in (*PHASES, "step"):
    share = f"{one[k] / one['step']:.0%}" if k != "checkpoint_wait" else "(overlapped)"
    lines.append(f"| {k} | " + " | ".join(f"{r['median_s'][n][k]:.3f}" for n in names)
                 + f" | {share} | {r['ratio_8_to_1'][k]:.2f} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.score_step", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--prompts", type=int, default=16, help="problems per step")
  parser.add_argument("--samples", type=int, default=4, help="k samples per problem")
  parser.add_argument("--new_tokens", type=int, default=48, help="max new tokens per attempt")
  parser.add_argument("--mesh", default="8,1,1",
                      help="(data, fsdp, tensor) of the 8-device mesh, e.g. 8,1,1 or 2,4,1")
  parser.add_argument("--reps", type=int, default=3, help="timed steps per mesh (median)")
  parser.add_argument("--trace_dir", default="",
                      help="also trace one step per mesh here and print its op-kind table")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: d 32 model, 8 prompts x 2, 8 new tokens, 1 rep")
  parser.add_argument("--out", default="", help="write the JSON results here")
  args = parser.parse_args(argv)
  if args.quick:
    args.prompts, args.samples, args.new_tokens, args.reps = 8, 2, 8, 1
  try:
    args.mesh = tuple(int(x) for x in args.mesh.split(","))
  except ValueError:
    parser.error(f"--mesh must be three integers like 8,1,1, got {args.mesh!r}.")
  if len(args.mesh) != 3 or args.mesh[0] * args.mesh[1] * args.mesh[2] != 8:
    parser.error(f"--mesh {args.mesh} must be 3 axes whose product is 8.")
  if args.prompts % args.mesh[0] or args.prompts * args.samples % 8:
    parser.error(f"--prompts {args.prompts} must be a multiple of the data axis {args.mesh[0]} "
                 "and prompts x samples a multiple of 8 (the batch is split over the mesh).")
  if args.reps < 1 or args.samples < 2:
    parser.error("--reps must be >= 1 and --samples >= 2 (RLOO needs 2 samples per prompt).")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  result = bench(args)
  print("python -m benchmarks.score_step " + " ".join(argv))
  print(f"{result['params'] / 1e6:.2f}M params, {result['episodes']} episodes, "
        f"load average {result['load']}, {result['cpus']} CPUs")
  print(markdown_table(result))
  for name, phases in result["traces"].items():
    for phase, summary in phases.items():
      print(f"\ntrace of one step, {name}, {phase} ops:\n" + trace_summary.markdown(summary))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=str)
  return result


if __name__ == "__main__":
  main()
