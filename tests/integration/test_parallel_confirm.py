"""The confirmation stage on a host's GPU groups at once: the real CLI, a real PostgreSQL server on
loopback, small fake vLLM servers (optimizer/testing/fake_vllm.py) and two simulated GPUs
(``hardware.gpu_ids=[0,1]``; the fake server writes the ``CUDA_VISIBLE_DEVICES`` it got into its
log). One search is copied into two studies, so the parallel and the serial confirmation start
from the same trials.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.confirmation.confirm_result import summarize_confirmation
from optimizer.record import TrialRecord
from optimizer.reporting.confirmation_section import confirmation_html, confirmation_view
from tests.integration.test_parallel_workers import Fleet, _alive, _wait

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# two simulated GPUs of a made-up H100 host, one per worker
GPUS = ["hardware=h100", "hardware.gpu_count=2", "hardware.gpu_ids=[0,1]", "search=gpu",
        "search.tensor_parallel_size=[1]", "study.host=h"]
CONFIRM = ["study.confirm.top_k=1", "study.confirm.repeats=2"]


def _confirm_argv(fleet: Fleet, *extra: str) -> list[str]:
    """``python -m optimizer.confirm`` with the search's settings (its FAST turns the stage off)."""
    argv = [a for a in fleet.argv() if not a.startswith("study.confirm.top_k=")]
    return [argv[0], "-m", "optimizer.confirm", *argv[3:], *extra]


def _searched(tmp_path: Path, pg_url: str, name: str) -> Fleet:
    """A study of 3 trials searched by 2 workers on the two simulated GPUs."""
    fleet = Fleet(tmp_path, pg_url, name)
    p = fleet.popen("search", "study.workers=2", "study.n_trials=3", *GPUS)
    assert _wait(p, fleet, "search") == 0, fleet.output("search")[-3000:]
    return fleet


def _confirm(fleet: Fleet, tag: str, *extra: str) -> str:
    with open(fleet.root / f"{tag}.out", "w") as out:
        p = subprocess.Popen(_confirm_argv(fleet, *GPUS, *CONFIRM, *extra), cwd=fleet.root, stdout=out,
                             stderr=subprocess.STDOUT, text=True, env=fleet.env(start_delay_s=1.0))
    assert _wait(p, fleet, tag) == 0, fleet.output(tag)[-3000:]
    return fleet.output(tag)


def _runs(fleet: Fleet) -> list[tuple[optuna.trial.FrozenTrial, TrialRecord]]:
    out = []
    for t in fleet.study().get_trials(deepcopy=False):
        rec = TrialRecord.from_trial(t)
        if rec.confirmation is not None:
            out.append((t, rec))
    return out


def _seen_gpus(fleet: Fleet, rec: TrialRecord) -> str:
    """What the fake server itself was started with."""
    assert rec.launch is not None
    found = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", Path(rec.launch.server_log).read_text())
    assert found is not None, rec.launch.server_log
    return found.group(1)


