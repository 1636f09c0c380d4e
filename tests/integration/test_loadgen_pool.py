"""The load spread over worker processes (optimizer/loadgen/pool.py) against the fake server:
the merged records are exactly the ones one process produces, request for request."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.pool import workers_for
from optimizer.loadgen.runner import LoadRun, run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.settings.config import LoadConfig, ModelConfig, WorkloadConfig

pytestmark = pytest.mark.timeout(120)

MODEL = ModelConfig(name="fake", vocab_size=4096, prompt_token_low=10)
# a fault is chosen by a hash of the request body: the same bodies meet the same faults, so the
# per-index fault kinds below fingerprint what each request carried (no stalls: they only add time)
FAULTS = "http500,http429,drop,malformed,no_done"


def _go(url: str, workers: int, **kw) -> LoadRun:
    load = dataclasses.replace(LoadConfig(), **{
        "concurrency": 6, "num_requests": 48, "warmup_requests": 6, "request_timeout_s": 10.0,
        "stall_timeout_s": 2.0, "p99_sizing": "off", "request_rate": 150.0, "arrival": "poisson",
        "abort_after_failures": 1000, "client_workers": workers, **kw})
    w = WorkloadConfig(name="t", prompt_tokens=24, prompt_tokens_spread=0.5, output_tokens=6,
                       output_tokens_spread=0.5, seed=3)
    ep = Endpoint(url, "fake", request_timeout_s=load.request_timeout_s, stall_timeout_s=load.stall_timeout_s)
    return asyncio.run(run_load(ep, RequestSet.build(w, MODEL), load))


def _fingerprint(results) -> list[tuple]:
    return [(r.index, r.warmup, r.ok, r.error_kind, r.prompt_tokens, r.output_tokens,
             r.chunks if r.ok else None) for r in results]


@pytest.mark.parametrize("mode", ["concurrency", "rate"])
def test_worker_processes_return_exactly_the_records_of_one_process(fake_server_factory, mode: str):
    srv = fake_server_factory(tokens_per_s=500, fault=FAULTS, fault_rate=0.3)
    one = _go(srv.url, 1, mode=mode)
    faults_one = srv.stats()["faults"]
    srv.reset()
    three = _go(srv.url, 3, mode=mode)
    assert one.client_workers == 1 and three.client_workers == 3
    assert len(three.client_cpu_by_process) == 4  # the parent and its three workers, each measured
    assert len(three.client_wait_by_process) == 4 and all(w >= 0 for w in three.client_wait_by_process)
    assert [r.index for r in three.results] == list(range(48))
    assert _fingerprint(three.results) == _fingerprint(one.results)
    assert _fingerprint(three.warmup) == _fingerprint(one.warmup)
    assert srv.stats()["faults"] == faults_one and sum(faults_one.values()) > 5
    assert all(r.ok for r in three.results if not r.error_kind)
    assert three.duration_s > 0 and three.client_cpu_s > 0


def test_a_closed_loop_over_processes_keeps_the_total_concurrency(fake_server_factory):
    # streams of ~0.3 s: with 6 workers over 3 processes, 6 run at once and never more
    srv = fake_server_factory(tokens_per_s=20, fault="", fault_rate=0.0)
    run = _go(srv.url, 3, num_requests=18, warmup_requests=0)
    assert all(r.ok for r in run.results)
    events = sorted([(r.t_sent, 1) for r in run.results] + [(r.t_end, -1) for r in run.results],
                    key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 6


def test_auto_sizing_follows_the_load_and_leaves_half_the_cores():
    w = WorkloadConfig(name="t", output_tokens=128)
    closed = dataclasses.replace(LoadConfig(), mode="concurrency", client_workers=0)
    assert workers_for(dataclasses.replace(closed, concurrency=8), w, cores=16) == 1
    assert workers_for(dataclasses.replace(closed, concurrency=256), w, cores=16) == 8
    assert workers_for(dataclasses.replace(closed, concurrency=256), w, cores=2) == 1
    rate = dataclasses.replace(LoadConfig(), mode="rate", request_rate=100.0, client_workers=0)
    assert workers_for(rate, w, cores=16) == 5  # 12.8k token events/s at 3k per process
    assert workers_for(dataclasses.replace(closed, concurrency=4, client_workers=9), w, cores=2) == 4
