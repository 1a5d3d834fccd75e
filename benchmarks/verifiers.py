"""Verifier throughput on this machine: math checks/s and sandboxed programs/s.

  python -m benchmarks.verifiers            # the run recorded in BENCHMARKS.md
  python -m benchmarks.verifiers --quick    # a smoke run

Math: `rewards.math.reward` over a realistic mix of MATH-style responses (Final
Answer form and \\boxed{}, half right, some unparseable), first pass (cold parse
caches) and second pass (warm), from 1 and 2 threads. Code: `rewards.code.execute_many`
over trivial MBPP-style programs (half pass, half fail) with 1 and 2 workers, plus
the plain-subprocess cost of `python -c pass` measured side by side as the floor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from score_jax.rewards import code as code_reward
from score_jax.rewards import math as math_reward

_GOLDS = ["\\frac{1}{2}", "42", "(1,2)", "[0,1)", "x^2+1", "\\sqrt{3}", "-7", "3\\pi", "12",
          "\\text{odd}"]
_PREDS = ["0.5", "42", "(2,1)", "[0,1]", "1+x^2", "\\sqrt 3", "7", "3\\pi", "1,2", "odd"]


def math_responses(n: int) -> list[tuple[str, str]]:
  out = []
  for i in range(n):
    gold, pred = _GOLDS[i % len(_GOLDS)], _PREDS[(i * 7) % len(_PREDS)]
    if i % 3 == 0:
      text = f"Steps... Final Answer: The final answer is ${pred}$. I hope it is correct."
    elif i % 3 == 1:
      text = f"So the result is \\boxed{{{pred}}}."
    else:
      text = "I could not finish the computation" if i % 9 == 2 else f"\\boxed{{{gold}}}"
    out.append((text, gold))
  return out


def bench_math(n: int) -> dict[str, float]:
  items = math_responses(n)
  math_reward.reward(*items[0])  # start a worker outside the timing.
  results = {}
  for label in ("cold", "warm"):
    t0 = time.perf_counter()
    for text, gold in items:
      math_reward.reward(text, gold)
    results[f"math_checks_per_s_1_thread_{label}"] = n / (time.perf_counter() - t0)
  t0 = time.perf_counter()
  with ThreadPoolExecutor(2) as pool:
    list(pool.map(lambda tg: math_reward.reward(*tg), items))
  results["math_checks_per_s_2_threads_warm"] = n / (time.perf_counter() - t0)
  return results


def bench_code(n: int) -> dict[str, float]:
  programs = [f"def f(x):\n  return x + {i % 2}\n" for i in range(n)]
  tests = ["assert f(1) == 1\nassert f(2) == 2\n"] * n
  code_reward.execute(programs[0], tests[0])  # isolation detection outside the timing.
  results = {}
  for workers in (1, 2):
    t0 = time.perf_counter()
    out = code_reward.execute_many(programs, tests, max_workers=workers, timeout_s=10.0)
    results[f"programs_per_s_{workers}_workers"] = n / (time.perf_counter() - t0)
    assert sum(r.passed for r in out) == (n + 1) // 2, "half of the programs must pass"
  t0 = time.perf_counter()
  for _ in range(n):
    subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
  results["plain_subprocess_per_s"] = n / (time.perf_counter() - t0)
  results["sandbox_over_plain_subprocess"] = (results["plain_subprocess_per_s"]
                                              / results["programs_per_s_1_workers"])
  return results


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
  args = parser.parse_args(argv)
  n_math, n_code = (30, 6) if args.quick else (500, 60)
  results = {**bench_math(n_math), **bench_code(n_code)}
  print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=1))
  return results


if __name__ == "__main__":
  main()
