"""The study's statistics against independent oracles: exact bootstrap enumeration, scipy."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from score_jax.experiments import stats


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
  values = [0.1, 0.25, 0.3, 0.7]
  # Every one of the 4^4 equally likely resamples: the exact bootstrap distribution of the mean.
  exact = np.sort([np.mean(c) for c in itertools.product(values, repeat=len(values))])
  mean, lo, hi = stats.bootstrap_ci(values, resamples=200_000)
  assert mean == pytest.approx(0.3375)
  # The Monte-Carlo quantiles sit within one step of the exact 2.5% / 97.5% quantiles.
  assert np.quantile(exact, 0.02) <= lo <= np.quantile(exact, 0.03)
  assert np.quantile(exact, 0.97) <= hi <= np.quantile(exact, 0.98)


def test_bootstrap_edge_cases():
  assert stats.bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
  assert stats.bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))
  with pytest.raises(ValueError, match="NaN"):
    stats.bootstrap_ci([0.1, float("nan")])
  with pytest.raises(ValueError, match="non-empty"):
    stats.bootstrap_ci([])


@pytest.mark.parametrize("diffs", [[1, 2, 3, -1, 4, 5, 0, 2], [1] * 8, [-1, 1], [0.5, -0.1, -0.2],
                                   [1, 1, 1, 1, 1, 1, 1, -1]])
def test_sign_test_matches_scipy_binomtest(diffs):
  pos, neg, p = stats.sign_test(diffs)
  assert (pos, neg) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
  assert p == pytest.approx(scipy_stats.binomtest(pos, pos + neg, 0.5).pvalue)


def test_sign_test_all_ties_and_paired_verdicts():
  assert stats.sign_test([0, 0]) == (0, 0, 1.0)
  better = stats.paired({s: 0.5 + 0.01 * s for s in range(8)}, {s: 0.3 for s in range(8)})
  assert better["seeds"] == 8 and better["positive"] == 8 and better["lo"] > 0
  assert better["p"] == pytest.approx(2 / 2 ** 8)
  assert stats.verdict(better) == "SCoRe better"
  worse = stats.paired({0: 0.1, 1: 0.2}, {0: 0.3, 1: 0.4, 5: 0.9})  # seed 5 unpaired: dropped
  assert worse["seeds"] == 2 and stats.verdict(worse) == "SCoRe worse"
  mixed = stats.paired({0: 0.1, 1: 0.5}, {0: 0.3, 1: 0.2})
  assert stats.verdict(mixed) == "no detectable difference"
  assert stats.verdict(stats.paired({0: 1.0}, {0: 0.0})) == "one seed: no verdict"
  with pytest.raises(ValueError, match="share no seed"):
    stats.paired({0: 1.0}, {1: 1.0})
