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

Above one client process's comfortable load (``load.client_workers``, automatic by default) the
same phases run in several worker processes (``optimizer/loadgen/pool.py``) sharing one schedule;
their records are merged by index, exactly as one process would have produced them. The request
bodies carry the workload's sampling parameters (``workload.temperature`` and co.).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from optimizer.settings.config import LoadConfig
from optimizer.loadgen import phases, pool
from optimizer.loadgen.phases import arrival_times, brake_limit, concurrency_of, percentiles, schedule
from optimizer.loadgen.client import Endpoint, Sampling
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.schedwait import runqueue_wait_s, waited
from optimizer.loadgen.workload import RequestSet
from optimizer.core.stats import min_samples_for_upper_bound

__all__ = ["LoadRun", "arrival_times", "plan_requests", "run_load", "schedule"]

log = logging.getLogger(__name__)
_warned: set[str] = set()
_HARD_DEADLINE = "not sent before the run's hard deadline"


@dataclass
class LoadRun:
    results: list[RequestResult] = field(default_factory=list)  # measured requests only
    warmup: list[RequestResult] = field(default_factory=list)
    duration_s: float = float("nan")  # wall time of the measured phase
    warmup_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU time of the client (all its processes) during the measured run
    num_requests: int = 0  # the count the run was planned with (after load.p99_sizing)
    aborted: str = ""  # why the run stopped issuing requests early ("" = it did not)
    dispatch_lag_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # p50, p99, max (send - due)
    notes: list[str] = field(default_factory=list)  # warnings worth showing beside the results
    client_workers: int = 1  # client processes that sent the load
    # CPU seconds of each client process during the measured run (the parent first when several)
    client_cpu_by_process: list[float] = field(default_factory=list)
    # seconds each client process's event-loop thread waited in the run queue for a CPU during the
    # measured run (same order; NaN where /proc has no schedstat): optimizer/loadgen/schedwait.py
    client_wait_by_process: list[float] = field(default_factory=list)

    @property
    def client_cpu_max_share(self) -> float:
        """The busiest client process's share of one core over the measured run."""
        if not self.client_cpu_by_process or not self.duration_s > 0:
            return math.nan
        return max(self.client_cpu_by_process) / self.duration_s

    @property
    def client_wait_s(self) -> float:
        """Run-queue wait of all client processes during the measured run (NaN: not measured)."""
        return math.fsum(self.client_wait_by_process) if self.client_wait_by_process else math.nan

    @property
    def client_wait_max_share(self) -> float:
        """The most-delayed client process's run-queue wait, as a share of the measured run."""
        known = [w for w in self.client_wait_by_process if math.isfinite(w)]
        if not known or not self.duration_s > 0:
            return math.nan
        return max(known) / self.duration_s


def plan_requests(cfg: LoadConfig) -> tuple[int, str]:
    """The measured request count and a note when it is too small to bound the P99.

    ``load.p99_sizing``: ``warn`` keeps ``load.num_requests`` and returns the note; ``auto``
    raises it to :func:`~optimizer.core.stats.min_samples_for_upper_bound`; ``off`` says nothing.
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


def _note(run: LoadRun, msg: str, key: str = "") -> None:
    """Add ``msg`` to the run's notes and log it once per process (per ``key``: one of its kind)."""
    if not msg:
        return
    run.notes.append(msg)
    if (key or msg) not in _warned:
        _warned.add(key or msg)
        log.warning("%s", msg)


