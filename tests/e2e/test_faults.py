"""Faults against the real vLLM (CPU build) server: start failures, a dying server. (The optimizer
SIGKILLed and SIGTERMed mid-start, then resumed, is in tests/e2e/test_study_e2e.py: it shares that
study's server starts.)

Each test records what it injected in the fault ledger, printed at the end of the session."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from tests.support.study_runner import StudyDir, group_members, orphans_after, server_groups, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_configs_that_cannot_start_are_recorded_with_the_reason_and_the_study_goes_on(tmp_path, fault_ledger):
    sd = StudyDir(tmp_path)
    # an invalid flag: every server refuses to start, each trial is recorded (not retried)
    r = sd.run("study.n_trials=2", "server.extra_args=[--no-such-vllm-flag]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "No config met the SLO" in r.stderr
    trials = sd.study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    for t in trials:
        assert t.user_attrs["failure"] == "invalid_config"
        assert "no-such-vllm-flag" in t.user_attrs["failure_detail"]
        assert t.constraints["startup"] == 1.0 and t.value == 0.0
    fault_ledger.add("invalid server flag (2 trials)", survived=True, orphans=orphans_after(tmp_path))

    # more KV cache than the machine has: out of memory, read from the server log
    sd2 = StudyDir(tmp_path, "oom")
    r = sd2.run("study.n_trials=1", "hardware.cpu_kvcache_gib=4000")
    assert r.returncode == 0, r.stderr[-2000:]
    (t,) = sd2.study().trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["failure"] == "out_of_memory", t.user_attrs
    assert "memory" in t.user_attrs["failure_detail"]
    fault_ledger.add("KV cache larger than RAM (out of memory)", survived=True, orphans=orphans_after(tmp_path))


def test_repeated_environmental_failures_stop_the_study_with_a_message(tmp_path, fault_ledger):
    sd = StudyDir(tmp_path)
    r = sd.run("study.n_trials=3", "server.start_timeout_s=2", "study.max_consecutive_env_failures=2")
    assert r.returncode == 1
    assert "2 trials in a row failed" in r.stderr and "start_timeout" in r.stderr
    assert "Traceback" not in r.stderr
    trials = sd.study().trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all(t.user_attrs["failure"] == "start_timeout" for t in failed)
    assert failed[1].params == failed[0].params and failed[1].user_attrs["retry_of"] == failed[0].number
    orphans = orphans_after(tmp_path)
    assert orphans == 0
    fault_ledger.add("server never healthy (start timeout) x2", survived=True, orphans=orphans,
                     note="study stopped, exit 1")


def test_a_server_that_dies_during_the_load_test_fails_its_trial(tmp_path, fault_ledger):
    sd = StudyDir(tmp_path)
    p = sd.popen("study.n_trials=1", "load.num_requests=5000", "load.concurrency=2",
                 "study.max_consecutive_env_failures=1")
    wait_for(lambda: "warm-up and load test" in sd.output(), 400, "the load test to begin")
    time.sleep(2)
    engines = [pid for g in server_groups(tmp_path) for pid in group_members(g)
               if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert engines
    os.kill(engines[0], signal.SIGKILL)
    rc = p.wait(timeout=300)
    out = sd.output()
    # a dead engine is a dead server, whether the API server has exited yet or still answers
    # /health with an error: the trial fails (the environment, not the config) with what it
    # measured before the death, and the study stops on max_consecutive_env_failures=1
    assert rc == 1 and "in a row failed" in out, out[-2000:]
    (t, *rest) = sd.study().trials
    assert t.state == TrialState.FAIL, (t.state, t.user_attrs)
    rec = TrialRecord.from_trial(t)
    assert rec.failure is not None and rec.failure.during_load, t.user_attrs
    assert t.user_attrs["failure"].startswith("server_died:")
    assert rec.measurement is not None and rec.measurement.summary.n_requests > 0
    assert "Traceback" not in out
    orphans = orphans_after(tmp_path)
    assert orphans == 0
    fault_ledger.add("engine killed during the load test", survived=True, orphans=orphans,
                     note=t.user_attrs["failure"])
