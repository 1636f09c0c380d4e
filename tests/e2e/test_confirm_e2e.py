"""The confirmation stage end to end: a real 2-trial study on vLLM's CPU build, its confirmation
(baseline + top 1, 2 rounds) started by the study itself, killed with SIGTERM midway, resumed
with ``python -m optimizer.confirm``; the database, the report and best.yaml read back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from optimizer.study.results import study_result
from tests.support.study_runner import FAST, StudyDir, group_members, server_groups

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(3000)]

# every measured config is feasible under this limit (the point here is the stage, not the SLO), and a
# narrow space keeps the random proposal startable on the shared CPU
SPACE = ["slo.p99_ms=600000", "search.max_num_seqs.low=4", "search.max_num_seqs.high=8",
         "search.max_num_batched_tokens.low=512", "search.max_num_batched_tokens.high=1024",
         "search.kv_cache_gib.low=1.0", "search.kv_cache_gib.high=1.5", "server.extra_args=[--enforce-eager]"]
CONFIRM = ["study.confirm.top_k=1", "study.confirm.repeats=2"]


def _confirmations(sd: StudyDir):
    study = sd.study_if_created()  # None while the optimizer process is still creating it
    return [] if study is None else [t for t in study.get_trials(deepcopy=True) if "confirms" in t.user_attrs]


def test_a_study_confirms_its_winner_survives_sigterm_and_resumes(tmp_path):
    sd = StudyDir(tmp_path)
    proc = sd.popen("study.n_trials=2", *SPACE, *CONFIRM)
    try:
        deadline = time.monotonic() + 2400
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(3)
            if any(t.state == TrialState.COMPLETE for t in _confirmations(sd)):
                break
        assert proc.poll() is None, sd.output()[-4000:]
        time.sleep(5)  # into the next confirmation run's server start
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143, sd.output()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    for g in server_groups(tmp_path):  # the pid files may stay; the groups must be gone
        assert not group_members(g), f"server group {g} survived SIGTERM"
    before = _confirmations(sd)
    done_before = [t for t in before if t.state == TrialState.COMPLETE]
    interrupted = [t for t in before if t.state == TrialState.FAIL]
    assert 1 <= len(done_before) < 4
    assert interrupted and TrialRecord.from_trial(interrupted[-1]).interrupted

    r = subprocess.run([sys.executable, "-m", "optimizer.confirm", *sd.overrides(), *FAST, *SPACE, *CONFIRM],
                       cwd=tmp_path, capture_output=True, text=True, timeout=2400, env=sd.env())
    assert r.returncode == 0, r.stderr[-4000:]
    after = _confirmations(sd)
    done = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(done) == 4  # 2 configs x 2 rounds, the ones measured before the kill kept
    assert [t.number for t in done_before] == [t.number for t in done[:len(done_before)]]
    recs = [TrialRecord.from_trial(t).confirmation for t in done]
    assert [(c.repeat, c.slot) for c in recs] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # interleaved: one run of each config per round
    assert [c.seed for c in recs] == [1000, 1000, 1001, 1001]  # held-out prompts, one seed per round
    # each round holds the baseline and the winner once, in an order drawn per round (the round's seed)
    assert [sorted(c.baseline for c in recs[k:k + 2]) for k in (0, 2)] == [[False, True], [False, True]]
    study = sd.study()
    res = study_result(study.trials)
    assert res.n_complete == 2 and res.best is not None and "confirms" not in res.best.user_attrs
    for t in done:  # a real measurement each, with its throughput interval
        rec = TrialRecord.from_trial(t)
        assert rec.measured and rec.throughput_ci is not None and rec.outcome.feasible
    assert "confirmation (2 rounds" in r.stderr and "recommendation:" in r.stderr
    page = (tmp_path / "reports" / sd.name / "index.html").read_text()
    assert 'id="confirmation"' in page and "Confirmation on fresh servers" in page
    best = (tmp_path / "reports" / sd.name / "best.yaml").read_text()
    assert best.startswith("# vLLM server config confirmed on 2 fresh servers") or \
        best.startswith("# vLLM's defaults: no config was shown to beat them")
    print(r.stderr[r.stderr.find("confirmation (2 rounds"):])  # the measured figures, for the record
