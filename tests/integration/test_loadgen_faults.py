"""The load generator against the fault-injecting fake vLLM server (optimizer/testing/fake_server.py):
every fault is a record of its kind, counts add up, and no run hangs."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter

import httpx
import pytest

from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import LoadRun, run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import summarize
from optimizer.server.telemetry import parse_metrics
from optimizer.settings.config import LoadConfig, ModelConfig, WorkloadConfig
from optimizer.testing.fake_server import FAULT_KINDS

pytestmark = pytest.mark.timeout(60)

MODEL = ModelConfig(name="fake", vocab_size=4096, prompt_token_low=10)
# what the client must call each injected fault
EXPECTED = {"http500": "http_status", "http429": "rate_limited", "drop": "stream_broken", "stall": "stalled",
            "malformed": "malformed", "no_done": "no_done", "slow_first": None}


def _load(**kw) -> LoadConfig:
    base = dict(concurrency=8, num_requests=40, warmup_requests=0, request_timeout_s=10.0, stall_timeout_s=0.3,
                p99_sizing="off", request_rate=200.0, arrival="constant")
    return dataclasses.replace(LoadConfig(), **{**base, **kw})


def _go(url: str, load: LoadConfig, endpoint: str = "completions", output_tokens: int = 8,
        progress=None) -> LoadRun:
    w = WorkloadConfig(name="t", endpoint=endpoint, prompt_tokens=32, output_tokens=output_tokens)
    ep = Endpoint(url, "fake", endpoint, request_timeout_s=load.request_timeout_s,
                  stall_timeout_s=load.stall_timeout_s)
    return asyncio.run(run_load(ep, RequestSet.build(w, MODEL), load, progress))


def _kinds(run: LoadRun) -> Counter:
    return Counter("ok" if r.ok else r.error_kind for r in run.warmup + run.results)


@pytest.mark.parametrize("fault", [k for k in FAULT_KINDS if k != "slow_first"])
def test_each_fault_kind_is_recorded_as_its_error_kind(fake_server_factory, fault: str):
    srv = fake_server_factory(tokens_per_s=2000, fault=fault, fault_rate=1.0)
    run = _go(srv.url, _load(num_requests=12, concurrency=4, abort_after_failures=100))
    assert len(run.results) == 12 and [r.index for r in run.results] == list(range(12))
    assert _kinds(run) == {EXPECTED[fault]: 12}
    assert srv.stats()["faults"] == {fault: 12}


def test_slow_first_token_shows_in_ttft_of_exactly_the_faulted_requests(fake_server_factory):
    # a wide gap between slow (>= 1.5 s) and normal first tokens, so a loaded CI host can't blur it
    srv = fake_server_factory(tokens_per_s=2000, fault="slow_first", fault_rate=0.5, slow_first_ms=1500)
    run = _go(srv.url, _load(num_requests=24, stall_timeout_s=5.0))
    assert all(r.ok for r in run.results)
    slow = sum(1 for r in run.results if r.ttft >= 1.5)
    assert slow == srv.stats()["faults"]["slow_first"] and 0 < slow < 24
    assert all(r.ttft < 1.0 for r in run.results if r.ttft < 1.5)


@pytest.mark.parametrize("mode", ["concurrency", "rate"])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_mixed_faults_are_counted_per_request_and_the_totals_add_up(fake_server_factory, mode: str, endpoint: str):
    srv = fake_server_factory(tokens_per_s=1000, fault=",".join(FAULT_KINDS), fault_rate=0.5, slow_first_ms=50)
    run = _go(srv.url, _load(mode=mode, num_requests=60, warmup_requests=6, abort_after_failures=100),
              endpoint=endpoint)
    injected = srv.stats()["faults"]
    kinds = _kinds(run)
    want: Counter = Counter()
    for fault, n in injected.items():
        want[EXPECTED[fault] or "ok"] += n
    want["ok"] += 66 - sum(injected.values())
    assert kinds == want
    s = summarize(run.results, run.duration_s)
    assert s.n_requests == 60 == s.n_ok + sum(s.errors.values())
    assert len(run.warmup) == 6 and all(r.warmup for r in run.warmup)
    assert len(injected) >= 4  # the seeded draw really mixed them


def test_a_server_that_dies_mid_run_leaves_records_not_an_exception(fake_server_factory):
    srv = fake_server_factory(tokens_per_s=100)

    def kill_after_ten(phase: str, done: int) -> None:
        if done == 10:  # from another thread, as a crash comes; 0.1 s later the streams are mid-answer
            threading.Timer(0.1, srv.stop).start()

    t0 = time.monotonic()
    run = _go(srv.url, _load(num_requests=200, concurrency=8, request_timeout_s=5.0), output_tokens=20,
              progress=kill_after_ten)
    assert time.monotonic() - t0 < 10
    kinds = Counter("ok" if r.ok else r.error_kind for r in run.results)
    assert len(run.results) == 200 and [r.index for r in run.results] == list(range(200))
    assert kinds["ok"] > 0 and kinds["stream_broken"] > 0 and kinds["aborted"] > 0, kinds
    assert set(kinds) <= {"ok", "stream_broken", "connect", "aborted"}
    assert "failed to reach the server" in run.aborted


def test_an_open_loop_against_a_dead_server_stops_dispatching(fake_server_factory):
    srv = fake_server_factory()
    srv.stop()
    t0 = time.monotonic()
    run = _go(srv.url, _load(mode="rate", request_rate=50.0, num_requests=100))
    assert time.monotonic() - t0 < 3  # 100 arrivals at 50/s would take 2 s; the brake stops it sooner
    kinds = Counter(r.error_kind for r in run.results)
    assert len(run.results) == 100 and set(kinds) == {"connect", "aborted"} and kinds["aborted"] > 50


def test_a_hung_server_ends_the_run_after_the_brake_not_after_every_timeout(fake_server_factory):
    srv = fake_server_factory(fault="stall", fault_rate=1.0)
    t0 = time.monotonic()
    run = _go(srv.url, _load(num_requests=200, concurrency=4, abort_after_failures=8))
    assert time.monotonic() - t0 < 5  # 200 / 4 x 0.3 s = 15 s without the brake
    kinds = Counter(r.error_kind for r in run.results)
    assert len(run.results) == 200 and set(kinds) == {"stalled", "aborted"}


def test_a_slow_server_times_requests_out_without_stopping_the_run(fake_server_factory):
    """Over load.request_timeout_s while tokens still flow: slow, not gone; every request is sent."""
    srv = fake_server_factory(tokens_per_s=20)
    run = _go(srv.url, _load(num_requests=16, concurrency=4, request_timeout_s=0.3, abort_after_failures=2),
              output_tokens=40)
    assert [r.error_kind for r in run.results] == ["timeout"] * 16 and not run.aborted


def test_duration_bounded_closed_loop_stops_issuing_on_time(fake_server_factory):
    srv = fake_server_factory(tokens_per_s=500)
    run = _go(srv.url, _load(num_requests=0, duration_s=1.0, concurrency=4))
    assert 1.0 <= run.duration_s < 3.0  # stops issuing at 1 s; what is in flight then still finishes
    assert len(run.results) > 4 and all(r.ok for r in run.results)
    assert len({r.index for r in run.results}) == len(run.results)


def test_open_loop_requests_start_on_schedule(fake_server_factory):
    srv = fake_server_factory(tokens_per_s=0)
    run = _go(srv.url, _load(mode="rate", request_rate=100.0, arrival="constant", num_requests=50))
    assert all(r.ok for r in run.results)
    assert 0.49 <= run.duration_s < 2.0  # 49 gaps of 10 ms + the start offset + the last request
    assert run.dispatch_lag_ms[0] < 50  # the median arrival goes out on time (P99: at the mercy of the host)


def test_an_open_loop_charges_its_own_queue_to_latency(fake_server_factory):
    """max_inflight=1 and 50 ms per request at one arrival every 25 ms: a queue builds on the client,
    and the latency counted from each request's due time shows it."""
    srv = fake_server_factory(delay_ms=50)
    run = _go(srv.url, _load(mode="rate", request_rate=40.0, arrival="constant", num_requests=20, max_inflight=1),
              output_tokens=1)
    lat = [r.latency for r in run.results]
    assert all(r.ok for r in run.results)
    assert lat[-1] > 0.4 and lat[-1] > 2 * lat[0]
    assert run.dispatch_lag_ms[2] > 200


def test_warmup_is_excluded_from_the_measured_results(fake_server_factory):
    srv = fake_server_factory(tokens_per_s=0)
    run = _go(srv.url, _load(num_requests=20, warmup_requests=8))
    assert len(run.warmup) == 8 and len(run.results) == 20
    assert not any(r.warmup for r in run.results) and srv.stats()["requests"] == 28
    assert summarize(run.results, run.duration_s).n_requests == 20


def test_client_token_counts_equal_the_server_counters(fake_server_factory):
    srv = fake_server_factory(tokens_per_s=0)

    def counters() -> dict[str, float]:
        return parse_metrics(httpx.get(srv.url + "/metrics").text).counters

    before = counters()
    for endpoint in ("completions", "chat"):
        run = _go(srv.url, _load(num_requests=20, warmup_requests=4), endpoint=endpoint)
        assert all(r.ok for r in run.results + run.warmup)
    after = counters()
    assert after["vllm:generation_tokens"] - before["vllm:generation_tokens"] == 2 * 24 * 8
    assert after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"] == srv.stats()["prompt_tokens"]
