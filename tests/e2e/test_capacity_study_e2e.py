"""A load.mode=capacity study end to end: the real CLI, real vLLM (CPU build) servers, a real SQLite
study of two trials with small caps, and the report that reads it.

The first command runs under ``study.budget=0.5``: the baseline starts (nothing timed yet: the first
trial always starts), after it the next trial would not fit in 30 s, so the command ends with one
trial and records why; the same study resumed without a budget finishes its second trial. (The early
ladder stop against the incumbent is tested against the loaded fake server in
tests/integration/test_capacity_trial.py: on this 2-core CPU build the TTFT of a probe's first
requests spiked to 3.6-6.4 s at one user, so no absolute limit separated a queued config from the
baseline reliably.)"""

from __future__ import annotations

import json

import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from tests.support.study_runner import StudyDir

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1500)]

CAPACITY = ["load.mode=capacity", "load.capacity.max=4", "load.capacity.max_probes=4", "load.capacity.min_windows=2",
            "load.capacity.lengthen=1", "load.num_requests=8", "load.warmup_requests=2", "load.p99_sizing=off",
            "slo.metric=e2e", "slo.p99_ms=120000"]


def test_a_two_trial_capacity_study_records_every_probe_and_reports_the_curves(tmp_path):
    sd = StudyDir(tmp_path)
    r = sd.run("study.n_trials=3", "study.budget=0.5", *CAPACITY)
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # the budget ended it before n_trials
    stopped = study.user_attrs["stopped"]
    assert stopped["rule"] == "budget" and "budget" in stopped["detail"], stopped
    out = r.stderr + r.stdout
    assert "stopping the study (study.budget)" in out and "1/3 done, 2 left" in out and "of 30 s left" in out

    r = sd.run("study.n_trials=2", *CAPACITY)  # resumed: the budget counts each command's own time
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    assert study.user_attrs["stopped"]["rule"] == "n_trials"
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    measured = [t for t in complete if TrialRecord.from_trial(t).measured]
    assert any(t.user_attrs.get("kind") == "baseline" for t in measured)  # vLLM's defaults always start here
    for t in measured:
        rec = TrialRecord.from_trial(t)
        assert rec.capacity is not None, sorted(t.user_attrs)
        res = rec.capacity.result
        # a 120 s limit holds at every load of a tiny model: doubling 1, 2, 4 all pass, stopped by the cap
        assert [p.load for p in res.probes] == [1.0, 2.0, 4.0] and all(p.passed for p in res.probes)
        assert res.value == 4 and res.limited_by.value == "cap" and res.cap == 4
        assert all(p.n_requests >= 8 and p.output_tok_s > 0 for p in res.probes)
        assert t.user_attrs["cap_value"] == 4 and t.user_attrs["cap_n_probes"] == 3
        # the probes are the trial's intermediate values; its value is the throughput at the capacity
        assert sorted(t.intermediate_values) == [0, 1, 2]
        assert t.value == pytest.approx(res.output_tok_s) and t.user_attrs["output_tok_s"] == pytest.approx(t.value)
        assert rec.measurement is not None and rec.measurement.summary.n_requests == res.at_capacity.n_requests
        assert json.loads(t.user_attrs["capacity_json"])["probes"][0]["load"] == 1
    index = next((tmp_path / "reports").rglob("index.html"))
    page = index.read_text()
    assert 'id="fig-capacity_curves"' in page and 'id="fig-capacity_bars"' in page
    assert "carries 4 concurrent users" in page and "capacity (users)" in page
    csv = (index.parent / "trials.csv").read_text().splitlines()[0].split(",")
    assert {"cap_value", "cap_limited_by", "cap_n_probes"} <= set(csv)
