"""The foundation, end to end: the real CLI, a real vLLM (CPU build) server, a real SQLite study."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from optimizer.errors import FailureReason
from optimizer.record import TrialRecord
from optimizer.reporting.data import build_report_data
from tests.support.study_runner import StudyDir

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SECRET = "sk-test-e2e-5b0c1d"


def _snapshot(study):
    return {t.number: (t.state, t.value, t.params, dict(t.user_attrs), t.datetime_complete)
            for t in study.get_trials(deepcopy=True) if t.state == TrialState.COMPLETE}


def test_two_trial_study_then_resume_to_three(tmp_path):
    sd = StudyDir(tmp_path)
    env = sd.env(E2E_KEY=SECRET)
    r = sd.run("study.n_trials=2", "server.api_key_env=E2E_KEY", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    baseline = [t for t in complete if t.user_attrs.get("kind") == "baseline"]
    assert len(baseline) == 1 and baseline[0].number == 0
    # the baseline (vLLM's defaults on the CPU demo) always starts: a study that measured nothing
    # must not pass. Another config may fail to start; then it says why, with a known reason.
    measured = [t for t in complete if TrialRecord.from_trial(t).measured]
    assert baseline[0] in measured, baseline[0].user_attrs
    for t in complete:
        a = t.user_attrs
        assert set(t.constraints) == {"slo", "errors", "startup", "memory", "quality"}  # quality.mode=gate
        if t not in measured:
            rec = TrialRecord.from_trial(t)
            assert rec.failure is not None and rec.failure.reason != FailureReason.OTHER, a
            continue
        assert t.value > 0 and a["output_tok_s"] == pytest.approx(t.value, rel=1e-3)
        assert a["n_ok"] == 24 and a["error_rate"] == 0.0
        assert math.isfinite(a["e2e_p99"]) and math.isfinite(a["ttft_p99"]) and math.isfinite(a["itl_p99"])
        assert a["vllm_version"] == "0.32.0"
        assert a["server_command"].split()[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert "--api-key" not in a["server_command"]
        for phase in ("t_start_s", "t_warmup_s", "t_load_s", "t_stop_s"):
            assert a[phase] >= 0
        assert a["srv_generation_tokens"] == a["output_tokens"] + 4 * 16  # the warm-up's tokens too
    assert "best:" in r.stderr or "No config met the SLO" in r.stderr
    assert "[trial 1 | 2/2]" in r.stderr
    # the report reads the same study: its numbers are the database's
    d = build_report_data(study.study_name, study.trials, study.user_attrs)
    for info in d.trials:
        t = study.trials[info.number]
        if t in measured:
            assert info.throughput == pytest.approx(t.value) and info.measured
            assert info.p99 == pytest.approx(t.user_attrs["e2e_p99"])
    # slo.p99_ms=auto (the demo's default): the baseline's P99 x 1.5, stored with the study
    cal = study.user_attrs["slo_calibration"]
    assert cal["trial"] == 0 and cal["slo_ms"] == pytest.approx(1.5 * baseline[0].user_attrs["e2e_p99"], abs=1)
    assert baseline[0].constraints["slo"] == pytest.approx(baseline[0].user_attrs["e2e_p99"] / cal["slo_ms"] - 1,
                                                           abs=1e-3)

    before = _snapshot(study)
    r = sd.run("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    after = _snapshot(study)
    assert len(after) == 3
    for n, snap in before.items():
        assert after[n] == snap  # resumed: earlier trials untouched
    assert "2 of 3 trials finished" in r.stderr
    assert "SLO calibrated on this host" in r.stderr and study.user_attrs["slo_calibration"] == cal  # reused
    # a third run with the same total starts nothing and changes nothing
    r = sd.run("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    assert r.returncode == 0 and _snapshot(sd.study()) == after
    assert "starting server" not in r.stderr

    # the API key never lands in the database, the logs or the report
    for path in [sd.db, *tmp_path.rglob("*.log"), *tmp_path.rglob("*.html"), *tmp_path.rglob("*.txt"),
                 *tmp_path.rglob("*.yaml"), *tmp_path.rglob("*.csv")]:
        assert SECRET.encode() not in path.read_bytes(), path
