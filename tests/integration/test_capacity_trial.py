"""A load.mode=capacity trial's measurement (optimizer/trial/capacity_load.py) against the loaded fake
server: each probe reported as an intermediate value, the measurement taken at the capacity, the score."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from optimizer.capacity import CapacityResult, LimitedBy, ProbeResult
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.workload import RequestSet
from optimizer.settings.config import CapacityConfig, LoadConfig, ModelConfig, SloConfig, WorkloadConfig
from optimizer.testing.loaded_server import LoadModel, spawn_loaded_server
from optimizer.trial.capacity_load import Incumbent, measure_capacity, outcome_of

pytestmark = pytest.mark.timeout(180)
LAW = LoadModel(base_ms=5.0, k=2.0, prefill_ms=10.0)  # E2E = 90 + 45 C ms
RS = RequestSet.build(WorkloadConfig(name="t", prompt_tokens=16, output_tokens=16),
                      ModelConfig(name="fake", vocab_size=32000))


def _cfg(compose, p99_ms: float):
    return dataclasses.replace(compose(), load=LoadConfig(num_requests=24, warmup_requests=4, p99_sizing="off",
                                                          capacity=CapacityConfig(max_factor=2.0)),
                               slo=SloConfig(metric="e2e", p99_ms=p99_ms))


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


def test_a_ladder_that_cannot_reach_the_incumbent_stops_early_and_says_so(compose):
    # capacity 6 (E2E 360 ms at 6, 405 at 7); the incumbent (trial 3) carries 8 and its lower bound is out of
    # reach: once the failure at 8 is certain, this config's upper bound (its tok/s at or below 8) is below
    # that bar, so the search stops there instead of bisecting 6 and 7
    cfg = _cfg(compose, 382.5)
    reads: list[int] = []

    def incumbent():
        reads.append(1)
        return Incumbent(3, 8.0, 1e9)

    with spawn_loaded_server(LAW) as url:
        cm = asyncio.run(measure_capacity(cfg, Endpoint(url, "fake"), RS, None, 4, "[t]", incumbent=incumbent))
    r = cm.capacity.result
    assert [(p.load, p.passed) for p in r.probes] == [(1, True), (2, True), (4, True), (8, False)]
    assert r.stopped_early and r.limited_by is LimitedBy.EARLY_STOP and r.early_stop_load == 8 and r.value == 4
    assert cm.capacity.incumbent_trial == 3 and reads  # read while searching, after the failure at 8
    attrs = cm.capacity.to_attrs()
    assert attrs["cap_stopped_early"] is True and attrs["cap_below_incumbent"] == 8 and attrs["cap_incumbent_trial"] == 3
    assert cm.capacity.limit_label().startswith("early stop: value <= ") and "< incumbent #3 lower bound" in \
        cm.capacity.limit_label()
    assert attrs["cap_value_is_bound"] is True and attrs["cap_upper_value"] < attrs["cap_incumbent_low_value"]
    # the sampler still learns: the throughput at the highest load that passed, feasible
    assert cm.outcome.feasible and cm.outcome.value == r.output_tok_s == r.at_capacity.output_tok_s > 0

    # switched off, or no incumbent yet, or one this config may beat: the search runs to the end
    off = dataclasses.replace(cfg, load=dataclasses.replace(
        cfg.load, capacity=dataclasses.replace(cfg.load.capacity, early_stop=False)))
    with spawn_loaded_server(LAW) as url:
        full = [asyncio.run(measure_capacity(c, Endpoint(url, "fake"), RS, None, 4, "[t]", incumbent=inc))
                for c, inc in ((off, incumbent), (cfg, lambda: None), (cfg, lambda: Incumbent(0, 5.0)))]
    for cm in full:
        r = cm.capacity.result
        assert not r.stopped_early and 8 in [p.load for p in r.probes] and 6 in [p.load for p in r.probes]
        assert r.limited_by is LimitedBy.SLO and cm.capacity.incumbent_trial is None
        assert cm.capacity.to_attrs()["cap_stopped_early"] is False and "cap_below_incumbent" not in cm.capacity.to_attrs()


def test_an_auto_slo_is_calibrated_by_the_baselines_unloaded_run_before_its_search(compose):
    # slo.p99_ms=auto, factor 2: the baseline's median at one user (E2E 135 ms) x 2 = ~270 ms, so the capacity
    # is where 90 + 45 C ms crosses it: 4 users (5 would take 315 ms)
    cfg = dataclasses.replace(_cfg(compose, 382.5), slo=SloConfig(metric="e2e", p99_ms="auto", auto_factor=2.0))
    with spawn_loaded_server(LAW) as url:
        cm = asyncio.run(measure_capacity(cfg, Endpoint(url, "fake"), RS, None, 4, "[t]", calibrates=True))
    cal, r = cm.calibration, cm.capacity.result
    assert cal is not None and cal.users == 1 and cal.n_ok == 101 and cal.factor == 2.0
    assert 200 <= cal.slo_ms <= 400 and abs(cal.slo_ms - 2 * cal.base_p50_ms) <= 1
    assert r.slo_p99_ms == cal.slo_ms  # every probe judged by the calibrated limit
    assert r.probes[0].load == 1 and r.probes[0].n_requests == 24  # the search's own first probe
    assert r.feasible and 3 <= r.value <= 5, [(p.load, p.p99_ms) for p in r.probes]
    assert cm.warmup_s > 0 and cm.load_s > 0
    # another trial of the study reads the stored limit (waiting for it as in fixed-load mode)
    with spawn_loaded_server(LAW) as url:
        other = asyncio.run(measure_capacity(cfg, Endpoint(url, "fake"), RS, None, 4, "[t]",
                                             calibration=(lambda: cal, lambda: True)))
    assert other.calibration is None and other.capacity.result.slo_p99_ms == cal.slo_ms
