"""Seed-level statistics of the study: bootstrap intervals, paired differences, the sign test.

The unit of replication is the seed (its own warm-started base, data order and sampling
keys), so every interval here resamples seeds, never problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float, float]:
  """(mean, lo, hi): the mean and its percentile-bootstrap interval over the values (seeds).

  One value has no spread to resample: its interval is the value itself.
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"bootstrap_ci needs a non-empty 1-D sequence, got shape {v.shape}.")
  if np.isnan(v).any():
    raise ValueError("bootstrap_ci got NaN values: a run is missing a metric.")
  rng = np.random.default_rng(seed)
  means_r = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
  lo, hi = np.quantile(means_r, [(1 - level) / 2, (1 + level) / 2])
  return float(v.mean()), float(lo), float(hi)


def sign_test(differences: Sequence[float]) -> tuple[int, int, float]:
  """(positives, negatives, two-sided exact p) of the sign test; zero differences are dropped."""
  d = np.asarray(differences, np.float64)
  pos, neg = int((d > 0).sum()), int((d < 0).sum())
  n = pos + neg
  if n == 0:
    return 0, 0, 1.0
  tail = sum(math.comb(n, i) for i in range(min(pos, neg) + 1)) / 2 ** n
  return pos, neg, min(1.0, 2 * tail)


def paired(a_by_seed: dict[int, float], b_by_seed: dict[int, float]) -> dict[str, float]:
  """SCoRe − X style paired comparison over the seeds both have: mean, interval, sign test."""
  seeds = sorted(set(a_by_seed) & set(b_by_seed))
  if not seeds:
    raise ValueError("paired(): the two methods share no seed.")
  d = [a_by_seed[s] - b_by_seed[s] for s in seeds]
  mean, lo, hi = bootstrap_ci(d)
  pos, neg, p = sign_test(d)
  return {"mean": mean, "lo": lo, "hi": hi, "positive": pos, "negative": neg, "p": p,
          "seeds": len(seeds)}


def verdict(comparison: dict[str, float]) -> str:
  """The pre-registered reading of a paired interval (RESULTS.md)."""
  if comparison["seeds"] < 2:
    return "one seed: no verdict"
  if comparison["lo"] > 0:
    return "SCoRe better"
  if comparison["hi"] < 0:
    return "SCoRe worse"
  return "no detectable difference"