async def _run_here(ep: Endpoint, rs: RequestSet, cfg: LoadConfig, n: int,
                    progress: Optional[Callable[[str, int], None]], run: LoadRun) -> str:
    """Warm up and measure in this process. Returns the brake's reason ("" if it did not trip)."""
    conc = concurrency_of(cfg)
    brake = phases.Brake(brake_limit(cfg))
    clients = phases.Clients(ep)
    try:
        if cfg.warmup_requests > 0:
            w0 = time.perf_counter()
            wconc = max(1, min(conc, cfg.warmup_requests))
            run.warmup = phases.missing(await phases.closed_loop(
                ep, rs, phases.prepare(ep, rs, range(cfg.warmup_requests), warmup=True), cfg.warmup_requests, 0.0,
                wconc, True, (lambda k: progress("warmup", k)) if progress else None, clients, brake,
                phases.LocalIndices()), cfg.warmup_requests, True, _HARD_DEADLINE)
            run.warmup_s = time.perf_counter() - w0
        tick = (lambda k: progress("load", k)) if progress else None
        if cfg.mode == "concurrency":
            prepared = phases.prepare(ep, rs, range(n)) if cfg.duration_s <= 0 else {}
        else:
            offsets = schedule(cfg, n, rs.workload.seed)
            prepared = phases.prepare(ep, rs, range(len(offsets)))
        gc.collect()
        gc.freeze()
        t0 = cpu0 = wait0 = math.nan
        try:
            if cfg.mode == "concurrency":
                def started(t: float) -> None:
                    nonlocal t0, cpu0, wait0
                    t0, cpu0, wait0 = t, time.process_time(), runqueue_wait_s()

                res = await phases.closed_loop(ep, rs, prepared, n, cfg.duration_s, cfg.concurrency, False, tick,
                                               clients, brake, phases.LocalIndices(), on_start=started)
                run.results = res if cfg.duration_s > 0 else phases.missing(res, n, False, _HARD_DEADLINE)
            else:
                # the first arrival starts the phase
                t0, cpu0, wait0 = time.perf_counter() + 0.01, time.process_time(), runqueue_wait_s()
                res, lags = await phases.open_loop(ep, prepared, list(range(len(offsets))), offsets, t0,
                                                   cfg.max_inflight, tick, clients, brake)
                run.results = phases.missing(res, len(offsets), False, _HARD_DEADLINE)
                if lags:
                    p50, p99 = percentiles(lags, (50, 99))
                    run.dispatch_lag_ms = (p50 * 1000.0, p99 * 1000.0, max(lags) * 1000.0)
        finally:
            # from the first request (prompts are built before) to the last answer, failures included
            if t0 == t0:
                run.client_cpu_s = time.process_time() - cpu0
                run.duration_s = time.perf_counter() - t0
                run.client_cpu_by_process = [run.client_cpu_s]
                run.client_wait_by_process = [waited(wait0)]
            gc.unfreeze()
    finally:
        await clients.aclose()
    return brake.reason


async def run_load(ep: Endpoint, rs: RequestSet, cfg: LoadConfig,
                   progress: Optional[Callable[[str, int], None]] = None) -> LoadRun:
    """Warm up (closed loop at the configured concurrency, results kept apart), then measure.

    The requests carry ``rs.workload``'s sampling parameters and ``ignore_eos`` (unless ``ep``
    turns it off). With more than one client process (``load.client_workers``; 0 sizes it from
    the load and the host's cores) the load is spread over worker processes, and the records
    merged by index: the same records, in the same order, as one process would return."""
    run = LoadRun()
    n, msg = plan_requests(cfg)
    if n != cfg.num_requests:
        cfg = dataclasses.replace(cfg, num_requests=n)
    run.num_requests = n
    _note(run, msg)
    w = rs.workload
    ep = dataclasses.replace(ep, sampling=Sampling.of(w), ignore_eos=ep.ignore_eos and w.ignore_eos)
    run.client_workers = pool.workers_for(cfg, w)
    if run.client_workers > 1:
        pr = await pool.run_pool(ep, rs, cfg, n, run.client_workers, progress)
        run.warmup, run.warmup_s, run.results, run.duration_s = list(pr.warmup), pr.warmup_s, list(pr.results), pr.duration_s
        run.client_cpu_by_process, run.client_wait_by_process = list(pr.cpu_by_process), list(pr.wait_by_process)
        run.client_cpu_s, run.dispatch_lag_ms, reason = sum(pr.cpu_by_process), pr.dispatch_lag_ms, pr.aborted
    else:
        reason = await _run_here(ep, rs, cfg, n, progress, run)
    run.aborted = reason
    if reason:
        _note(run, "the run was cut short: " + reason)
    if cfg.duration_s > 0 and cfg.p99_sizing != "off":
        need = min_samples_for_upper_bound(0.99, cfg.p99_confidence)
        n_ok = sum(1 for r in run.results if r.ok)
        if n_ok < need:
            _note(run, f"only {n_ok} successful requests in load.duration_s={cfg.duration_s:g}: too few to bound "
                       f"the P99 of TTFT and E2E from above at {cfg.p99_confidence:.0%} confidence (needs >= {need})")
    share = run.client_cpu_max_share
    if share > cfg.client_cpu_warn:
        more = pool.suggest_workers(run.client_workers, share, cfg.client_cpu_warn)
        _note(run, f"the busiest load-generator process used {share:.0%} of a core (load.client_cpu_warn="
                   f"{cfg.client_cpu_warn:g}): the client may be adding to the latencies it measures. Run it with "
                   f"more processes (load.client_workers={more}, now {run.client_workers}) or on more free cores")
    wait = run.client_wait_max_share
    if wait > cfg.client_wait_warn:
        _note(run, f"the load generator waited {run.client_wait_s:.1f} s for a CPU during the {run.duration_s:.1f} s "
                   f"run (its busiest process {wait:.0%} of it; load.client_wait_warn={cfg.client_wait_warn:g}): "
                   f"the host's cores were busy, so it read the streams late and its TTFT and ITL read high "
                   f"(a stream read in one piece makes TTFT equal E2E; E2E only gains the last wait). Judge E2E "
                   f"(slo.metric=e2e), leave the client a free core, or run `python -m optimizer.loadtest` "
                   f"from another host",
              key="client_wait")
    return run
