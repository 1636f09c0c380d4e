"""The real probe: one load level against a running server, through the load generator.

:class:`LoadProbe` is the probe function of :func:`optimizer.capacity.search.find_capacity`:
each call runs :func:`optimizer.loadgen.runner.run_load` once (sized by
:mod:`optimizer.capacity.sizing`), optionally inside a telemetry sampler (KV-cache peak,
preemptions), and judges the result (:func:`optimizer.capacity.judge.judge`). A step that
lengthens a probe runs more requests with a fresh seed and judges the two runs' records
together (their measured durations added). The server must already be warm and running.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from optimizer.capacity.curve import upper_tail
from optimizer.capacity.judge import judge
from optimizer.capacity.result import ProbeResult
from optimizer.capacity.search import Step
from optimizer.capacity.sizing import probe_load_config, probe_workload
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import LoadSummary, summarize
from optimizer.server.telemetry import ServerStats
from optimizer.settings.config import LoadConfig, SloConfig

__all__ = ["LoadProbe", "ProbeRun", "Telemetry"]


@dataclass(frozen=True)
class ProbeRun:
    """What a probe measured beyond its judged :class:`ProbeResult`: the full load summary, the
    request records and the server's telemetry (of its last run, when lengthened), for the caller
    that records one probe as a trial's measurement."""

    summary: LoadSummary
    results: tuple[RequestResult, ...]
    stats: Optional[ServerStats] = None
    timeline: tuple[tuple[float, dict[str, float]], ...] = ()
    warmup_s: float = 0.0
    warmup_errors: int = 0
    client_cpu_s: float = math.nan
    client_wait_s: float = math.nan  # the client's run-queue wait, and its busiest process's share
    client_wait_share: float = math.nan


class Telemetry(Protocol):
    """What the probe needs of a server telemetry sampler (``optimizer.server.telemetry.TelemetrySampler``)."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> Any: ...

    def stats(self) -> ServerStats: ...


class LoadProbe:
    """Measures one probe per call. ``telemetry``: a factory of a fresh sampler per run (None: no
    KV/preemption figures); ``progress``: ``run_load``'s progress callback."""

    def __init__(self, ep: Endpoint, rs: RequestSet, load: LoadConfig, slo: SloConfig, *,
                 telemetry: Optional[Callable[[], Telemetry]] = None,
                 progress: Optional[Callable[[str, int], None]] = None) -> None:
        self.ep, self.rs, self.load, self.slo = ep, rs, load, slo
        self.control = load.capacity.control
        self.telemetry, self.progress = telemetry, progress
        # the records of the last probe, kept until it is judged (a lengthening step merges them)
        self._last: tuple[float, list[RequestResult], float, dict[str, float]] = (math.nan, [], 0.0, {})
        self.runs: dict[float, ProbeRun] = {}  # load -> what its (last, merged) probe measured

    async def __call__(self, step: Step) -> ProbeResult:
        cfg = probe_load_config(self.load, self.control, step.load, first=step.first)
        if step.extend is not None:
            cfg = dataclasses.replace(cfg, num_requests=max(1, math.ceil(
                (self.load.capacity.lengthen - 1) * step.extend.n_requests)))
        workload = probe_workload(self.rs.workload, step.run)
        rs = dataclasses.replace(self.rs, workload=workload)
        tel_stats: dict[str, float] = {}
        st: Optional[ServerStats] = None
        timeline: tuple[tuple[float, dict[str, float]], ...] = ()
        if self.telemetry is not None:
            async with self.telemetry() as tel:
                run = await run_load(self.ep, rs, cfg, self.progress)
            st = tel.stats()  # a ServerStats
            timeline = tuple(getattr(tel, "timeline", ()))
            tel_stats = {"srv_kv_usage_peak": st.kv_usage_peak, "srv_preemptions": st.preemptions}
        else:
            run = await run_load(self.ep, rs, cfg, self.progress)
        results, duration = list(run.results), run.duration_s
        seed = workload.seed
        if step.extend is not None and self._last[0] == step.load:
            _, prev, prev_s, prev_tel = self._last
            results, duration = prev + results, prev_s + duration
            seed = step.extend.seed
            tel_stats = _merge_telemetry(prev_tel, tel_stats)
        self._last = (step.load, results, duration, tel_stats)
        summary = summarize(results, duration, self.load.p99_confidence)
        self.runs[step.load] = ProbeRun(summary, tuple(results), st, timeline, run.warmup_s,
                                        sum(1 for r in run.warmup if not r.ok), run.client_cpu_s,
                                        run.client_wait_s, run.client_wait_max_share)
        judged = judge(step.load, summary, self.slo, seed=seed, lengthened=step.extend is not None,
                       aborted=run.aborted, telemetry=tel_stats)
        sample = _metric_ms(results, self.slo.metric)
        return dataclasses.replace(judged, tail_ms=upper_tail(sample), tail_n=len(sample))


def _metric_ms(results: list[RequestResult], metric: str) -> list[float]:
    """The successful requests' values of ``metric`` in ms, as :func:`~optimizer.measures.metrics.summarize`
    reads them."""
    ok = [r for r in results if r.ok]
    if metric == "ttft":
        return [r.ttft * 1000.0 for r in ok]
    if metric == "itl":
        return [x * 1000.0 for r in ok for x in r.itl]
    return [r.latency * 1000.0 for r in ok]


def _merge_telemetry(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    out = dict(b)
    for key, pick in (("srv_kv_usage_peak", max), ("srv_preemptions", lambda x, y: x + y)):
        x, y = a.get(key, math.nan), b.get(key, math.nan)
        out[key] = pick(x, y) if x == x and y == y else (x if x == x else y)
    return out
