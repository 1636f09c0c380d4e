"""The load spread over worker processes, so that the client is never the bottleneck.

One Python process with httpx streams ~45k tokens/s at full load on one core, and adds to the P99
it measures long before that (+24 ms at 6k tokens/s, C = 64: docs/load-generator.md). So above
:data:`STREAMS_PER_WORKER` concurrent streams (closed loop) or :data:`EVENTS_PER_WORKER` expected
token events/s (open loop) the load goes to several processes, each with its own event loop,
connections and share of the concurrency, and all on one schedule:

- closed loop: every process takes "the next request" from one counter in shared memory, so
  requests ``0..n-1`` are each sent once, in the order they would be by one process;
- open loop: the parent draws the seeded arrival offsets; process ``k`` sends requests
  ``k, k + P, k + 2P, ...`` at ``t0 + offset`` (``time.perf_counter`` is the system's monotonic
  clock, the same in every process), with ``load.max_inflight`` split among them;
- warm-up: each process warms its own connections (one shared counter over the warm-up
  requests), then waits; the parent starts the measured phase in all of them at one ``t0``, so no
  process measures while another still warms up;
- the brake (consecutive connect/stall failures) counts in shared memory: all stop together.

The parent merges the records by index (indices nobody returned, e.g. from a process that died,
become ``aborted`` records), sums the CPU time of all processes and keeps each one's, so that a
saturated worker is reported. Processes are started with ``spawn`` (no fork of a process that
may hold threads or a running loop); starting them (~0.5-1 s) is not part of the measured time.
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from optimizer.settings.config import LoadConfig, WorkloadConfig
from optimizer.loadgen import phases
from optimizer.loadgen.phases import brake_limit, concurrency_of, percentiles, schedule
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.schedwait import runqueue_wait_s, waited
from optimizer.loadgen.workload import RequestSet

__all__ = ["EVENTS_PER_WORKER", "STREAMS_PER_WORKER", "PoolRun", "run_pool", "suggest_workers", "usable_cores", "workers_for"]

STREAMS_PER_WORKER = 32  # closed loop: concurrent streams per process (C = 32 adds ~12 ms to the P99 on one core)
EVENTS_PER_WORKER = 3000.0  # open loop: expected token events/s per process
_START_TIMEOUT_S = 120.0  # spawn + import + warm-up of a worker, beyond the warm-up's own limit


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers_for(cfg: LoadConfig, workload: WorkloadConfig, cores: Optional[int] = None) -> int:
    """``load.client_workers``, or (0) as many as the load needs, at most half the host's usable
    cores (the other half is left to the server: vLLM's API server, engine core and workers), and
    never more than there are concurrent streams."""
    streams = cfg.concurrency if cfg.mode == "concurrency" else cfg.max_inflight
    if cfg.client_workers > 0:
        return max(1, min(cfg.client_workers, streams))
    if cfg.mode == "concurrency":
        want = math.ceil(cfg.concurrency / STREAMS_PER_WORKER)
    else:
        want = math.ceil(cfg.request_rate * workload.output_tokens / EVENTS_PER_WORKER)
    cap = max(1, (usable_cores() if cores is None else cores) // 2)
    return max(1, min(want, cap, streams))


def suggest_workers(workers: int, max_share: float, limit: float) -> int:
    return max(workers + 1, math.ceil(workers * max_share / (limit * 0.75)))


@dataclass(frozen=True)
class _Job:
    """What worker ``k`` of ``workers`` sends. Picklable (it crosses to a spawned process)."""

    ep: Endpoint
    rs: RequestSet
    cfg: LoadConfig
    n: int
    k: int
    workers: int
    brake_limit: int
    concurrency: int  # this worker's share (closed loop; the warm-up's in an open loop)
    offsets: tuple[float, ...] = ()  # open loop: the whole schedule
    max_inflight: int = 1  # open loop: this worker's share


def _share(total: int, k: int, workers: int) -> int:
    return total // workers + (1 if k < total % workers else 0)


class _SharedIndices:
    def __init__(self, value: Any) -> None:
        self.value = value

    def take(self) -> int:
        with self.value.get_lock():
            i = int(self.value.value)
            self.value.value = i + 1
        return i


def _worker_main(conn: Any, job: _Job, warm_counter: Any, counter: Any, brake_state: Any, done: Any) -> None:
    """Entry point of a worker process."""
    try:
        asyncio.run(_worker(conn, job, warm_counter, counter, brake_state, done))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


async def _worker(conn: Any, job: _Job, warm_counter: Any, counter: Any, brake_state: Any, done: Any) -> None:
    ep, rs, cfg = job.ep, job.rs, job.cfg
    brake = phases.Brake(job.brake_limit, brake_state)
    clients = phases.Clients(ep)

    def tick(_: int) -> None:
        with done.get_lock():
            done.value += 1

    try:
        warm: list[RequestResult] = []
        w0 = time.perf_counter()
        if cfg.warmup_requests > 0:
            wconc = max(1, min(job.concurrency, _share(cfg.warmup_requests, job.k, job.workers)))
            warm = await phases.closed_loop(
                ep, rs, phases.prepare(ep, rs, range(cfg.warmup_requests), warmup=True), cfg.warmup_requests, 0.0,
                wconc, True, None, clients, brake, _SharedIndices(warm_counter))
        warm_s = time.perf_counter() - w0
        if cfg.mode == "concurrency":
            prepared = phases.prepare(ep, rs, range(job.n)) if cfg.duration_s <= 0 else {}
            mine: list[int] = []
        else:
            mine = list(range(job.k, len(job.offsets), job.workers))
            prepared = phases.prepare(ep, rs, mine)
        conn.send(("ready", warm, warm_s))
        msg = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if msg[0] != "go":
            return
        t0: float = msg[1]
        gc.collect()
        gc.freeze()
        cpu0, wait0 = time.process_time(), runqueue_wait_s()
        lags: list[float] = []
        if cfg.mode == "concurrency":
            limit = phases.closed_loop_limit_s(ep, job.n, cfg.duration_s, cfg.concurrency)
            res = await phases.closed_loop(ep, rs, prepared, job.n, cfg.duration_s, job.concurrency, False, tick,
                                           clients, brake, _SharedIndices(counter), t0=t0, limit_s=limit)
        else:
            res, lags = await phases.open_loop(ep, prepared, mine, list(job.offsets), t0, job.max_inflight, tick,
                                               clients, brake)
        end = time.perf_counter()
        cpu, wait = time.process_time() - cpu0, waited(wait0)
        gc.unfreeze()
        conn.send(("done", res, lags, cpu, end, brake.reason, wait))
    finally:
        await clients.aclose()


async def _recv(conn: Any, deadline: float, proc: Any) -> Optional[tuple[Any, ...]]:
    """The next message from a worker, or None if it died or missed ``deadline`` (perf_counter)."""
    while time.perf_counter() < deadline:
        if conn.poll():
            try:
                return conn.recv()
            except (EOFError, OSError):
                return None
        if not proc.is_alive() and not conn.poll():
            return None
        await asyncio.sleep(0.02)
    return None


async def _collect(pending: dict[int, tuple[Any, Any]], deadline: float, done: Any,
                   progress: Optional[Callable[[str, int], None]]) -> list[tuple[Any, ...]]:
    """The workers' ``done`` messages of the measured phase, as they come (a worker that died or
    missed ``deadline`` sends none), logging progress meanwhile."""
    msgs: list[tuple[Any, ...]] = []
    last = -1
    while pending:
        for k, (c, p) in list(pending.items()):
            if c.poll() or not p.is_alive() or time.perf_counter() > deadline:
                m = await _recv(c, time.perf_counter() + 0.5, p)
                del pending[k]
                if m is not None and m[0] == "done":
                    msgs.append(m)
        if progress and done.value != last:
            last = done.value
            progress("load", last)
        await asyncio.sleep(0.02)
    return msgs


@dataclass(frozen=True)
class PoolRun:
    """What the worker processes measured, merged (the runner's ``LoadRun`` takes it over)."""

    warmup: tuple[RequestResult, ...]
    warmup_s: float
    results: tuple[RequestResult, ...]  # by index, as one process would return them
    duration_s: float
    cpu_by_process: tuple[float, ...]  # CPU s of each client process in the measured run, this one first
    wait_by_process: tuple[float, ...]  # run-queue wait s of each one's event-loop thread, same order
    dispatch_lag_ms: tuple[float, float, float]  # p50, p99, max (send - due)
    aborted: str  # why the run stopped issuing early ("": it did not)


async def run_pool(ep: Endpoint, rs: RequestSet, cfg: LoadConfig, n: int, workers: int,
                   progress: Optional[Callable[[str, int], None]]) -> PoolRun:
    """Warm up and measure with ``workers`` processes, as the in-process path does."""
    ctx = mp.get_context("spawn")
    offsets: tuple[float, ...] = tuple(schedule(cfg, n, rs.workload.seed)) if cfg.mode == "rate" else ()
    conc = concurrency_of(cfg)
    warm_counter, counter, done = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
    brake_state = ctx.Array("q", 2)
    procs, conns = [], []
    for k in range(workers):
        job = _Job(ep, rs, cfg, n, k, workers, brake_limit(cfg), max(1, _share(conc, k, workers)), offsets,
                   max(1, _share(cfg.max_inflight, k, workers)))
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child, job, warm_counter, counter, brake_state, done),
                        name=f"loadgen-{k}", daemon=True)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    reasons: list[str] = []
    try:
        w0 = time.perf_counter()
        warm_limit = phases.closed_loop_limit_s(ep, cfg.warmup_requests, 0.0, max(1, conc)) + _START_TIMEOUT_S
        ready = [await _recv(c, w0 + warm_limit, p) for c, p in zip(conns, procs)]
        warmup_s = time.perf_counter() - w0
        warmup = phases.missing([r for m in ready if m for r in m[1]], cfg.warmup_requests, True,
                                "a client process did not finish its warm-up")
        if progress:
            progress("warmup", len(warmup))
        cpu0, wait0 = time.process_time(), runqueue_wait_s()
        t0 = time.perf_counter() + 0.05
        for c, m in zip(conns, ready):
            if m is not None:
                c.send(("go", t0))
        if cfg.mode == "concurrency":
            limit = phases.closed_loop_limit_s(ep, n, cfg.duration_s, cfg.concurrency)
        else:
            limit = (offsets[-1] if offsets else 0.0) + ep.request_timeout_s + 30.0
        deadline = t0 + limit + 15.0
        msgs = await _collect({k: (conns[k], procs[k]) for k, m in enumerate(ready) if m is not None}, deadline,
                              done, progress)
        results: list[RequestResult] = [r for m in msgs for r in m[1]]
        lags: list[float] = [x for m in msgs for x in m[2]]
        cpu, ends, waits = [m[3] for m in msgs], [m[4] for m in msgs], [m[6] for m in msgs]
        reasons += [m[5] for m in msgs if m[5]]
        duration_s = (max(ends) if ends else time.perf_counter()) - t0
        own = time.process_time() - cpu0
        cpu_by_process, wait_by_process = (own, *cpu), (waited(wait0), *waits)
        expected = n if cfg.mode == "concurrency" else len(offsets)
        why = "a client process died or missed the run's hard deadline; not sent or not returned"
        if cfg.mode == "concurrency" and cfg.duration_s > 0:
            results = sorted(results, key=lambda r: r.index)
        else:
            results = phases.missing(results, expected, False, why)
        lag_ms = (math.nan, math.nan, math.nan)
        if lags:
            p50, p99 = percentiles(lags, (50, 99))
            lag_ms = (p50 * 1000.0, p99 * 1000.0, max(lags) * 1000.0)
    finally:
        for c in conns:
            try:
                c.send(("stop",))
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
    aborted = reasons[0] if reasons else "" if not brake_state[1] else \
        f"{brake_limit(cfg)} requests in a row failed to reach the server; stopped issuing"
    return PoolRun(tuple(warmup), warmup_s, tuple(results), duration_s, cpu_by_process, wait_by_process, lag_ms,
                   aborted)
