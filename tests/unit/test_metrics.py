import math

import numpy as np
import pytest

from optimizer.core.stats import quantile_ci
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import Dist, summarize


def _ok(i: int, ttft: float, latency: float, itl: list[float], tokens: int) -> RequestResult:
    return RequestResult(index=i, ok=True, ttft=ttft, latency=latency, itl=itl, output_tokens=tokens, prompt_tokens=10)


def test_percentiles_match_numpy_on_known_samples():
    rng = np.random.default_rng(1)
    lat = rng.lognormal(0, 1, 500)
    d = Dist.of(list(lat))
    ms = lat * 1000
    assert d.n == 500
    assert d.p50 == pytest.approx(np.percentile(ms, 50))
    assert d.p90 == pytest.approx(np.percentile(ms, 90))
    assert d.p99 == pytest.approx(np.percentile(ms, 99))
    assert d.max == pytest.approx(ms.max())
    assert d.mean == pytest.approx(ms.mean())


def test_p99_of_1_to_100_is_99_01():
    d = Dist.of([x / 1000 for x in range(1, 101)])
    assert d.p99 == pytest.approx(99.01)


def test_empty_sample_is_nan_with_count_zero_never_zero():
    d = Dist.of([])
    assert d.n == 0 and math.isnan(d.p99) and math.isnan(d.p50) and math.isnan(d.mean)


def test_summary_of_all_failed_requests_has_nan_latency_and_throughput():
    res = [RequestResult(index=i, ok=False, error_kind="http_status") for i in range(4)]
    s = summarize(res, 2.0)
    assert s.n_ok == 0 and s.error_rate == 1.0 and s.errors == {"http_status": 4}
    assert math.isnan(s.output_tok_s) and math.isnan(s.e2e.p99) and math.isnan(s.ttft.p50)


def test_summary_counts_only_successful_tokens_and_pools_itl():
    res = [_ok(0, 0.1, 1.0, [0.1, 0.2], 3), _ok(1, 0.2, 2.0, [0.3], 2),
           RequestResult(index=2, ok=False, error_kind="timeout", output_tokens=0)]
    s = summarize(res, 4.0)
    assert s.output_tokens == 5
    assert s.output_tok_s == pytest.approx(5 / 4.0)
    assert s.req_s == pytest.approx(2 / 4.0)
    assert s.error_rate == pytest.approx(1 / 3)
    assert s.itl.n == 3
    assert s.itl.p50 == pytest.approx(200.0)
    assert s.e2e.p50 == pytest.approx(1500.0)


def test_quantile_ci_brackets_the_true_quantile_at_the_stated_rate():
    """Coverage of the order-statistic interval, checked by simulation (not a tautology)."""
    rng = np.random.default_rng(7)
    true_q = -np.log(1 - 0.99)  # P99 of Exp(1)
    hits = trials = 0
    for _ in range(400):
        lo, hi = quantile_ci(rng.exponential(1.0, 1000), 0.99, 0.95)
        trials += 1
        hits += lo <= true_q <= hi
    assert hits / trials >= 0.93


def test_quantile_ci_upper_bound_needs_enough_samples():
    assert math.isnan(quantile_ci(range(300), 0.99, 0.95)[1])
    assert not math.isnan(quantile_ci(range(368), 0.99, 0.95)[1])
    assert all(math.isnan(x) for x in quantile_ci([], 0.99))


def test_the_one_list_of_latency_metrics_is_every_slo_metric_and_every_distribution_of_a_summary():
    from optimizer.measures.metrics import LATENCY_METRICS, Dist, LoadSummary
    from optimizer.settings.choices import SloMetric

    assert LATENCY_METRICS == ("ttft", "itl", "e2e") and set(LATENCY_METRICS) == {m.value for m in SloMetric}
    s = LoadSummary(1, 1, 0.0)
    assert all(isinstance(s.dist(m), Dist) for m in LATENCY_METRICS)
    with pytest.raises(KeyError, match="latency metric 'tpot': the summary holds ttft, itl, e2e"):
        s.dist("tpot")
