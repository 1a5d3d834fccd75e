"""MFU of one Stage II update: step time vs a plain jitted matmul, side by side.

For each model config, the real `train_step.make_rl_step` Stage II step (policy and
reference forward, exact KL, backward, clip + Adam), called exactly as
`train.run_rl` calls it (host numpy batch in, donated state), is timed beside a
plain jitted `jnp.dot` of the step's own matmul shapes and dtype:

  peak     [E*L, D] x [D, F] (the MLP's shape) and [E*C, D] x [D, V] (one logits
           block): FLOPs / median time of each, the larger one is the machine's peak;
  model    analytic FLOPs of the update (`benchmarks.flops.rl_step_flops`: policy
           fwd + bwd, reference fwd; matmuls + attention);
  MFU      model FLOPs / step time / peak;  HFU counts the rematerialised
           recomputation too (the logits blocks; every layer with remat).

Repetitions are interleaved (peak matmuls, step, peak matmuls, step, ...) so that
load from other processes hits both alike; medians are reported. `recompiles` counts
backend compiles during the timed repetitions (must be 0: a recompile per step would
be a shape or sharding leak).

--trace_dir profiles one more step (op-kind table: `benchmarks.trace_summary`).

  python -m benchmarks.train_step              # the table in BENCHMARKS.md
  python -m benchmarks.train_step --configs gemma2-91m --trace_dir /tmp/t
  python -m benchmarks.train_step --quick      # a smoke run (tiny config, seconds)
  python -m benchmarks.train_step --configs gemma2-91m --dtypes float32,bfloat16

--dtypes: the compute dtype(s) (master weights stay fp32), one row each in the same
process; for bfloat16 the peak matmuls are the bf16 roofline (bf16 operands, fp32
accumulation: `preferred_element_type=float32`, as the model's dots).

--backwards row_major,autodiff: for bfloat16, an A/B of the backward's dots in the same
process: row_major is the model's own (`score_jax.model.contract.einsum`: cotangents as
row-major dots over physically transposed operands), autodiff replaces it, while the step
is traced, by plain `jnp.einsum(..., preferred_element_type=float32)`, whose autodiff dots
contract other dimensions and miss XLA:CPU's bf16 kernels (BENCHMARKS.md).

  python -m benchmarks.train_step --configs gemma2-91m --dtypes bfloat16 \
      --backwards row_major,autodiff --reps 4
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import flops as flops_lib, trace_summary
from score_jax import hostinfo, model, sft, sharding, train_step
from score_jax.model import contract


# tiny: the test preset; demo: configs/demo.py's model at the SCoRe step benchmark's batch
# (64 episodes of ~194 tokens); gemma2-91m: the sampler benchmark's ~91M-parameter Gemma 2
# (d 640, 12 layers, 8 heads / 4 kv heads of 64, MLP 2560, vocab 32k).
CONFIGS: dict[str, Callable[..., model.ModelConfig]] = {
    "tiny": lambda **kw: model.get_config("tiny", **kw),
    "demo": lambda **kw: model.get_config(
        "tiny", vocab_size=512, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=32, ffw_hidden=256, sliding_window=64, query_pre_attn_scalar=32, **kw),
    "gemma2-91m": lambda **kw: model.get_config(
        "tiny", vocab_size=32_000, d_model=640, num_layers=12, num_heads=8, num_kv_heads=4,
        head_dim=64, ffw_hidden=2560, sliding_window=4096, query_pre_attn_scalar=64, **kw),
}
# Episodes x tokens per config: the 91M step does 0.76 TFLOP, ~13 s here.
SHAPES = {"tiny": (16, 64), "demo": (64, 192), "gemma2-91m": (8, 128)}


class CompileCounter:
  """Counts XLA backend compiles (a jax.monitoring event) while `active`."""

  def __init__(self):
    self.count, self.active = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if self.active and event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


@contextlib.contextmanager
def backward_of(kind: str) -> Iterator[None]:
  """The bf16 contractions' backward while a step is traced: the model's row-major VJP, or
  jnp.einsum's own autodiff (the A/B baseline)."""
  if kind == "row_major":
    yield
    return
  plain = lambda eq, a, b: jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)
  with mock.patch.object(contract, "einsum", plain):
    yield


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def peak_matmuls(config: model.ModelConfig, episodes: int, length: int,
                 chunk: int) -> dict[str, tuple[Callable[[], Any], float]]:
  """Jitted `jnp.dot`s of the step's shapes: name -> (call, FLOPs per call)."""
  dt = jnp.dtype(config.dtype)
  rows, block = episodes * length, episodes * min(chunk or length, length)
  shapes = {"mlp": (rows, config.d_model, config.ffw_hidden),
            "logits": (block, config.d_model, config.vocab_size)}
  dot = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
  out = {}
  for name, (m, k, n) in shapes.items():
    a = jax.random.normal(jax.random.key(1), (m, k), dt)
    b = jax.random.normal(jax.random.key(2), (k, n), dt)
    out[f"{name} {m}x{k}x{n}"] = (lambda a=a, b=b: dot(a, b), 2.0 * m * k * n)
  return out


