"""The foundation, end to end: the real CLI, a real vLLM (CPU build) server, a real SQLite study.

One study carries two proofs with independent assertions (one study's server starts instead of two):
a two-trial study that resumes to three, and, between the two, an optimizer SIGKILLed and then
SIGTERMed while a trial's server starts, after which nothing is lost or left running."""

from __future__ import annotations

import math
import signal

import pytest
from optuna.trial import TrialState

from optimizer.core.errors import FailureReason
from optimizer.record import TrialRecord
from optimizer.reporting.data import build_report_data
from tests.support.study_runner import StudyDir, engine_started, orphans_after, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

SECRET = "sk-test-e2e-5b0c1d"


def _snapshot(study):
    return {t.number: (t.state, t.value, t.params, dict(t.user_attrs), t.datetime_complete)
            for t in study.get_trials(deepcopy=True) if t.state == TrialState.COMPLETE}


def test_two_trial_study_killed_mid_start_then_resumed_to_three(tmp_path, fault_ledger):
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
    # slo.p99_ms=auto (the demo's default): the baseline's median x 3, stored with the study
    cal = study.user_attrs["slo_calibration"]
    assert cal["trial"] == 0 and cal["basis"] == "p50"
    assert cal["slo_ms"] == pytest.approx(3 * baseline[0].user_attrs["e2e_p50"], abs=1)
    assert baseline[0].constraints["slo"] == pytest.approx(baseline[0].user_attrs["e2e_p99"] / cal["slo_ms"] - 1,
                                                           abs=1e-3)

    before = _snapshot(study)
    # 1. SIGKILL the optimizer while trial 2's server starts: its server group must die with it
    p = sd.popen("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    wait_for(lambda: engine_started(tmp_path), 300, "trial 2's server to start its engine")
    p.kill()
    p.wait()
    orphans = orphans_after(tmp_path)
    assert orphans == 0
    assert sd.study().trials[2].state == TrialState.RUNNING  # nobody could record it: the next run must
    fault_ledger.add("SIGKILL of the optimizer mid-start", survived=True, orphans=orphans)

    # 2. the next run records it as failed and retries its config; then SIGTERM during that retry
    p = sd.popen("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    wait_for(lambda: "starting server" in sd.output(), 120, "the retry to start")
    wait_for(lambda: engine_started(tmp_path), 300, "the retry's server engine")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143
    orphans = orphans_after(tmp_path)
    assert orphans == 0
    out = sd.output()
    assert "terminated (SIGTERM)" in out and "Traceback" not in out
    assert (tmp_path / "reports" / "t" / "index.html").exists()  # the report is still written
    study = sd.study()
    t2, t3 = study.trials[2], study.trials[3]
    assert t2.state == TrialState.FAIL
    assert t3.params == t2.params and t3.user_attrs["retry_of"] == 2
    assert t3.state == TrialState.FAIL and t3.user_attrs.get("interrupted") is True
    assert _snapshot(study) == before  # the completed trials untouched by the kills
    fault_ledger.add("SIGTERM of the optimizer mid-start", survived=True, orphans=orphans, note="exit 143")

    # 3. resume: completed trials intact, the study reaches its total
    r = sd.run("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    after = _snapshot(study)
    assert len(after) == 3
    for n, snap in before.items():
        assert after[n] == snap  # resumed: earlier trials untouched
    assert "2 of 3 trials finished" in r.stderr
    assert orphans_after(tmp_path) == 0
    fault_ledger.add("resume after kill + term", survived=True, trials_lost=0)
    assert "SLO calibrated on this host" in r.stderr and study.user_attrs["slo_calibration"] == cal  # reused
    # a third run with the same total starts nothing and changes nothing
    r = sd.run("study.n_trials=3", "server.api_key_env=E2E_KEY", env=env)
    assert r.returncode == 0 and _snapshot(sd.study()) == after
    assert "starting server" not in r.stderr

    # the API key never lands in the database, the logs or the report
    for path in [sd.db, *tmp_path.rglob("*.log"), *tmp_path.rglob("*.html"), *tmp_path.rglob("*.txt"),
                 *tmp_path.rglob("*.yaml"), *tmp_path.rglob("*.csv")]:
        assert SECRET.encode() not in path.read_bytes(), path
