import math

from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import CONSTRAINT_KEYS, infeasible, score
from optimizer.settings.config import SloConfig


def _summary(latencies: list[float], failed: int = 0):
    res = [RequestResult(index=i, ok=True, ttft=0.01, latency=x, output_tokens=10) for i, x in enumerate(latencies)]
    res += [RequestResult(index=1000 + i, ok=False, error_kind="timeout") for i in range(failed)]
    return summarize(res, 1.0)


def test_every_outcome_sets_every_constraint_key():
    for o in (score(_summary([0.1] * 10), SloConfig(p99_ms=500)), infeasible(startup=True), infeasible(memory=True),
              score(_summary([], failed=3), SloConfig())):
        assert set(o.constraints) == set(CONSTRAINT_KEYS)
        assert all(not math.isnan(v) for v in o.constraints.values())


def test_slo_constraint_is_normalized_slack():
    o = score(_summary([0.2] * 50), SloConfig(metric="e2e", p99_ms=400))
    assert o.constraints["slo"] == -0.5 and o.feasible
    o = score(_summary([0.8] * 50), SloConfig(metric="e2e", p99_ms=400))
    assert o.constraints["slo"] == 1.0 and not o.feasible


def test_error_rate_over_limit_is_infeasible_even_when_fast():
    o = score(_summary([0.01] * 9, failed=1), SloConfig(p99_ms=1000, max_error_rate=0.05))
    assert o.constraints["errors"] > 0 and not o.feasible


def test_nothing_served_scores_zero_and_violates():
    o = score(_summary([], failed=5), SloConfig())
    assert o.value == 0.0 and o.constraints["slo"] > 0 and not o.feasible


def test_upper_bound_mode_uses_sample_max_when_too_few_samples():
    lat = [0.1] * 99 + [0.9]
    o = score(_summary(lat), SloConfig(p99_ms=500, use_upper_bound=True))
    assert not o.feasible  # the max (900 ms) stands in for the unbounded P99
    assert score(_summary(lat), SloConfig(p99_ms=500)).constraints["slo"] < 1.0
