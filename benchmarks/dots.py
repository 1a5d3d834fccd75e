"""Plain jitted dots, fp32 vs bf16 operands (fp32 or bf16 results) vs torch: the CPU's roofline.

XLA:CPU reaches its bf16 units only when a bf16 dot accumulates in fp32
(`preferred_element_type=float32`, what `model.dtype="bfloat16"` uses); the backward
pass's transposed shapes (`g·wᵀ`, `xᵀ·g`) may not. One process, calls interleaved
across variants, best of `--reps` (other load hits every variant alike).

  python -m benchmarks.dots             # the table in BENCHMARKS.md
  python -m benchmarks.dots --quick     # smoke run (small shapes, seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import hostinfo

# name -> (einsum, lhs shape, rhs shape): the forward x·w, then the two backward shapes.
SHAPES = {
    "2048^3": ("mk,kn->mn", (2048, 2048), (2048, 2048)),
    "x.w 1024x640x5120": ("mk,kn->mn", (1024, 640), (640, 5120)),
    "g.wT 1024x5120x640": ("mn,kn->mk", (1024, 5120), (640, 5120)),
    "xT.g 640x1024x5120": ("mk,mn->kn", (1024, 640), (1024, 5120)),
}
QUICK = {"x.w 64x32x128": ("mk,kn->mn", (64, 32), (32, 128))}
VARIANTS = ("jax fp32", "jax bf16->f32", "jax bf16->bf16", "torch fp32", "torch bf16")


def flop_count(eq: str, lhs: Sequence[int], rhs: Sequence[int]) -> float:
  """2 x the product of every distinct axis size of a two-operand einsum."""
  inputs = eq.split("->")[0].split(",")
  sizes = dict(zip(inputs[0], lhs)) | dict(zip(inputs[1], rhs))
  return 2.0 * float(np.prod(list(sizes.values())))


def bench(shapes: dict, reps: int, threads: int) -> list[dict]:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  rows = []
  for name, (eq, sa, sb) in shapes.items():
    a = jax.random.normal(jax.random.key(0), sa)
    b = jax.random.normal(jax.random.key(1), sb)
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    ta16, tb16 = ta.bfloat16(), tb.bfloat16()
    plain = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y))
    to_f32 = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y,
                                                    preferred_element_type=jnp.float32))
    calls = {"jax fp32": lambda: plain(a, b).block_until_ready(),
             "jax bf16->f32": lambda: to_f32(a16, b16).block_until_ready(),
             "jax bf16->bf16": lambda: plain(a16, b16).block_until_ready(),
             "torch fp32": lambda: torch.einsum(eq, ta, tb),
             "torch bf16": lambda: torch.einsum(eq, ta16, tb16)}
    for call in calls.values():
      call()  # compile / warm up
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(reps):
      for key, call in calls.items():
        start = time.perf_counter()
        call()
        best[key] = min(best[key], time.perf_counter() - start)
    flops = flop_count(eq, sa, sb)
    rows.append({"shape": name, **{k: flops / best[k] / 1e9 for k in VARIANTS}})
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| shape | " + " | ".join(VARIANTS) + " |", "|---|" + "---:|" * len(VARIANTS)]
  lines += ["| " + r["shape"] + " | " + " | ".join(f"{r[k]:.0f}" for k in VARIANTS) + " |"
            for r in rows]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.dots", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--threads", type=int, default=2, help="torch threads")
  parser.add_argument("--quick", action="store_true", help="one small shape, 2 reps")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.reps < 1:
    parser.error(f"--reps must be >= 1, got {args.reps}.")
  rows = bench(QUICK if args.quick else SHAPES, 2 if args.quick else args.reps, args.threads)
  print(f"GFLOP/s; CPU {hostinfo.describe()}, jax {jax.__version__}")
  print(markdown(rows))
  return rows


if __name__ == "__main__":
  main()
