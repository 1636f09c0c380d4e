"""The capacity search's pure parts around the search: judging a probe, sizing it, its prompts."""

from __future__ import annotations

import math

import pytest

from optimizer.capacity import default_cap, judge, probe_load_config, probe_workload
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.settings.config import CapacityConfig, LoadConfig, SloConfig, WorkloadConfig


def _results(latencies_s: list[float], failed: int = 0) -> list[RequestResult]:
    ok = [RequestResult(index=i, ok=True, ttft=0.01, latency=x, itl=[0.001], output_tokens=2, prompt_tokens=4)
          for i, x in enumerate(latencies_s)]
    return ok + [RequestResult(index=len(ok) + i, ok=False, error_kind="http_status") for i in range(failed)]


def test_a_probe_is_judged_like_a_trial_on_the_p99_and_the_error_rate():
    slo = SloConfig(metric="e2e", p99_ms=500.0, max_error_rate=0.05)
    fast = judge(4, summarize(_results([0.1] * 100), 10.0), slo, seed=7, telemetry={"srv_kv_usage_peak": 0.4,
                                                                                        "srv_preemptions": 2.0})
    assert fast.passed and fast.failed_on == "" and fast.load == 4.0 and fast.seed == 7
    assert fast.p99_ms == pytest.approx(100.0) and fast.constraints["slo"] == pytest.approx(-0.8)
    assert fast.kv_usage_peak == 0.4 and fast.preemptions == 2.0 and fast.n_requests == 100
    slow = judge(8, summarize(_results([0.1] * 90 + [0.9] * 10), 10.0), slo)
    assert not slow.passed and slow.failed_on == "slo" and slow.constraints["slo"] > 0
    assert math.isnan(slow.kv_usage_peak)  # no telemetry: NaN, not 0
    errs = judge(8, summarize(_results([0.1] * 90, failed=10), 10.0), slo)
    assert errs.failed_on == "errors" and errs.constraints["errors"] == pytest.approx(0.1 - 0.05)
    cut = judge(8, summarize(_results([0.1] * 10), 1.0), slo, aborted="8 requests in a row failed")
    assert not cut.passed and cut.failed_on == "aborted"


def test_upper_bound_judging_fails_a_probe_whose_point_p99_passes():
    lat = [0.1] * 985 + [0.45] * 5 + [0.9] * 10  # point P99 ~455 ms; its upper bound 900 ms
    s = summarize(_results(lat), 10.0)
    assert judge(1, s, SloConfig(p99_ms=500.0)).passed
    strict = judge(1, s, SloConfig(p99_ms=500.0, use_upper_bound=True))
    assert not strict.passed and strict.judged_p99_ms == pytest.approx(s.e2e.p99_high)


@pytest.mark.parametrize("lat,limit,straddles", [
    ([0.1] * 400, 500.0, False),  # far under
    ([1.0] * 400, 500.0, False),  # far over
    ([0.1] * 392 + [0.6] * 8, 500.0, True),  # the interval spans the limit
    ([0.1] * 20 + [0.45], 500.0, False),  # too few for an upper bound: the maximum (450 ms) stands in
    ([0.1] * 20 + [0.55], 500.0, True),
])
def test_straddling_means_the_p99_interval_holds_both_sides_of_the_limit(lat, limit, straddles):
    p = judge(1, summarize(_results(lat), 10.0), SloConfig(p99_ms=limit))
    assert p.straddles(limit) is straddles


def test_probe_size_warmup_and_mode_per_control():
    load = LoadConfig(num_requests=50, warmup_requests=16, capacity=CapacityConfig(min_windows=4))
    c = probe_load_config(load, "concurrency", 32, first=True)
    assert (c.mode, c.concurrency, c.num_requests, c.warmup_requests) == ("concurrency", 32, 128, 32)
    c = probe_load_config(load, "concurrency", 2, first=True)
    assert (c.num_requests, c.warmup_requests) == (50, 16)  # the first probe carries the server's warm-up
    c = probe_load_config(load, "concurrency", 2, first=False)
    assert c.warmup_requests == 2  # later: one window at the new level
    r = probe_load_config(load, "rate", 20.5, first=False)
    assert (r.mode, r.request_rate, r.num_requests, r.warmup_requests, r.concurrency) == ("rate", 20.5, 82, 21, 21)


def test_each_probe_run_draws_new_prompts_unless_prefixes_are_shared():
    w = WorkloadConfig(name="w", seed=3)
    assert [probe_workload(w, k).seed for k in range(3)] == [4, 5, 6]
    shared = WorkloadConfig(name="w", seed=3, shared_prefix_tokens=64)
    assert probe_workload(shared, 5).seed == 3


def test_default_cap_follows_max_num_seqs_or_the_clients_inflight_limit():
    assert default_cap(LoadConfig(), max_num_seqs=67) == 134
    assert default_cap(LoadConfig(max_inflight=100), max_num_seqs=256) == 100
    assert default_cap(LoadConfig(max_inflight=300)) == 300
    assert default_cap(LoadConfig(capacity=CapacityConfig(max=24))) == 24
    assert default_cap(LoadConfig(capacity=CapacityConfig(control="rate")), max_num_seqs=8) == 512


@pytest.mark.parametrize("override,needle", [
    ("load.capacity.control=users", "load.capacity.control"),
    ("load.capacity.start=0", "load.capacity.start"),
    ("load.capacity.start=1.5", "load.capacity.start"),
    ("load.capacity.max=0.5", "load.capacity.max"),
    ("load.capacity.resolution=0", "load.capacity.resolution"),
    ("load.capacity.max_probes=0", "load.capacity.max_probes"),
    ("load.capacity.lengthen=0.5", "load.capacity.lengthen"),
    ("load.capacity.value=tok", "load.capacity.value"),
    ("load.mode=capacit", "load.mode"),
])
def test_bad_capacity_settings_are_refused_naming_the_key(compose, override, needle):
    from optimizer.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        compose(override)
    assert needle in str(e.value)


def test_capacity_mode_composes(compose):
    cfg = compose("load.mode=capacity", "slo.p99_ms=2000", "load.capacity.control=rate", "load.capacity.start=0.5",
                  "load.capacity.max=40")
    assert cfg.load.mode == "capacity" and cfg.load.capacity.control == "rate" and cfg.load.capacity.max == 40
