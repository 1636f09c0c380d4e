"""Summaries against numpy on known samples, and how many requests an honest P99 needs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.core.stats import _binom_cdf, min_samples_for_upper_bound, quantile_ci
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize


def _results(seed: int, n: int, failed: int = 0) -> list[RequestResult]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ttft = float(rng.gamma(2.0, 0.05))
        itl = [float(x) for x in rng.exponential(0.02, 15)]
        out.append(RequestResult(index=i, ok=True, ttft=ttft, latency=ttft + sum(itl), itl=itl, output_tokens=16,
                                 prompt_tokens=100, chunks=16))
    out += [RequestResult(index=n + k, ok=False, error_kind=("stalled", "malformed")[k % 2]) for k in range(failed)]
    return out


def test_every_distribution_matches_numpy_and_failures_are_left_out():
    res = _results(0, 400, failed=5)
    s = summarize(res, 10.0)
    ok = [r for r in res if r.ok]
    for name, values in (("ttft", [r.ttft for r in ok]), ("e2e", [r.latency for r in ok]),
                         ("itl", [x for r in ok for x in r.itl])):
        d = s.dist(name)
        ms = np.asarray(values) * 1000
        assert d.n == ms.size
        for got, q in ((d.p50, 50), (d.p90, 90), (d.p99, 99)):
            assert got == pytest.approx(np.percentile(ms, q))
        lo, hi = quantile_ci(ms, 0.99)
        assert (d.p99_low, d.p99_high) == (pytest.approx(lo), pytest.approx(hi))
        assert d.p99_low <= d.p99 <= d.p99_high
    assert s.errors == {"stalled": 3, "malformed": 2} and s.n_requests == 405
    assert s.output_tok_s == pytest.approx(400 * 16 / 10.0)
    assert s.tpot_mean_ms == pytest.approx(np.mean([(r.latency - r.ttft) / 15 for r in ok]) * 1000)


@pytest.mark.parametrize("q,conf", [(0.99, 0.95), (0.99, 0.99), (0.95, 0.95), (0.999, 0.9), (0.5, 0.95)])
def test_min_samples_is_exactly_where_the_upper_bound_appears(q: float, conf: float):
    n = min_samples_for_upper_bound(q, conf)
    assert math.isnan(quantile_ci(np.arange(n - 1.0), q, conf)[1])
    assert quantile_ci(np.arange(float(n)), q, conf)[1] == n - 1  # the sample maximum
    assert n == math.ceil(math.log((1 - conf) / 2) / math.log(q))  # the closed form


def test_asking_for_samples_above_the_bound_costs_more_and_delivers_them():
    base = min_samples_for_upper_bound(0.99, 0.95)
    n = min_samples_for_upper_bound(0.99, 0.95, above=3)
    assert n > base + 3 * 100
    hi = quantile_ci(np.arange(float(n)), 0.99, 0.95)[1]
    assert n - 1 - hi >= 3
    assert (n - 2) - quantile_ci(np.arange(float(n - 1)), 0.99, 0.95)[1] < 3  # and one fewer would not do


def test_binomial_cdf_matches_a_direct_sum():
    n, p = 50, 0.9
    direct = np.cumsum([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])
    assert np.allclose(_binom_cdf(n, p), direct, atol=1e-12)


def test_bad_arguments_are_refused_with_their_values():
    with pytest.raises(ValueError, match="q=1.5"):
        min_samples_for_upper_bound(1.5)
