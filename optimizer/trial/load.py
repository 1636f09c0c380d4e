"""How a trial loads its warm server: one interface, two strategies.

A trial is start -> load -> after-load -> record (:mod:`optimizer.trial.trial`). The load step is a
:class:`LoadStrategy`, chosen by ``load.mode``:

- :class:`FixedLoad` (``closed``, ``open``): one load test at the configured concurrency or rate,
  with the server's ``/metrics`` sampled alongside. Its outcome is scored after the load, once the
  latency limit is resolved (``slo.p99_ms=auto`` may wait for another worker's baseline).
- :class:`~optimizer.trial.capacity_load.CapacityLadder` (``capacity``): the capacity search,
  which judges each probe by the limit it resolved before its first one, so it returns its outcome.

Either returns a :class:`Loaded`; what follows the load (the death check, the quality probe, the
limit, the outcome) is the trial's one after-load step, the same for every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from optimizer.core.stats import thin_sample
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.records import RequestResult
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import LoadSummary, summarize
from optimizer.measures.objective import Outcome
from optimizer.record import Capacity, Measurement, ThroughputCI
from optimizer.server.telemetry import ServerStats, TelemetrySampler
from optimizer.settings.config import LoadConfig
from optimizer.trial.calibrate import Calibration
from optimizer.trial.noise import throughput_interval

__all__ = ["FixedLoad", "LoadStrategy", "Loaded", "Progress", "measurement_of"]

Progress = Callable[[str, int], None]  # (phase, requests done): the trial's progress log


@dataclass(frozen=True)
class Loaded:
    """What a load strategy measured on the trial's server."""

    measurement: Optional[Measurement]  # None: nothing ran (a capacity search with no probe)
    warmup_s: float
    load_s: float  # the measured load, its warm-up excluded
    throughput_ci: Optional[ThroughputCI] = None  # where the trial's value is the measured output tok/s
    # the outcome, where the strategy already judged by its resolved limit (the capacity ladder);
    # None: the after-load step scores ``summary`` by the limit it resolves
    outcome: Optional[Outcome] = None
    summary: Optional[LoadSummary] = None
    capacity: Optional[Capacity] = None  # load.mode=capacity: every probe of the search
    calibration: Optional[Calibration] = None  # slo.p99_ms=auto: calibrated by this (baseline) trial's load


class LoadStrategy(Protocol):
    """Loads the warm server at ``ep`` with requests of ``rs``; ``headers``: its API key's."""

    @property
    def during(self) -> str:
        """What the load is called in messages ("the load test", "the capacity search")."""
        ...

    async def run(self, ep: Endpoint, rs: RequestSet, headers: Optional[dict[str, str]]) -> Loaded: ...


def measurement_of(summary: LoadSummary, stats: Optional[ServerStats], results: Sequence[RequestResult], *,
                   timeline: Sequence[tuple[float, dict[str, float]]], warmup_errors: int, client_cpu_s: float,
                   client_wait_s: float, client_wait_share: float) -> Measurement:
    """The trial's :class:`~optimizer.record.Measurement` of one load run (``results``: measured requests)."""
    ok = [r for r in results if r.ok]
    if stats is None:  # no /metrics read (an aborted probe)
        stats = ServerStats(**{k: math.nan for k in ServerStats.__dataclass_fields__})
    duration_s = summary.duration_s
    return Measurement(
        summary, stats, client_cpu_s=client_cpu_s,
        client_cpu_share=client_cpu_s / duration_s if duration_s > 0 else math.nan,
        warmup_errors=warmup_errors, first_error=next((r.error for r in results if not r.ok), ""),
        latency_samples={"ttft": thin_sample([r.ttft * 1000 for r in ok]),
                         "e2e": thin_sample([r.latency * 1000 for r in ok]),
                         "itl": thin_sample([x * 1000 for r in ok for x in r.itl])},
        kv_timeline=list(timeline[-600:]), client_wait_s=client_wait_s, client_wait_share=client_wait_share)


@dataclass(frozen=True)
class FixedLoad:
    """One load test at ``load.concurrency`` users (closed loop) or ``load.rate`` (open loop)."""

    load: LoadConfig
    progress: Optional[Progress] = None
    during: str = "the load test"

    async def run(self, ep: Endpoint, rs: RequestSet, headers: Optional[dict[str, str]]) -> Loaded:
        async with TelemetrySampler(ep.base_url, 1.0, headers) as tel:
            run = await run_load(ep, rs, self.load, self.progress)
        summary = summarize(run.results, run.duration_s, self.load.p99_confidence)
        m = measurement_of(summary, tel.stats(), run.results, timeline=tel.timeline,
                           warmup_errors=sum(1 for r in run.warmup if not r.ok), client_cpu_s=run.client_cpu_s,
                           client_wait_s=run.client_wait_s, client_wait_share=run.client_wait_max_share)
        return Loaded(m, run.warmup_s, run.duration_s, summary=summary,
                      throughput_ci=throughput_interval(run.results, self.load.p99_confidence))
