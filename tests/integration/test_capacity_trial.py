"""A load.mode=capacity trial's measurement (optimizer/study/capacity_trial.py) against the loaded fake
server: each probe reported as an intermediate value, the measurement taken at the capacity, the score."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from optimizer.capacity import CapacityResult, LimitedBy, ProbeResult
from optimizer.config import CapacityConfig, LoadConfig, ModelConfig, SloConfig, WorkloadConfig
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.workload import RequestSet
from optimizer.study.capacity_trial import measure_capacity, outcome_of
from optimizer.testing.loaded_server import LoadModel, spawn_loaded_server

pytestmark = pytest.mark.timeout(180)
LAW = LoadModel(base_ms=5.0, k=2.0, prefill_ms=10.0)  # E2E = 90 + 45 C ms
RS = RequestSet.build(WorkloadConfig(name="t", prompt_tokens=16, output_tokens=16),
                      ModelConfig(name="fake", vocab_size=32000))


def _cfg(compose, p99_ms: float):
    cfg = compose()
    cfg.load = LoadConfig(num_requests=24, warmup_requests=4, p99_sizing="off",
                          capacity=CapacityConfig(max_factor=2.0))
    cfg.slo = SloConfig(metric="e2e", p99_ms=p99_ms)
    return cfg


def test_a_capacity_trial_reports_every_probe_and_measures_at_the_capacity(compose):
    cfg = _cfg(compose, 382.5)
    reported: list[tuple[float, int]] = []
    with spawn_loaded_server(LAW) as url:
        cm = asyncio.run(measure_capacity(cfg, Endpoint(url, "fake"), RS, None, 4, "[t]",
                                          lambda v, s: reported.append((v, s))))
    r = cm.capacity.result
    assert r.cap == 8  # max_num_seqs 4 x max_factor 2
    assert r.feasible and 3 <= r.value <= 6, [(p.load, p.p99_ms) for p in r.probes]
    assert [s for _, s in reported] == list(range(len(r.probes)))
    assert sorted(v for v, _ in reported) == sorted(p.output_tok_s for p in r.probes)
    m = cm.measurement
    assert m is not None and m.summary.output_tok_s == r.output_tok_s  # the probe at the capacity
    assert m.summary.e2e.p99 == r.p99_ms <= 382.5 and m.latency_samples["e2e"] and m.telemetry.kv_usage_peak > 0
    assert cm.outcome.feasible and cm.outcome.value == r.output_tok_s
    assert set(cm.outcome.constraints) == {"slo", "errors", "startup", "memory"}
    assert cm.warmup_s > 0 and cm.load_s > 0


def test_a_config_failing_at_the_lowest_load_is_infeasible_measured_there(compose):
    cfg = _cfg(compose, 60.0)
    with spawn_loaded_server(LAW) as url:
        cm = asyncio.run(measure_capacity(cfg, Endpoint(url, "fake"), RS, None, 4, "[t]"))
    r = cm.capacity.result
    assert not r.feasible and [p.load for p in r.probes] == [1.0]
    assert cm.measurement is not None and cm.measurement.summary.e2e.p99 > 60
    assert not cm.outcome.feasible and cm.outcome.value == 0.0 and cm.outcome.constraints["slo"] > 0


def test_outcome_of_uses_the_configured_value():
    p = ProbeResult(load=4.0, passed=True, output_tok_s=400.0, req_s=2.0)
    r = CapacityResult("concurrency", 4.0, 400.0, 2.0, 100.0, LimitedBy.CAP, True, {"slo": -0.5, "errors": -0.01},
                       (p,))
    assert outcome_of(r, "req_s").value == 2.0 and outcome_of(r, "output_tok_s").value == 400.0
    bad = dataclasses.replace(r, feasible=False, value=math.nan, constraints={"slo": 0.3, "errors": -0.01})
    assert outcome_of(bad, "output_tok_s").value == 0.0 and not outcome_of(bad, "output_tok_s").feasible
