"""Drives the request set against a server: warm-up, then the measured run.

Closed loop (``load.mode=concurrency``): C workers, each with its own client, take the next
request as soon as their last one ends. Open loop (``load.mode=rate``): requests are due at
seeded Poisson (or constant) arrival times and start on time whatever the server does; their
latency counts from when they were due, so a client-side queue is never hidden. Every wait has
a deadline (per request; the whole run is bounded by the sum).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import httpx

from optimizer.config import LoadConfig
from optimizer.loadgen.client import Endpoint, new_client, send
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.workload import RequestSet

__all__ = ["LoadRun", "arrival_times", "run_load"]


@dataclass
class LoadRun:
    results: list[RequestResult] = field(default_factory=list)  # measured requests only
    warmup: list[RequestResult] = field(default_factory=list)
    duration_s: float = float("nan")  # wall time of the measured phase
    warmup_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU time of this process during the measured run


def arrival_times(n: int, rate: float, kind: str, seed: int) -> list[float]:
    """Offsets in seconds of n arrivals at ``rate`` per second. Pure and seeded."""
    rng = random.Random(f"{seed}-arrivals")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate) if kind == "poisson" else 1.0 / rate
    return out


async def _closed_loop(ep: Endpoint, rs: RequestSet, n: int, duration_s: float, concurrency: int,
                       warmup: bool, progress: Optional[Callable[[int], None]]) -> list[RequestResult]:
    results: list[RequestResult] = []
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + duration_s if duration_s > 0 else None

    async def worker() -> None:
        async with new_client(ep) as client:
            for i in counter:
                if (stop_at is None and i >= n) or (stop_at is not None and time.perf_counter() >= stop_at):
                    return
                results.append(await send(client, ep, rs.spec(i, warmup=warmup), warmup=warmup))
                if progress:
                    progress(len(results))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r.index)


async def _open_loop(ep: Endpoint, rs: RequestSet, cfg: LoadConfig, n: int,
                     progress: Optional[Callable[[int], None]]) -> list[RequestResult]:
    if cfg.duration_s > 0:
        n = max(n, int(cfg.duration_s * cfg.request_rate) + 1)
    offsets = arrival_times(n, cfg.request_rate, cfg.arrival, rs.workload.seed)
    if cfg.duration_s > 0:
        offsets = [o for o in offsets if o < cfg.duration_s]
    pool: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    made: list[httpx.AsyncClient] = []
    slots = asyncio.Semaphore(cfg.max_inflight)
    results: list[RequestResult] = []
    t0 = time.perf_counter() + 0.05

    async def one(i: int, offset: float) -> None:
        due = t0 + offset
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        async with slots:
            client = pool.get_nowait() if not pool.empty() else None
            if client is None:
                client = new_client(ep)
                made.append(client)
            try:
                results.append(await send(client, ep, rs.spec(i), t_start=due))
            finally:
                pool.put_nowait(client)
        if progress:
            progress(len(results))

    try:
        await asyncio.gather(*(one(i, o) for i, o in enumerate(offsets)))
    finally:
        await asyncio.gather(*(c.aclose() for c in made), return_exceptions=True)
    return sorted(results, key=lambda r: r.index)


async def run_load(ep: Endpoint, rs: RequestSet, cfg: LoadConfig,
                   progress: Optional[Callable[[str, int], None]] = None) -> LoadRun:
    """Warm up (closed loop at the configured concurrency, results kept apart), then measure."""
    run = LoadRun()
    if cfg.warmup_requests > 0:
        w0 = time.perf_counter()
        conc = min(cfg.concurrency if cfg.mode == "concurrency" else cfg.max_inflight, cfg.warmup_requests)
        run.warmup = await _closed_loop(ep, rs, cfg.warmup_requests, 0.0, max(1, conc), True,
                                        (lambda k: progress("warmup", k)) if progress else None)
        run.warmup_s = time.perf_counter() - w0
    cpu0, m0 = time.process_time(), time.perf_counter()
    tick = (lambda k: progress("load", k)) if progress else None
    if cfg.mode == "concurrency":
        run.results = await _closed_loop(ep, rs, cfg.num_requests, cfg.duration_s, cfg.concurrency, False, tick)
    else:
        run.results = await _open_loop(ep, rs, cfg, cfg.num_requests, tick)
    run.client_cpu_s = time.process_time() - cpu0
    run.duration_s = time.perf_counter() - m0  # wall time of the measured phase, failures included
    return run
