"""Smoke run of benchmarks/verifiers.py (so CI catches a broken benchmark script)."""

from benchmarks import verifiers


def test_verifiers_benchmark_quick():
  results = verifiers.main(["--quick"])
  assert results["math_checks_per_s_1_thread_warm"] > 0
  assert results["programs_per_s_1_workers"] > 0
