"""Parallel trials on one PostgreSQL study: the real CLI, a real PostgreSQL server on loopback,
and small fake vLLM servers (optimizer/testing/fake_vllm.py) so that many of them fit on 2 cores.

"Hosts" are separate ``python -m optimizer.run`` processes with their own ``study.host``; the
workers of one host are the processes ``study.workers`` spawns. GPUs are simulated
(``hardware.gpu_ids``): the fake server writes the ``CUDA_VISIBLE_DEVICES`` it got into its log.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
from optuna.trial import TrialState

from tests.support.study_runner import REPO

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FAST = ["study.confirm.top_k=0", "server.module=optimizer.testing.fake_vllm", "load.num_requests=24", "load.warmup_requests=4",
        "load.concurrency=4", "workload.prompt_tokens=64", "workload.output_tokens=16",
        "search.n_startup_trials=2", "server.start_timeout_s=60", "report=false"]
# four simulated GPUs of a made-up H100 host; the GPU search space, tensor parallel 1 or 2
GPUS = ["hardware=h100", "hardware.gpu_count=4", "hardware.gpu_ids=[0,1,2,3]", "search=gpu",
        "search.tensor_parallel_size=[1,2]"]


class Fleet:
    """One study in a PostgreSQL database, run by any number of optimizer processes."""

    def __init__(self, root: Path, url: str, name: str = "fleet") -> None:
        self.root, self.url, self.name = root, url, name

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "optimizer.run", f"study.name={self.name}", f"study.storage={self.url}",
                f"study.runs_dir={self.root / 'runs'}", f"reports_dir={self.root / 'reports'}",
                f"server.cache_dir={REPO / '.cache'}", *FAST, *extra]

    def env(self, start_delay_s: float = 0.3) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO), FAKE_VLLM_START_DELAY_S=str(start_delay_s))

    def popen(self, tag: str, *extra: str, start_delay_s: float = 0.3) -> subprocess.Popen[str]:
        with open(self.root / f"{tag}.out", "w") as out:
            return subprocess.Popen(self.argv(*extra), cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    text=True, env=self.env(start_delay_s))

    def output(self, tag: str) -> str:
        return (self.root / f"{tag}.out").read_text()

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.url)

    def running(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials (none while the study does not exist yet)."""
        try:
            return self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:
            return []

    def server_log(self, number: int) -> str:
        p = self.root / "runs" / self.name / f"trial-{number:04d}" / "server.log"
        return p.read_text() if p.exists() else ""

    def server_pids(self) -> list[int]:
        return [int(m) for p in (self.root / "runs").rglob("server.log")
                for m in re.findall(r"fake_vllm pid=(\d+)", p.read_text())]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z" and b"fake_vllm" in cmd


def _wait(p: subprocess.Popen[str], fleet: Fleet, tag: str, timeout: float = 150) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"{tag} did not finish in {timeout:.0f} s:\n{fleet.output(tag)[-3000:]}")


