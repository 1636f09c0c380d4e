"""The two ways of sending a phase's requests, on one event loop: closed loop and open loop.

Used as they are by one process (``runner.run_load`` with ``load.client_workers=1``) and by each
worker process of ``pool``: the request indices come from an :class:`IndexSource` (a counter in
one process, a counter in shared memory across processes) and the brake from a :class:`Brake`
(likewise), so a closed loop spread over processes still takes "the next request" from one
sequence, and the server's disappearance stops every process.

Every index a phase takes yields one record; indices never taken (a hard deadline, a worker
that died) are filled in by the caller (:func:`missing`), which knows the whole request count.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from typing import Any, Callable, Iterable, Optional, Protocol

import httpx

from optimizer.loadgen.client import Endpoint, new_client, send
from optimizer.loadgen.records import RequestResult, RequestSpec
from optimizer.loadgen.workload import RequestSet
from optimizer.settings.config import LoadConfig

__all__ = ["Brake", "arrival_times", "brake_limit", "concurrency_of", "percentiles", "schedule", "Clients", "IndexSource", "LocalIndices", "Prepared", "closed_loop", "closed_loop_limit_s",
           "missing", "open_loop", "prepare", "unsent"]

# failures that say "the server is not there": refused, or silent for load.stall_timeout_s (a
# request over load.request_timeout_s while bytes still flow is a slow server, not a gone one)
_GONE = frozenset({"connect", "stalled"})


class IndexSource(Protocol):
    def take(self) -> int: ...


class LocalIndices:
    def __init__(self) -> None:
        self._it = itertools.count()

    def take(self) -> int:
        return next(self._it)


class Brake:
    """Trips after ``limit`` consecutive requests that could not reach the server. ``shared``
    (optional): a ``multiprocessing`` array of two ints (the run of failures, tripped) so that
    every client process counts one run and stops together."""

    def __init__(self, limit: int, shared: Any = None) -> None:
        self.limit, self.run, self._reason, self.shared = limit, 0, "", shared

    def observe(self, r: RequestResult) -> None:
        gone = not r.ok and r.error_kind in _GONE
        if self.shared is not None:
            with self.shared.get_lock():
                self.shared[0] = self.shared[0] + 1 if gone else 0
                run = self.shared[0]
                if run >= self.limit:
                    self.shared[1] = 1
        else:
            self.run = self.run + 1 if gone else 0
            run = self.run
        if gone and run >= self.limit and not self._reason:
            self._reason = (f"{run} requests in a row failed to reach the server ({r.error_kind}: "
                            f"{r.error[:160]}); stopped issuing")

    @property
    def tripped(self) -> bool:
        return bool(self._reason) or (self.shared is not None and bool(self.shared[1]))

    @property
    def reason(self) -> str:
        if self._reason or not self.tripped:
            return self._reason
        return f"{self.limit} requests in a row failed to reach the server (seen by another client process); stopped issuing"


class Clients:
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


def unsent(i: int, warmup: bool, why: str) -> RequestResult:
    return RequestResult(index=i, ok=False, error_kind="aborted", error=why[:500], t_start=time.perf_counter(),
                         warmup=warmup)


def _cut_off(i: int, t_start: float, warmup: bool, limit_s: float) -> RequestResult:
    return RequestResult(index=i, ok=False, error_kind="timeout", t_start=t_start, warmup=warmup,
                         error=f"still open at the run's hard deadline ({limit_s:.0f} s); cancelled")


def missing(results: list[RequestResult], n: int, warmup: bool, why: str) -> list[RequestResult]:
    """``results`` plus an ``aborted`` record for each index below ``n`` without one, by index."""
    done = {r.index for r in results}
    return sorted(results + [unsent(i, warmup, why) for i in range(n) if i not in done], key=lambda r: r.index)


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


async def _until(t0: Optional[float]) -> float:
    """Sleep until ``t0`` (a ``perf_counter`` time, the same clock in every process); return it."""
    if t0 is None:
        return time.perf_counter()
    while (d := t0 - time.perf_counter()) > 0:
        await asyncio.sleep(d)
    return t0


def closed_loop_limit_s(ep: Endpoint, n: int, duration_s: float, concurrency: int) -> float:
    if duration_s > 0:
        return duration_s + ep.request_timeout_s + 30.0
    return math.ceil(n / concurrency) * ep.request_timeout_s + 30.0


Prepared = dict[int, tuple[RequestSpec, bytes]]


def prepare(ep: Endpoint, rs: RequestSet, indices: Iterable[int], warmup: bool = False) -> Prepared:
    """Requests built and encoded ahead, before the clock starts: drawing and encoding a
    256-token prompt costs ~0.2 ms, which inside the run would delay other streams' timestamps."""
    out: Prepared = {}
    for i in indices:
        spec = rs.spec(i, warmup=warmup)
        out[i] = (spec, ep.encode(spec))
    return out


