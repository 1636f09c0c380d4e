"""The load generator's run-queue wait (optimizer/loadgen/schedwait.py): read from /proc, unknown
(NaN) rather than 0 where it cannot be read, real under busy cores, and the note a run carries when
its client waited for a CPU."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from optimizer.loadgen import runner
from optimizer.loadgen.schedwait import runqueue_wait_s, waited

linux_schedstat = pytest.mark.skipif(not Path("/proc/thread-self/schedstat").is_file(),
                                     reason="no /proc/thread-self/schedstat on this host")


def test_the_wait_is_the_second_field_of_the_threads_schedstat(tmp_path):
    (tmp_path / "schedstat").write_text("900000000 1500000000 40\n")
    assert runqueue_wait_s(tmp_path / "schedstat") == pytest.approx(1.5)


def test_a_thread_without_schedstats_has_an_unknown_wait_not_zero(tmp_path):
    assert math.isnan(runqueue_wait_s(tmp_path / "gone"))
    (tmp_path / "schedstat").write_text("")
    assert math.isnan(runqueue_wait_s(tmp_path / "schedstat"))
    assert math.isnan(waited(math.nan))


def _spin(stop: float) -> None:
    while time.monotonic() < stop:
        pass


@linux_schedstat
def test_a_client_starved_by_busy_cores_shows_a_wait():
    """Busy loops on every core and one more: a thread that sleeps 1 ms at a time then waits for a
    core at each wake-up, and the reading grows (it is real, not a constant)."""
    cores = len(os.sched_getaffinity(0))
    ctx = mp.get_context("spawn")
    stop = time.monotonic() + 6.0
    hogs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2 * cores + 1)]
    for h in hogs:
        h.start()
    try:
        time.sleep(1.0)  # the hogs are spinning
        w0 = runqueue_wait_s()
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            time.sleep(0.001)
        got = waited(w0)
    finally:
        for h in hogs:
            h.terminate()
            h.join(5)
    assert math.isfinite(w0) and got > 0, (w0, got)


def test_a_run_whose_client_waited_for_a_cpu_carries_a_note(monkeypatch, fake_server_factory):
    from optimizer.loadgen.client import Endpoint
    from optimizer.loadgen.workload import RequestSet
    from optimizer.settings.config import LoadConfig, ModelConfig, WorkloadConfig

    srv = fake_server_factory(tokens_per_s=400, fault="", fault_rate=0.0)
    load = LoadConfig(concurrency=2, num_requests=8, warmup_requests=0, p99_sizing="off", client_workers=1,
                      client_wait_warn=0.2)
    rs = RequestSet.build(WorkloadConfig(name="t", prompt_tokens=16, output_tokens=4, seed=1),
                          ModelConfig(name="fake", vocab_size=4096, prompt_token_low=10))

    def go():
        return asyncio.run(runner.run_load(Endpoint(srv.url, "fake"), rs, load))

    run = go()
    assert len(run.client_wait_by_process) == 1 and run.client_wait_s >= 0  # measured on this host
    assert not any("waited" in n for n in run.notes) or run.client_wait_max_share > 0.2
    # the same run as if the client had waited for a core for the whole run
    monkeypatch.setattr(runner, "waited", lambda since: 10.0)
    run = go()
    assert run.client_wait_s == 10.0 and run.client_wait_max_share > 1
    note = next(n for n in run.notes if "waited" in n)
    assert "10.0 s for a CPU" in note and "load.client_wait_warn=0.2" in note and "TTFT" in note