def _check_no_trial_ran_twice(fleet: Fleet, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            starts = fleet.server_log(t.number).count("fake_vllm pid=")
            assert starts == 1, f"trial {t.number}: {starts} server starts in its folder"
    # the same params twice are not checked here: on the pow2 grids (a few hundred configs) the sampler
    # may propose a config already measured, the baseline's among them; a trial run twice shows above
    # (two server starts in its folder) and as a second baseline below
    baselines = [t.number for t in trials if t.user_attrs.get("kind") == "baseline" and t.user_attrs.get("retry_of")
                 is None]
    assert len(baselines) == 1, f"baseline trials {baselines}"


@pytest.mark.timeout(240)
def test_two_hosts_started_together_share_the_study_and_run_no_trial_twice(tmp_path, pg_url, tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    n = 8
    procs = {h: fleet.popen(h, f"study.host={h}", f"study.n_trials={n}") for h in ("a", "b")}
    codes = {h: _wait(p, fleet, h) for h, p in procs.items()}
    assert codes == {"a": 0, "b": 0}, {h: fleet.output(h)[-2000:] for h in codes}
    study = fleet.study()
    states = [t.state for t in study.trials]
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # the budget holds across hosts; two hosts finishing at the same moment may each start one more
    assert n <= len(complete) <= n + 1, len(complete)
    assert {t.user_attrs["worker"] for t in complete} == {"a/w0", "b/w0"}
    _check_no_trial_ran_twice(fleet, study)
    assert not [p for p in fleet.server_pids() if _alive(p)]


@pytest.mark.timeout(240)
def test_a_host_killed_mid_trial_has_its_trial_failed_by_heartbeat_and_retried_by_the_other(
        tmp_path, pg_url, tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    n = 8
    # a short grace so the test is quick; 4 s leaves room for a slow heartbeat on a busy 2-core machine
    common = [f"study.n_trials={n}", "study.heartbeat_interval_s=1", "study.heartbeat_grace_s=4"]
    a = fleet.popen("a", "study.host=a", *common, start_delay_s=1.0)
    b = fleet.popen("b", "study.host=b", *common, start_delay_s=1.0)
    victim: Optional[int] = None
    deadline = time.monotonic() + 90
    while victim is None and time.monotonic() < deadline:
        assert b.poll() is None, fleet.output("b")[-2000:]
        for t in fleet.running():
            if t.user_attrs.get("worker") == "b/w0" and "listening" in fleet.server_log(t.number):
                victim = t.number  # its server is up: b is mid-trial
        time.sleep(0.2)
    assert victim is not None, "host b never had a trial with a running server"
    b.send_signal(signal.SIGKILL)
    b.wait()
    server_pid = int(re.findall(r"fake_vllm pid=(\d+)", fleet.server_log(victim))[0])
    assert _wait(a, fleet, "a") == 0, fleet.output("a")[-3000:]

    study = fleet.study()
    killed = study.trials[victim]
    assert killed.state == TrialState.FAIL and killed.user_attrs["worker"] == "b/w0"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1, [t.number for t in retries]
    r = retries[0]
    assert r.state == TrialState.COMPLETE and r.user_attrs["worker"] == "a/w0"
    assert r.user_attrs["retry_of"] == victim and "heartbeat" in r.user_attrs["retry_reason"]
    assert r.params == killed.params and r.user_attrs.get("kind") == killed.user_attrs.get("kind")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    _check_no_trial_ran_twice(fleet, study)
    # b's server went down with b (its guard is signalled when the optimizer dies)
    assert not _alive(server_pid)


def _running_trial_of(fleet: Fleet, worker: str, proc: subprocess.Popen[str], tag: str) -> int:
    """The number of a trial ``worker`` runs whose server is up (it is mid-trial)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, fleet.output(tag)[-2000:]
        for t in fleet.running():
            if t.user_attrs.get("worker") == worker and "listening" in fleet.server_log(t.number):
                return t.number
        time.sleep(0.2)
    pytest.fail(f"{worker} never had a trial with a running server:\n{fleet.output(tag)[-2000:]}")


@pytest.mark.timeout(240)
def test_a_host_stalled_past_the_grace_period_drops_its_result_and_goes_on(tmp_path, pg_url, tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    n = 8
    common = [f"study.n_trials={n}", "study.heartbeat_interval_s=1", "study.heartbeat_grace_s=4"]
    a = fleet.popen("a", "study.host=a", *common, start_delay_s=1.0)
    b = fleet.popen("b", "study.host=b", *common, start_delay_s=1.0)
    victim = _running_trial_of(fleet, "b/w0", b, "b")
    b.send_signal(signal.SIGSTOP)  # a frozen host: no heartbeat, but it comes back
    try:
        deadline = time.monotonic() + 60
        while fleet.study().trials[victim].state == TrialState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        b.send_signal(signal.SIGCONT)
    assert fleet.study().trials[victim].state == TrialState.FAIL
    assert _wait(a, fleet, "a") == 0 and _wait(b, fleet, "b") == 0, (fleet.output("a")[-2000:],
                                                                    fleet.output("b")[-2000:])
    assert f"trial {victim} was failed by another worker while this one ran it" in fleet.output("b")
    study = fleet.study()
    assert study.trials[victim].state == TrialState.FAIL  # b's late result did not overwrite it
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert retry.state == TrialState.COMPLETE and retry.params == study.trials[victim].params
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    _check_no_trial_ran_twice(fleet, study)


@pytest.mark.timeout(240)
def test_four_simulated_gpus_with_tp_up_to_2_run_two_workers_on_two_gpus_each(tmp_path, pg_url, tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    p = fleet.popen("host", "study.host=h", "study.workers=0", "study.n_trials=6", *GPUS)
    assert _wait(p, fleet, "host") == 0, fleet.output("host")[-3000:]
    out = fleet.output("host")
    assert "2 worker(s) x 2 GPU(s)" in out
    study = fleet.study()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 6 <= len(complete) <= 7
    owned = {"h/w0": {0, 1}, "h/w1": {2, 3}}
    spans: dict[str, list[tuple[float, float]]] = {"h/w0": [], "h/w1": []}
    for t in complete:
        worker = t.user_attrs["worker"]
        seen = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", fleet.server_log(t.number)).group(1)
        gpus = {int(g) for g in seen.split(",")}
        assert seen == t.user_attrs["gpus"], (t.number, seen, t.user_attrs["gpus"])
        assert gpus <= owned[worker], (t.number, worker, gpus)
        assert len(gpus) == (t.params.get("tensor_parallel_size") or 1), (t.number, t.params, gpus)
        spans[worker].append((t.datetime_start.timestamp(), t.datetime_complete.timestamp()))
    assert spans["h/w0"] and spans["h/w1"], spans
    # the two workers ran trials at the same time
    assert any(s0 < e1 and s1 < e0 for s0, e0 in spans["h/w0"] for s1, e1 in spans["h/w1"])
    _check_no_trial_ran_twice(fleet, study)


@pytest.mark.timeout(120)
def test_sigterm_to_the_entry_process_stops_every_worker_and_records_interrupted_trials(tmp_path, pg_url,
                                                                                        tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    p = fleet.popen("host", "study.host=h", "study.workers=2", "study.n_trials=20", *GPUS[:4],
                    "search.tensor_parallel_size=[1]", start_delay_s=2.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len({t.user_attrs.get("worker") for t in fleet.running()} - {None}) == 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"two workers never ran trials at once:\n{fleet.output('host')[-3000:]}")
    p.send_signal(signal.SIGTERM)
    assert _wait(p, fleet, "host", 60) == 143, fleet.output("host")[-3000:]
    study = fleet.study()
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert {t.user_attrs["worker"] for t in interrupted} == {"h/w0", "h/w1"}
    assert all(t.state == TrialState.FAIL for t in interrupted)
    time.sleep(0.5)
    assert not [pid for pid in fleet.server_pids() if _alive(pid)]


@pytest.mark.timeout(240)
def test_a_worker_process_killed_on_one_host_leaves_the_others_running(tmp_path, pg_url, tiny_model):
    fleet = Fleet(tmp_path, pg_url)
    n = 6
    p = fleet.popen("host", "study.host=h", "study.workers=2", f"study.n_trials={n}", *GPUS[:4],
                    "search.tensor_parallel_size=[1]", "study.heartbeat_interval_s=1", "study.heartbeat_grace_s=4",
                    start_delay_s=1.0)
    victim = None
    deadline = time.monotonic() + 90
    while victim is None and time.monotonic() < deadline:
        for t in fleet.running():
            if t.user_attrs.get("worker") == "h/w1" and "listening" in fleet.server_log(t.number):
                victim = t.number
        time.sleep(0.2)
    assert victim is not None, fleet.output("host")[-3000:]
    pid = int(re.search(r"worker h/w1: pid (\d+)", fleet.output("host")).group(1))
    os.kill(pid, signal.SIGKILL)
    assert _wait(p, fleet, "host") == 0, fleet.output("host")[-3000:]  # the budget was met all the same
    out = fleet.output("host")
    assert "worker h/w1 was killed by SIGKILL; the others go on" in out
    study = fleet.study()
    assert study.trials[victim].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"] == "h/w0"
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= n
    assert not [q for q in fleet.server_pids() if _alive(q)]


def _enqueue_in_a_process(url: str, name: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from optimizer.study.coordination import enqueue_baseline_once

    study = optuna.load_study(study_name=name, storage=url)
    barrier.wait()
    results.put(enqueue_baseline_once(study, url, {"max_num_seqs": 128}))


@pytest.mark.timeout(120)
def test_baseline_is_enqueued_once_when_six_processes_try_at_the_same_moment(pg_url):
    optuna.create_study(study_name="race", storage=pg_url)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_enqueue_in_a_process, args=(pg_url, "race", barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == [False] * 5 + [True]
    study = optuna.load_study(study_name="race", storage=pg_url)
    assert [t.user_attrs.get("kind") for t in study.trials] == ["baseline"]


@pytest.mark.parametrize("extra, says", [
    (["hardware=h100", "hardware.gpu_ids=[0,1]", "study.workers=2"], "postgresql://"),
    (["study.workers=2"], "share the cores"),
    (["hardware=h100", "hardware.gpu_count=3", "hardware.gpu_ids=[0,1,2]", "search=gpu",
      "search.tensor_parallel_size=[1,2]", "study.workers=2", "study.storage=postgresql://nobody@127.0.0.1:1/none"],
     "needs 2 x 2 GPU(s)"),
    (["hardware=h100", "hardware.gpu_ids=[0,1]", "study.workers=2",
      "study.storage=postgresql://nobody@127.0.0.1:1/none"], "Check the host, port"),
])
def test_parallel_workers_that_cannot_work_are_refused_with_exit_code_2(tmp_path, extra, says):
    r = subprocess.run([sys.executable, "-m", "optimizer.run", "study.name=refused",
                        f"study.storage=sqlite:///{tmp_path}/s.db", f"study.runs_dir={tmp_path / 'runs'}",
                        f"server.cache_dir={REPO / '.cache'}", "report=false", *extra],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ,
                                                                                           PYTHONPATH=str(REPO)))
    assert r.returncode == 2, r.stderr[-2000:]
    assert says in r.stderr and "starting server" not in r.stderr