@pytest.mark.timeout(300)
def test_a_confirmation_runs_on_both_gpu_groups_at_once_and_rotates_each_config_over_them(tmp_path, pg_url,
                                                                                         tiny_model):
    search = _searched(tmp_path, pg_url, "par")
    optuna.copy_study(from_study_name="par", from_storage=pg_url, to_storage=pg_url, to_study_name="ser")
    serial = Fleet(tmp_path, pg_url, "ser")

    out = _confirm(search, "par-confirm", "study.workers=2")
    assert "the rest on 2 GPU group(s) at once" in out
    assert "worker h/confirm/w0: pid" in out and "worker h/confirm/w1: pid" in out
    runs = _runs(search)
    assert len(runs) == 4 and all(t.state == TrialState.COMPLETE for t, _ in runs), [t.state for t, _ in runs]
    # each run's GPU as recorded, as its server saw it, and the worker that owns that GPU
    for t, rec in runs:
        assert rec.setup.gpus == _seen_gpus(search, rec), (t.number, rec.setup.gpus)
        assert rec.setup.worker == f"h/confirm/w{rec.setup.gpus}", (t.number, rec.setup.worker, rec.setup.gpus)
    assert {rec.setup.gpus for _, rec in runs} == {"0", "1"}
    by_config: dict[str, set[str]] = {}
    for _, rec in runs:
        assert rec.confirmation is not None
        by_config.setdefault("baseline" if rec.confirmation.baseline else f"trial {rec.confirmation.of}",
                             set()).add(rec.setup.gpus)
    assert len(by_config) == 2 and all(g == {"0", "1"} for g in by_config.values()), by_config  # no config on one GPU
    # the two workers ran at the same time: each run spans [stored - its total time, stored]
    spans = {w: [(t.datetime_complete - timedelta(seconds=float(t.user_attrs["t_total_s"])), t.datetime_complete)
                 for t, rec in runs if rec.setup.worker == w] for w in ("h/confirm/w0", "h/confirm/w1")}
    assert any(s0 < e1 and s1 < e0 for s0, e0 in spans["h/confirm/w0"] for s1, e1 in spans["h/confirm/w1"]), spans
    assert out.count("confirmation (2 rounds") == 1 and "recommendation:" in out  # summarized once, by the parent
    view = confirmation_view(search.study().get_trials(deepcopy=False), {})  # the report's section
    assert view is not None and {lab: set(g) for lab, g in view.gpus.items()} == by_config
    assert "(GPU 0)" in confirmation_html(view, "") and "(GPU 1)" in confirmation_html(view, "")
    assert not [q for q in search.server_pids() if _alive(q)]

    # the same study confirmed by one worker: the same result structure, every run on the first GPU
    out = _confirm(serial, "ser-confirm", "study.workers=1")
    assert "at once" not in out and "worker h/confirm/w" not in out
    serial_runs = _runs(serial)
    assert len(serial_runs) == 4 and {(rec.setup.gpus, rec.setup.worker) for _, rec in serial_runs} == {
        ("0", "h/confirm")}
    serial_view = confirmation_view(serial.study().get_trials(deepcopy=False), {})
    assert serial_view is not None and set(serial_view.gpus.values()) == {("0", "0")}
    par = summarize_confirmation(search.study().get_trials(deepcopy=False), 0.95)
    ser = summarize_confirmation(serial.study().get_trials(deepcopy=False), 0.95)
    assert par is not None and ser is not None
    assert [(r.label, r.of, r.baseline, len(r.values), r.complete) for r in par.runs] == \
        [(r.label, r.of, r.baseline, len(r.values), r.complete) for r in ser.runs]
    assert par.rounds == ser.rounds == 2 and par.study_pick == ser.study_pick
    assert sorted((rec.confirmation.repeat, rec.confirmation.slot, rec.confirmation.seed) for _, rec in runs) == \
        sorted((rec.confirmation.repeat, rec.confirmation.slot, rec.confirmation.seed) for _, rec in serial_runs)


@pytest.mark.timeout(300)
def test_sigterm_stops_both_confirmation_workers_and_the_next_call_resumes_on_both_groups(tmp_path, pg_url,
                                                                                         tiny_model):
    fleet = _searched(tmp_path, pg_url, "sig")
    with open(tmp_path / "stopped.out", "w") as out:
        proc = subprocess.Popen(_confirm_argv(fleet, *GPUS, *CONFIRM, "study.workers=2"), cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=fleet.env(start_delay_s=3.0))
    starting = [re.compile(rf"\[h/confirm/w{i}\] \[confirm [^\n]*starting server") for i in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(s.search(fleet.output("stopped")) for s in starting):  # both servers are starting
        assert proc.poll() is None and time.monotonic() < deadline, fleet.output("stopped")[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert _wait(proc, fleet, "stopped", 60) == 143, fleet.output("stopped")[-3000:]
    stopped = [(t, rec) for t, rec in _runs(fleet) if rec.interrupted]
    assert {rec.setup.worker for _, rec in stopped} == {"h/confirm/w0", "h/confirm/w1"}, fleet.output("stopped")
    assert all(t.state == TrialState.FAIL for t, _ in stopped)
    time.sleep(0.5)
    assert not [q for q in fleet.server_pids() if _alive(q)]

    out = _confirm(fleet, "resumed", "study.workers=2")
    assert "of 4 runs done; the rest on 2 GPU group(s) at once" in out
    done = [rec for t, rec in _runs(fleet) if t.state == TrialState.COMPLETE]
    assert sorted((r.confirmation.repeat, r.confirmation.slot) for r in done) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {r.setup.gpus for r in done} == {"0", "1"}
