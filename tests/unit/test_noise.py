"""A trial's throughput interval (batch means) and the search's noise note."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from optimizer.loadgen.records import RequestResult
from optimizer.measures.objective import Outcome
from optimizer.record import Confirmation, ThroughputCI, TrialRecord
from optimizer.trial.noise import ranking_note, throughput_interval


def _closed_loop(rate_of, n: int = 200, concurrency: int = 4, tokens: int = 32, seed: int = 0) -> list[RequestResult]:
    """Requests as a closed loop sends them: each slot starts its next request when one ends."""
    rng = random.Random(seed)
    slots = [0.0] * concurrency
    out = []
    for i in range(n):
        k = min(range(concurrency), key=lambda j: slots[j])
        start = slots[k]
        latency = tokens / rate_of(start) * rng.uniform(0.8, 1.2)
        out.append(RequestResult(i, ok=True, t_start=start, ttft=0.05, latency=latency, output_tokens=tokens))
        slots[k] = start + latency
    return out


def test_a_steady_server_gets_a_narrow_interval_around_its_throughput():
    res = _closed_loop(lambda t: 50.0)
    ci = throughput_interval(res)
    duration = max(r.t_end for r in res) - min(r.t_start for r in res)
    overall = sum(r.output_tokens for r in res) / duration
    assert ci.batches == 10 and ci.low < overall < ci.high
    assert (ci.high - ci.low) / overall < 0.1


def test_a_server_whose_speed_drifts_gets_a_wider_interval():
    steady = throughput_interval(_closed_loop(lambda t: 50.0))
    drifting = throughput_interval(_closed_loop(lambda t: 50.0 if int(t / 10) % 2 else 25.0))
    assert (drifting.high - drifting.low) > 3 * (steady.high - steady.low)


def test_too_few_requests_give_no_interval_rather_than_a_false_one():
    ci = throughput_interval(_closed_loop(lambda t: 50.0, n=11))
    assert ci.batches == 2 and math.isnan(ci.low) and math.isnan(ci.high)


def _trial(number: int, value: float, low: float, high: float, confirmation: bool = False):
    rec = TrialRecord(outcome=Outcome(value, {"slo": -0.5}, True), throughput_ci=ThroughputCI(low, high, 10),
                      confirmation=Confirmation(0, 0, 0, 1000) if confirmation else None)
    return optuna.trial.create_trial(value=value, user_attrs=rec.to_attrs(), constraints={"slo": -0.5}), rec



def test_the_note_names_the_two_best_trials_when_their_intervals_overlap():
    t0, _ = _trial(0, 100.0, 95.0, 105.0)
    t0.number = 0
    _, new = _trial(1, 103.0, 99.0, 107.0)
    note = ranking_note([t0], 1, new)
    assert "trials 1 (103.0" in note and "and 0 (100.0" in note and "inside the measurement noise" in note


def test_no_note_when_the_best_is_clear_of_the_runner_up_or_the_new_trial_is_not_in_the_top_two():
    t0, _ = _trial(0, 100.0, 95.0, 105.0)
    t0.number = 0
    _, clear = _trial(1, 130.0, 120.0, 140.0)
    assert ranking_note([t0], 1, clear) == ""
    t1, _ = _trial(1, 130.0, 120.0, 140.0)
    t1.number = 1
    _, low = _trial(2, 50.0, 45.0, 102.0)
    assert ranking_note([t0, t1], 2, low) == ""


def test_confirmation_runs_are_not_search_trials_for_the_note():
    t0, _ = _trial(0, 100.0, 95.0, 105.0, confirmation=True)
    t0.number = 0
    _, new = _trial(1, 103.0, 99.0, 107.0)
    assert ranking_note([t0], 1, new) == ""


def test_the_new_record_parts_round_trip_through_user_attrs():
    rec = TrialRecord(throughput_ci=ThroughputCI(1.5, math.nan, 4, 0.9),
                      confirmation=Confirmation(7, 2, 1, 1002, False, 3))
    back = TrialRecord.from_attrs(rec.to_attrs())
    assert back.confirmation == rec.confirmation
    assert back.throughput_ci.low == 1.5 and math.isnan(back.throughput_ci.high) and back.throughput_ci.batches == 4
    assert TrialRecord.from_attrs({}).confirmation is None and TrialRecord.from_attrs({}).throughput_ci is None


@pytest.mark.parametrize("bad", ["study.confirm.top_k=-1", "study.confirm.repeats=1", "study.confirm.confidence=1.0",
                                 "study.confirm.seed_offset=0"])
def test_bad_confirm_settings_are_refused_naming_the_key(compose, bad):
    from optimizer.core.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        compose(bad)
