"""The Capacity record part: a capacity search stored in a trial's user attrs and read back."""

from __future__ import annotations

import json
import math

import optuna

from optimizer.capacity import CapacityResult, LimitedBy, ProbeResult
from optimizer.record import BLOB_KEYS, Capacity, TrialRecord

NAN = math.nan


def _probe(load: float, passed: bool, p99: float) -> ProbeResult:
    return ProbeResult(load=load, passed=passed, failed_on="" if passed else "slo", output_tok_s=10.0 * load,
                       req_s=load / 3, p99_ms=p99, p99_low_ms=p99 * 0.9, p99_high_ms=NAN, judged_p99_ms=p99,
                       n_requests=40, n_ok=40, error_rate=0.0, errors={"timeout": 0},
                       constraints={"slo": p99 / 1000 - 1, "errors": -0.01}, kv_usage_peak=NAN, seed=7)


def capacity_result(feasible: bool = True) -> CapacityResult:
    probes = (_probe(1, True, 300.0), _probe(2, True, 600.0), _probe(3, feasible, 900.0 if feasible else 1200.0),
              _probe(4, False, 1300.0))
    if not feasible:
        probes = tuple(_probe(p.load, False, 1100.0 + p.load) for p in probes[:1])
    best = probes[2] if feasible else None
    return CapacityResult(
        control="concurrency", value=best.load if best else NAN, output_tok_s=best.output_tok_s if best else NAN,
        req_s=best.req_s if best else NAN, p99_ms=best.p99_ms if best else NAN,
        limited_by=LimitedBy.SLO, feasible=feasible,
        constraints=dict((best or probes[0]).constraints), probes=probes, cap=8.0, resolution=0.05,
        stop_reason="3 users passed, 4 users broke the P99 limit", duration_s=12.5, slo_metric="e2e",
        slo_p99_ms=1000.0)


def test_capacity_round_trips_through_attrs_with_flat_columns():
    part = Capacity(capacity_result())
    attrs = json.loads(json.dumps(part.to_attrs()))  # what the storage keeps: JSON values only
    assert attrs["cap_value"] == 3 and attrs["cap_control"] == "concurrency"
    assert attrs["cap_limited_by"] == "slo" and attrs["cap_n_probes"] == 4
    assert attrs["cap_p99_ms"] == 900.0 and attrs["cap_feasible"] is True
    back = Capacity.from_attrs(attrs)
    assert back is not None
    r, o = back.result, part.result
    assert (r.control, r.value, r.limited_by, r.cap, r.stop_reason) == (o.control, o.value, o.limited_by, o.cap,
                                                                         o.stop_reason)
    assert [p.load for p in r.probes] == [1, 2, 3, 4]
    assert r.probes[0].seed == 7 and math.isnan(r.probes[0].p99_high_ms) and math.isnan(r.probes[0].kv_usage_peak)
    assert r.to_json() == o.to_json()


def test_an_infeasible_search_stores_nulls_not_zeros_and_reads_back_nan():
    attrs = json.loads(json.dumps(Capacity(capacity_result(feasible=False)).to_attrs()))
    assert attrs["cap_value"] is None and attrs["cap_p99_ms"] is None and attrs["cap_feasible"] is False
    back = Capacity.from_attrs(attrs)
    assert back is not None and math.isnan(back.result.value) and not back.result.feasible


def test_a_trial_record_carries_the_part_and_old_attrs_have_none():
    rec = TrialRecord(capacity=Capacity(capacity_result()))
    attrs = rec.to_attrs()
    assert "capacity_json" in BLOB_KEYS  # not a table column; the cap_* columns are
    back = TrialRecord.from_attrs(attrs)
    assert back.capacity is not None and back.capacity.result.value == 3
    assert TrialRecord.from_attrs({"n_requests": 3}).capacity is None
    assert Capacity.from_attrs({"capacity_json": "{not json"}) is None


def test_the_part_survives_an_optuna_storage_round_trip():
    study = optuna.create_study(storage="sqlite:///:memory:")
    t = study.ask()
    for k, v in TrialRecord(capacity=Capacity(capacity_result())).to_attrs().items():
        t.set_user_attr(k, v)
    study.tell(t, 1.0)
    back = TrialRecord.from_trial(study.trials[0])
    assert back.capacity is not None and back.capacity.result.to_json() == capacity_result().to_json()


def test_a_search_stopped_early_against_the_incumbent_round_trips_and_says_so():
    import dataclasses

    r = dataclasses.replace(capacity_result(), limited_by=LimitedBy.EARLY_STOP, early_stop_load=6.0)
    part = Capacity(r, incumbent_trial=2)
    attrs = json.loads(json.dumps(part.to_attrs()))
    assert attrs["cap_stopped_early"] is True and attrs["cap_below_incumbent"] == 6.0
    assert attrs["cap_incumbent_trial"] == 2 and attrs["cap_limited_by"] == "early_stop"
    back = Capacity.from_attrs(attrs)
    assert back == part and back.stopped_early and back.result.early_stop_load == 6.0
    assert part.limit_label() == "early stop: < 4 (incumbent #2 carries 6)"  # 4: its lowest failure
    # a search that ran to the end: no incumbent, NaN early_stop_load, the plain label
    plain = Capacity.from_attrs(json.loads(json.dumps(Capacity(capacity_result()).to_attrs())))
    assert plain is not None and not plain.stopped_early and plain.incumbent_trial is None
    assert math.isnan(plain.result.early_stop_load) and plain.limit_label() == "slo"
