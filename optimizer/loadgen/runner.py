"""Drives the request set against a server: warm-up, then the measured run.

Closed loop (``load.mode=concurrency``): C workers, each with its own client, take the next
request as soon as their last one ends. Open loop (``load.mode=rate``): requests are due at
seeded Poisson (or constant) arrival times and start on time whatever the server does; their
latency counts from when they were due, so a client-side queue (``load.max_inflight``) or a late
event loop is never hidden (``LoadRun.dispatch_lag_ms`` says how late requests went out).

Nothing here waits without a deadline: every request is bounded by ``load.request_timeout_s``
(and ``load.stall_timeout_s`` between bytes), a run stops issuing requests once
``load.abort_after_failures`` requests in a row could not reach the server (connect errors or
stalls: it is gone or hung), and each phase sits under a hard deadline derived from
those limits; whatever is still open at that deadline is cancelled and recorded as a
``timeout``. Every request asked for yields exactly one record: a run against a server that dies
ends with ``connect``/``stream_broken`` records, and requests it never sent are ``aborted``.

The measured connections are the warm-up's (one pool per run), so the first measured requests
do not pay for TCP set-up, and the garbage collector's heap is frozen during the measured phase
(as ``vllm bench serve`` does) so that a full collection does not land in the P99.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import httpx

from optimizer.config import LoadConfig
from optimizer.loadgen.client import Endpoint, new_client, send
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.workload import RequestSet
from optimizer.stats import min_samples_for_upper_bound

__all__ = ["LoadRun", "arrival_times", "plan_requests", "run_load"]

log = logging.getLogger(__name__)

# failures that say "the server is not there": refused, or silent for load.stall_timeout_s (a
# request over load.request_timeout_s while bytes still flow is a slow server, not a gone one)
_GONE = frozenset({"connect", "stalled"})
_warned: set[str] = set()


@dataclass
class LoadRun:
    results: list[RequestResult] = field(default_factory=list)  # measured requests only
    warmup: list[RequestResult] = field(default_factory=list)
    duration_s: float = float("nan")  # wall time of the measured phase
    warmup_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU time of this process during the measured run
    num_requests: int = 0  # the count the run was planned with (after load.p99_sizing)
    aborted: str = ""  # why the run stopped issuing requests early ("" = it did not)
    dispatch_lag_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # p50, p99, max (send - due)
    notes: list[str] = field(default_factory=list)  # warnings worth showing beside the results


def arrival_times(n: int, rate: float, kind: str, seed: int) -> list[float]:
    """Offsets in seconds of n arrivals at ``rate`` per second. Pure and seeded."""
    rng = random.Random(f"{seed}-arrivals")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate) if kind == "poisson" else 1.0 / rate
    return out


def plan_requests(cfg: LoadConfig) -> tuple[int, str]:
    """The measured request count and a note when it is too small to bound the P99.

    ``load.p99_sizing``: ``warn`` keeps ``load.num_requests`` and returns the note; ``auto``
    raises it to :func:`~optimizer.stats.min_samples_for_upper_bound`; ``off`` says nothing.
    A duration-bounded closed loop cannot be sized in advance: the note (if any) comes after the
    run, from the number of successful requests."""
    need = min_samples_for_upper_bound(0.99, cfg.p99_confidence)
    n = cfg.num_requests
    if cfg.duration_s > 0:
        if cfg.mode == "rate":
            expected = int(cfg.duration_s * cfg.request_rate)
            if expected < need and cfg.p99_sizing != "off":
                return n, (f"load.duration_s={cfg.duration_s:g} at load.request_rate={cfg.request_rate:g} sends about "
                           f"{expected} requests; the P99 of TTFT and E2E needs >= {need} successful requests for "
                           f"an upper bound at {cfg.p99_confidence:.0%} confidence (its CI is reported)")
        return n, ""
    if n >= need or cfg.p99_sizing == "off":
        return n, ""
    if cfg.p99_sizing == "auto":
        return need, (f"load.num_requests raised from {n} to {need}: the fewest that bound the P99 from above at "
                      f"{cfg.p99_confidence:.0%} confidence (load.p99_sizing=auto)")
    return n, (f"load.num_requests={n} is too few to bound the P99 of TTFT and E2E from above at "
               f"{cfg.p99_confidence:.0%} confidence (needs >= {need} successful requests); the P99 is reported "
               f"with its CI. Set load.num_requests>={need} or load.p99_sizing=auto")


class _Clients:
    """Per-worker httpx clients (pool of one connection each), kept across the run's phases."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.free: list[httpx.AsyncClient] = []
        self.made: list[httpx.AsyncClient] = []

    def get(self) -> httpx.AsyncClient:
        if self.free:
            return self.free.pop()
        c = new_client(self.ep)
        self.made.append(c)
        return c

    def put(self, c: httpx.AsyncClient) -> None:
        self.free.append(c)

    async def aclose(self) -> None:
        async def close(c: httpx.AsyncClient) -> None:
            try:
                async with asyncio.timeout(5.0):
                    await c.aclose()
            except (TimeoutError, httpx.HTTPError, OSError, RuntimeError):
                pass

        await asyncio.gather(*(close(c) for c in self.made), return_exceptions=True)