def build(config: model.ModelConfig, episodes: int, length: int, chunk: int, seed: int):
  """(step, state, reference, host batch) of a Stage II update on one device."""
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-5))
  params = model.init_params(config, jax.random.key(seed))
  state = sft.init_train_state(params, opt, mesh)
  ref = sharding.shard_params(jax.tree.map(jnp.copy, params), mesh)
  obj = train_step.ObjectiveConfig("stage2", samples_per_prompt=2, logits_chunk=chunk)
  step = train_step.make_rl_step(config, opt, obj, state, ref, mesh)
  rng = np.random.default_rng(seed)
  # Attempt 1 = the first half of each episode's tokens after a short prompt, attempt 2 the rest.
  mask = np.zeros((2, episodes, length), np.float32)
  prompt = length // 8
  mask[0, :, prompt:(length + prompt) // 2] = 1.0
  mask[1, :, (length + prompt) // 2 + 2:] = 1.0
  batch = {"tokens": rng.integers(3, config.vocab_size, (episodes, length)).astype(np.int32),
           "loss_mask": mask,
           "rewards": rng.integers(0, 2, (2, episodes)).astype(np.float32)}
  return step, state, ref, batch


def bench_config(name: str, args: argparse.Namespace, counter: CompileCounter,
                 dtype: str = "float32", backward: str = "row_major") -> dict[str, Any]:
  config = CONFIGS[name](remat=args.remat, dtype=dtype)
  episodes, length = args.shape or SHAPES[name]
  matmuls = peak_matmuls(config, episodes, length, args.logits_chunk)
  for fn, _ in matmuls.values():
    _timed(fn)  # compile + warm up
  step, state, ref, batch = build(config, episodes, length, args.logits_chunk, args.seed)
  t0 = time.perf_counter()
  with backward_of(backward):  # the step is traced (and compiled) here, once.
    state, metrics = step(state, ref, batch)
  loss = float(metrics["loss"])
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one_step():
    holder["state"], m = step(holder["state"], ref, batch)
    return m

  _timed(one_step)  # warm-up: the first call after compile
  steps = {"step": one_step}
  times: dict[str, list[float]] = {k: [] for k in (*steps, *matmuls)}
  counter.count, counter.active = 0, True
  for _ in range(args.reps):
    for key, (fn, _) in matmuls.items():
      times[key].append(min(_timed(fn) for _ in range(args.dot_calls)))
    for key, fn in steps.items():
      times[key].append(_timed(fn))
  counter.active = False
  traces = {}
  if args.trace_dir:  # one more step under the profiler: time by op kind.
    for key, fn in steps.items():
      log_dir = os.path.join(args.trace_dir, f"{name}_{key}")
      with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        _timed(fn)
      traces[key] = trace_summary.summarize(log_dir)
  med = {k: statistics.median(v) for k, v in times.items()}
  peaks = {k: f / med[k] for k, (_, f) in matmuls.items()}
  peak = max(peaks.values())
  count = flops_lib.rl_step_flops(config, episodes, length, args.logits_chunk)
  return {
      "config": name, "params": config.num_params(), "episodes": episodes, "length": length,
      "logits_chunk": args.logits_chunk, "remat": config.remat, "dtype": config.dtype,
      "backward": backward,
      "model_flops": count.model, "hardware_flops": count.hardware,
      "step_s": med["step"], "compile_s": compile_s, "peak_flops_s": peak,
      "peak_by_shape": peaks, "mfu": count.model / med["step"] / peak,
      "hfu": count.hardware / med["step"] / peak,
      "model_flops_s": count.model / med["step"], "recompiles": counter.count,
      "loss": loss, "times_s": times, "traces": traces}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| config | compute | backward | params | E x L | chunk | remat | model TFLOP "
           "| step s | GFLOP/s | peak GFLOP/s (shape) | MFU | HFU | recompiles |",
           "|---|---|---|---:|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
  for r in rows:
    shape = max(r["peak_by_shape"], key=r["peak_by_shape"].get).split()[0]
    lines.append(
        f"| {r['config']} | {r['dtype']} | {r['backward']} | {r['params'] / 1e6:.1f}M "
        f"| {r['episodes']} x {r['length']} "
        f"| {r['logits_chunk']} | {'yes' if r['remat'] else 'no'} "
        f"| {r['model_flops'] / 1e12:.3f} | {r['step_s']:.3f} "
        f"| {r['model_flops_s'] / 1e9:.1f} | {r['peak_flops_s'] / 1e9:.1f} ({shape}) "
        f"| {r['mfu']:.0%} | {r['hfu']:.0%} | {r['recompiles']} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default=",".join(CONFIGS),
                      help=f"comma-separated, from {sorted(CONFIGS)}")
  parser.add_argument("--shape", default="",
                      help="E x L for every config (default: per config, " + 
                      ", ".join(f"{k} {e}x{l}" for k, (e, l) in SHAPES.items()) + ")")
  parser.add_argument("--logits_chunk", type=int, default=128)
  parser.add_argument("--remat", action="store_true", help="rematerialise every layer")
  parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median)")
  parser.add_argument("--dot_calls", type=int, default=3,
                      help="matmul calls per repetition (the fastest counts)")
  parser.add_argument("--trace_dir", default="",
                      help="also profile one step per config here and print its op-kind table")
  parser.add_argument("--dtypes", default="float32",
                      help="compute dtype(s), comma-separated: float32, bfloat16")
  parser.add_argument("--backwards", default="row_major",
                      help="bf16 backward(s), comma-separated: row_major (the model's), "
                      "autodiff (jnp.einsum's; the A/B baseline); fp32 rows use row_major")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="smoke run: tiny, 4x32, 2 reps")
  parser.add_argument("--out", default="", help="write the JSON rows here")
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.shape, args.reps, args.dot_calls = "tiny", "4x32", 2, 1
  args.configs = args.configs.split(",")
  args.dtypes = args.dtypes.split(",")
  if set(args.dtypes) - {"float32", "bfloat16"}:
    parser.error(f"--dtypes must name float32 and/or bfloat16, got {args.dtypes}.")
  args.backwards = args.backwards.split(",")
  if set(args.backwards) - {"row_major", "autodiff"}:
    parser.error(f"--backwards must name row_major and/or autodiff, got {args.backwards}.")
  if args.backwards != ["row_major"] and "bfloat16" not in args.dtypes:
    parser.error("--backwards autodiff compares bf16 backwards; add --dtypes bfloat16 "
                 "(fp32 contractions are jnp.einsum either way).")
  unknown = sorted(set(args.configs) - set(CONFIGS))
  if unknown:
    parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}.")
  if args.shape:
    try:
      args.shape = tuple(int(x) for x in args.shape.split("x"))
      assert len(args.shape) == 2 and min(args.shape) >= 2
    except (ValueError, AssertionError):
      parser.error(f"--shape must be ExL with E, L >= 2 (e.g. 8x128), got {args.shape!r}.")
  if args.reps < 1 or args.dot_calls < 1:
    parser.error("--reps and --dot_calls must be >= 1.")
  return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  counter = CompileCounter()
  rows = []
  for name in args.configs:
    runs = [(d, b) for d in args.dtypes
            for b in (args.backwards if d == "bfloat16" else ["row_major"])]
    for dtype, backward in runs:
      rows.append(bench_config(name, args, counter, dtype, backward))
      r = rows[-1]
      print(f"{name} {dtype} {backward}: step {r['step_s']:.3f} s, MFU {r['mfu']:.1%}, "
            f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
  print("python -m benchmarks.train_step " + " ".join(argv))
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs ({hostinfo.describe()}), "
        f"{jax.devices()[0].platform}")
  print(markdown_table(rows))
  for r in rows:
    for key, summary in r["traces"].items():
      print(f"\ntrace of one {key}, {r['config']}:\n" + trace_summary.markdown(summary))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