async def closed_loop(ep: Endpoint, rs: RequestSet, prepared: Prepared, n: int, duration_s: float,
                      concurrency: int, warmup: bool, progress: Optional[Callable[[int], None]],
                      clients: Clients, brake: Brake, indices: IndexSource, t0: Optional[float] = None,
                      on_start: Optional[Callable[[float], None]] = None,
                      limit_s: Optional[float] = None) -> list[RequestResult]:
    """``concurrency`` workers take the next index from ``indices`` as their last request ends,
    from ``t0`` (default: now) on, until ``n`` (or ``duration_s`` from ``t0``). Returns the records
    of the indices this loop took, including ``timeout`` records of those open at the deadline."""
    results: list[RequestResult] = []
    inflight: dict[int, float] = {}
    start = await _until(t0)
    if on_start is not None:
        on_start(start)
    stop_at = start + duration_s if duration_s > 0 else None

    async def worker() -> None:
        client = clients.get()
        try:
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                i = indices.take()
                if stop_at is None and i >= n:
                    return
                if brake.tripped:
                    if stop_at is not None:
                        return
                    results.append(unsent(i, warmup, brake.reason))
                    continue
                inflight[i] = time.perf_counter()
                spec, body = prepared[i] if i in prepared else (rs.spec(i, warmup=warmup), None)
                r = await send(client, ep, spec, warmup=warmup, body=body)
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

    limit = limit_s if limit_s is not None else closed_loop_limit_s(ep, n, duration_s, concurrency)
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if not await _bounded(tasks, limit):
        results += [_cut_off(i, t, warmup, limit) for i, t in inflight.items()]
    return sorted(results, key=lambda r: r.index)


async def open_loop(ep: Endpoint, prepared: Prepared, mine: list[int], offsets: list[float], t0: float,
                    max_inflight: int, progress: Optional[Callable[[int], None]], clients: Clients,
                    brake: Brake) -> tuple[list[RequestResult], list[float]]:
    """Send request ``i`` (for ``i`` in ``mine``, prepared) at ``t0 + offsets[i]``, at most
    ``max_inflight`` open at once; latency counts from the due time. Returns the records and each
    one's send lag (task start - due)."""
    slots = asyncio.Semaphore(max_inflight)
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
                spec, body = prepared[i]
                r = await send(client, ep, spec, t_start=due, body=body)
            finally:
                clients.put(client)
                inflight.pop(i, None)
        results.append(r)
        brake.observe(r)
        if progress:
            progress(len(results))

    limit_s = (offsets[-1] if offsets else 0.0) + ep.request_timeout_s + 30.0

    async def dispatch() -> None:
        for k, i in enumerate(mine):
            due = t0 + offsets[i]
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if brake.tripped:
                results.extend(unsent(j, False, brake.reason) for j in mine[k:])
                return
            tasks.append(asyncio.create_task(one(i, due)))

    d = asyncio.create_task(dispatch())
    finished = await _bounded([d], limit_s + max(0.0, t0 - time.perf_counter()))
    remaining = max(1.0, limit_s - (time.perf_counter() - t0))
    finished = finished and await _bounded(tasks, remaining)
    if not finished:
        results += [_cut_off(i, t, False, limit_s) for i, t in inflight.items()]
    return sorted(results, key=lambda r: r.index), lags


def arrival_times(n: int, rate: float, kind: str, seed: int) -> list[float]:
    """Offsets in seconds of n arrivals at ``rate`` per second. Pure and seeded."""
    rng = random.Random(f"{seed}-arrivals")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate) if kind == "poisson" else 1.0 / rate
    return out


def schedule(cfg: LoadConfig, n: int, seed: int) -> list[float]:
    """The open loop's arrival offsets (s from its start): ``n`` of them, or those within
    ``load.duration_s``. Pure and seeded: the one schedule every client process shares."""
    if cfg.duration_s > 0:
        n = max(n, int(cfg.duration_s * cfg.request_rate) + 1)
    offsets = arrival_times(n, cfg.request_rate, cfg.arrival, seed)
    return [o for o in offsets if o < cfg.duration_s] if cfg.duration_s > 0 else offsets


def brake_limit(cfg: LoadConfig) -> int:
    """Requests failing in a row (before reaching the server) that stop a run."""
    return cfg.abort_after_failures or max(8, 2 * concurrency_of(cfg))


def concurrency_of(cfg: LoadConfig) -> int:
    """The users a run keeps busy: load.concurrency, capped by load.max_inflight in an open loop."""
    return cfg.concurrency if cfg.mode == "concurrency" else min(cfg.max_inflight, cfg.concurrency)


def percentiles(values: list[float], ps: tuple[float, ...]) -> list[float]:
    import numpy as np

    return [float(x) for x in np.percentile(np.asarray(values, dtype=float), ps)]