class _Brake:
    """Trips after ``limit`` consecutive requests that could not reach the server."""

    def __init__(self, limit: int) -> None:
        self.limit, self.run, self.reason = limit, 0, ""

    def observe(self, r: RequestResult) -> None:
        if r.ok or r.error_kind not in _GONE:
            self.run = 0
            return
        self.run += 1
        if self.run >= self.limit and not self.reason:
            self.reason = (f"{self.run} requests in a row failed to reach the server ({r.error_kind}: "
                           f"{r.error[:160]}); stopped issuing")

    @property
    def tripped(self) -> bool:
        return bool(self.reason)


class _Clock:
    """When a phase really began (after its requests were built): its wall and CPU time start."""

    def __init__(self) -> None:
        self.wall = self.cpu = math.nan

    def start(self, at: Optional[float] = None) -> None:
        self.wall = time.perf_counter() if at is None else at
        self.cpu = time.process_time()


def _unsent(i: int, warmup: bool, why: str) -> RequestResult:
    return RequestResult(index=i, ok=False, error_kind="aborted", error=why[:500], t_start=time.perf_counter(),
                         warmup=warmup)


def _cut_off(i: int, t_start: float, warmup: bool, limit_s: float) -> RequestResult:
    return RequestResult(index=i, ok=False, error_kind="timeout", t_start=t_start, warmup=warmup,
                         error=f"still open at the run's hard deadline ({limit_s:.0f} s); cancelled")


async def _bounded(tasks: list[asyncio.Task[None]], limit_s: float) -> bool:
    """Wait for ``tasks`` up to ``limit_s``; cancel and reap the rest. True if all finished."""
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10.0)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]  # a bug in this module, not a request failure
    return not pending


async def _closed_loop(ep: Endpoint, rs: RequestSet, n: int, duration_s: float, concurrency: int,
                       warmup: bool, progress: Optional[Callable[[int], None]], clients: _Clients,
                       brake: _Brake, clock: Optional[_Clock] = None) -> list[RequestResult]:
    results: list[RequestResult] = []
    inflight: dict[int, float] = {}
    counter = iter(range(10**9))
    # a known count is built and encoded before the clock starts (drawing and encoding a 256-token
    # prompt costs ~0.2 ms, which would delay the other streams' timestamps)
    specs = [rs.spec(i, warmup=warmup) for i in range(n)] if duration_s <= 0 else []
    bodies = [ep.encode(s) for s in specs]
    if clock is not None:
        clock.start()
    stop_at = time.perf_counter() + duration_s if duration_s > 0 else None

    async def worker() -> None:
        client = clients.get()
        try:
            for i in counter:
                if (stop_at is None and i >= n) or (stop_at is not None and time.perf_counter() >= stop_at):
                    return
                if brake.tripped:
                    if stop_at is not None:
                        return
                    results.append(_unsent(i, warmup, brake.reason))
                    continue
                inflight[i] = time.perf_counter()
                spec = specs[i] if i < len(specs) else rs.spec(i, warmup=warmup)
                r = await send(client, ep, spec, warmup=warmup, body=bodies[i] if i < len(bodies) else None)
                del inflight[i]
                results.append(r)
                brake.observe(r)
                if progress:
                    progress(len(results))
                # let streams whose data is already here take their timestamps before this worker
                # spends CPU on starting its next request (a real server ends many streams at once)
                await asyncio.sleep(0)
        finally:
            clients.put(client)

    if stop_at is not None:
        limit_s = duration_s + ep.request_timeout_s + 30.0
    else:
        limit_s = math.ceil(n / concurrency) * ep.request_timeout_s + 30.0
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if not await _bounded(tasks, limit_s):
        results += [_cut_off(i, t, warmup, limit_s) for i, t in inflight.items()]
        if stop_at is None:
            done = {r.index for r in results}
            results += [_unsent(i, warmup, "not sent before the run's hard deadline") for i in range(n)
                        if i not in done]
    return sorted(results, key=lambda r: r.index)


async def _open_loop(ep: Endpoint, rs: RequestSet, cfg: LoadConfig, n: int,
                     progress: Optional[Callable[[int], None]], clients: _Clients,
                     brake: _Brake, clock: _Clock) -> tuple[list[RequestResult], list[float]]:
    if cfg.duration_s > 0:
        n = max(n, int(cfg.duration_s * cfg.request_rate) + 1)
    offsets = arrival_times(n, cfg.request_rate, cfg.arrival, rs.workload.seed)
    if cfg.duration_s > 0:
        offsets = [o for o in offsets if o < cfg.duration_s]
    specs = [rs.spec(i) for i in range(len(offsets))]
    bodies = [ep.encode(s) for s in specs]
    slots = asyncio.Semaphore(cfg.max_inflight)
    results: list[RequestResult] = []
    inflight: dict[int, float] = {}
    lags: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, due: float) -> None:
        async with slots:  # bounded: each holder is bounded by request_timeout_s
            client = clients.get()
            inflight[i] = due
            try:
                lags.append(time.perf_counter() - due)
                r = await send(client, ep, specs[i], t_start=due, body=bodies[i])
            finally:
                clients.put(client)
                inflight.pop(i, None)
        results.append(r)
        brake.observe(r)
        if progress:
            progress(len(results))

    t0 = time.perf_counter() + 0.01  # the first arrival; the measured phase starts with it
    clock.start(t0)
    limit_s = (offsets[-1] if offsets else 0.0) + ep.request_timeout_s + 30.0

    async def dispatch() -> None:
        for i, off in enumerate(offsets):
            due = t0 + off
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if brake.tripped:
                results.extend(_unsent(j, False, brake.reason) for j in range(i, len(offsets)))
                return
            tasks.append(asyncio.create_task(one(i, due)))

    d = asyncio.create_task(dispatch())
    finished = await _bounded([d], limit_s)
    remaining = max(1.0, limit_s - (time.perf_counter() - t0))
    finished = finished and await _bounded(tasks, remaining)
    if not finished:
        results += [_cut_off(i, t, False, limit_s) for i, t in inflight.items()]
        done = {r.index for r in results}
        results += [_unsent(i, False, "not sent before the run's hard deadline") for i in range(len(offsets))
                    if i not in done]
    return sorted(results, key=lambda r: r.index), lags


def _note(run: LoadRun, msg: str) -> None:
    if not msg:
        return
    run.notes.append(msg)
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


async def run_load(ep: Endpoint, rs: RequestSet, cfg: LoadConfig,
                   progress: Optional[Callable[[str, int], None]] = None) -> LoadRun:
    """Warm up (closed loop at the configured concurrency, results kept apart), then measure."""
    run = LoadRun()
    n, msg = plan_requests(cfg)
    if n != cfg.num_requests:
        cfg = dataclasses.replace(cfg, num_requests=n)
    run.num_requests = n
    _note(run, msg)
    conc = cfg.concurrency if cfg.mode == "concurrency" else min(cfg.max_inflight, cfg.concurrency)
    brake = _Brake(cfg.abort_after_failures or max(8, 2 * conc))
    clients = _Clients(ep)
    try:
        if cfg.warmup_requests > 0:
            w0 = time.perf_counter()
            wconc = max(1, min(conc, cfg.warmup_requests))
            run.warmup = await _closed_loop(ep, rs, cfg.warmup_requests, 0.0, wconc, True,
                                            (lambda k: progress("warmup", k)) if progress else None, clients,
                                            brake)
            run.warmup_s = time.perf_counter() - w0
        tick = (lambda k: progress("load", k)) if progress else None
        gc.collect()
        gc.freeze()
        clock = _Clock()
        try:
            if cfg.mode == "concurrency":
                run.results = await _closed_loop(ep, rs, n, cfg.duration_s, cfg.concurrency, False, tick, clients,
                                                 brake, clock)
            else:
                run.results, lags = await _open_loop(ep, rs, cfg, n, tick, clients, brake, clock)
                if lags:
                    p50, p99 = (float(x) * 1000.0 for x in _percentiles(lags, (50, 99)))
                    run.dispatch_lag_ms = (p50, p99, max(lags) * 1000.0)
        finally:
            # from the first request (prompts are built before) to the last answer, failures included
            run.client_cpu_s = time.process_time() - clock.cpu if clock.cpu == clock.cpu else 0.0
            run.duration_s = time.perf_counter() - clock.wall if clock.wall == clock.wall else math.nan
            gc.unfreeze()
    finally:
        await clients.aclose()
    run.aborted = brake.reason
    if brake.reason:
        _note(run, "the run was cut short: " + brake.reason)
    if cfg.duration_s > 0 and cfg.p99_sizing != "off":
        need = min_samples_for_upper_bound(0.99, cfg.p99_confidence)
        n_ok = sum(1 for r in run.results if r.ok)
        if n_ok < need:
            _note(run, f"only {n_ok} successful requests in load.duration_s={cfg.duration_s:g}: too few to bound "
                       f"the P99 of TTFT and E2E from above at {cfg.p99_confidence:.0%} confidence (needs >= {need})")
    return run


def _percentiles(values: list[float], ps: tuple[float, ...]) -> list[float]:
    import numpy as np

    return [float(x) for x in np.percentile(np.asarray(values, dtype=float), ps)]
