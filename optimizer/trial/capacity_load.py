"""The load strategy of a ``load.mode=capacity`` trial: the capacity search on the trial's warm server.

:class:`CapacityLadder` is the trial's :class:`~optimizer.trial.load.LoadStrategy` in this mode; the
trial's after-load step (death check, quality probe, record) is the fixed-load trial's.

:func:`measure_capacity` runs :func:`optimizer.capacity.find_capacity` once the server is ready
(its first probe carries the warm-up), with a :class:`~optimizer.capacity.LoadProbe` that scrapes
the server's ``/metrics`` during each probe. The cap is ``load.capacity.max``, or else
:func:`~optimizer.capacity.default_cap` of the trial's ``max_num_seqs`` (vLLM's default where the
trial leaves it unset: ``load.max_inflight``). Each judged probe goes to ``report(value, step)``
(the loop passes ``optuna.Trial.report``: the probes are the trial's intermediate values) and to
the log.

The trial then reads as a fixed-load trial does: its :class:`~optimizer.record.Measurement` is
the probe at the capacity (infeasible: the lowest probe), and its outcome is the throughput there
(``load.capacity.value``: output tok/s or req/s) with the search's graded constraints; the
:class:`~optimizer.record.Capacity` part keeps every probe.

Early stop (``load.capacity.early_stop``, on by default): given the study's incumbent (the best
feasible trial so far, read again after each judged probe, so an incumbent found meanwhile by
another worker counts) and its lower confidence bound in the unit the study ranks
(``Incumbent.low_value``: ``load.capacity.value`` at the lower end of its capacity's interval), the
search stops as soon as its own upper bound on that value is below it (rule 6 of
:mod:`optimizer.capacity.search`). The trial's value is then its throughput at the highest load
that passed, a lower bound; the record keeps the upper bound too (``cap_upper_value``) and says it
stopped early and against which trial.

``slo.p99_ms=auto`` (:mod:`optimizer.trial.calibrate`, "Capacity mode"): the baseline trial
(``calibrates``) first measures its unloaded latency (:func:`~optimizer.trial.calibrate.light_load`,
one user; this run also warms the server up) and judges its whole search by the limit calibrated
from it, returned in
:attr:`CapacityMeasure.calibration` for the loop to store with the study; any other trial whose
config still says ``auto`` (the study had no calibration when it started: parallel workers) waits
for the baseline's before its first probe (:func:`~optimizer.trial.calibrate.wait`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from optimizer.capacity import CapacityResult, CapacitySearch, LoadProbe, ProbeResult, ProbeRun, SearchPlan
from optimizer.capacity import default_cap, find_capacity, probe_workload
from optimizer.capacity.curve import fitted
from optimizer.core.errors import ServerDied
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import Outcome
from optimizer.record import Capacity, Measurement, ThroughputCI
from optimizer.server.telemetry import TelemetrySampler
from optimizer.settings.config import Config
from optimizer.trial import calibrate
from optimizer.trial.calibrate import Calibration
from optimizer.trial.load import Loaded, measurement_of
from optimizer.trial.noise import throughput_interval

__all__ = ["CalibrationHooks", "CapacityLadder", "CapacityMeasure", "Incumbent", "Reporter", "lower_value",
           "measure_capacity", "outcome_of"]

log = logging.getLogger(__name__)

Reporter = Callable[[float, int], None]  # (intermediate value, step): optuna.Trial.report
# slo.p99_ms=auto, a trial other than the baseline: (the study's calibration, is a baseline running?)
CalibrationHooks = tuple[Callable[[], Optional[Calibration]], Callable[[], bool]]


class Incumbent(NamedTuple):
    """The study's best feasible trial so far, its capacity (users or requests/s) and the lower
    confidence bound of its value (``load.capacity.value`` at the low end of its capacity's interval;
    NaN: none, and no early stop against it)."""

    number: int
    load: float
    low_value: float = math.nan


def lower_value(r: CapacityResult, value: str) -> float:
    """The lower confidence bound of a search's value: ``value`` measured at the low end of its
    fitted capacity interval (a probed load; 0.0 where the interval reaches below every probe)."""
    r = fitted(r)
    if not r.low == r.low:
        return math.nan
    if r.low <= 0:
        return 0.0
    vals = [getattr(p, value) for p in r.probes if p.load == r.low and not p.aborted]
    vals = [v for v in vals if v == v]
    return min(vals) if vals else math.nan


@dataclass(frozen=True)
class CapacityMeasure:
    capacity: Capacity
    measurement: Optional[Measurement]  # the probe at the capacity (infeasible: the lowest); None: none ran
    outcome: Outcome
    warmup_s: float  # the first probe's warm-up
    load_s: float  # the whole search, its warm-up excluded
    calibration: Optional[Calibration] = None  # slo.p99_ms=auto: what this (baseline) trial calibrated
    # the output tok/s interval of the probe at the capacity (load.capacity.value=output_tok_s, feasible)
    throughput_ci: Optional[ThroughputCI] = None


def outcome_of(r: CapacityResult, value: str) -> Outcome:
    """The trial's score: the throughput at the capacity and the search's constraints (graded
    from the lowest probe when it failed), with the fixed-load trial's other keys."""
    constraints = {"slo": 1.0, "errors": 1.0} | {k: float(v) for k, v in r.constraints.items()}
    constraints |= {"startup": 0.0, "memory": 0.0}
    feasible = r.feasible and all(v <= 0 for v in constraints.values())
    return Outcome(value=r.throughput(value) if r.feasible else 0.0, constraints=constraints, feasible=feasible)


def _measurement(run: ProbeRun) -> Measurement:
    return measurement_of(run.summary, run.stats, run.results, timeline=run.timeline, warmup_errors=run.warmup_errors,
                          client_cpu_s=run.client_cpu_s, client_wait_s=run.client_wait_s,
                          client_wait_share=run.client_wait_share)


@dataclass(frozen=True)
class CapacityLadder:
    """The capacity search as the trial's load strategy (:class:`~optimizer.trial.load.LoadStrategy`);
    the fields are :func:`measure_capacity`'s arguments."""

    cfg: Config
    max_num_seqs: Optional[int]
    tag: str
    report: Optional[Reporter] = None
    progress: Optional[Callable[[str, int], None]] = None
    incumbent: Optional[Callable[[], Optional[Incumbent]]] = None
    calibrates: bool = False
    calibration: Optional[CalibrationHooks] = None
    during: str = "the capacity search"

    async def run(self, ep: Endpoint, rs: RequestSet, headers: Optional[dict[str, str]]) -> Loaded:
        cm = await measure_capacity(self.cfg, ep, rs, headers, self.max_num_seqs, self.tag, self.report,
                                    self.progress, self.incumbent, self.calibrates, self.calibration)
        return Loaded(cm.measurement, cm.warmup_s, cm.load_s, throughput_ci=cm.throughput_ci, outcome=cm.outcome,
                      capacity=cm.capacity, calibration=cm.calibration)


async def measure_capacity(cfg: Config, ep: Endpoint, rs: RequestSet, headers: Optional[dict[str, str]],
                           max_num_seqs: Optional[int], tag: str, report: Optional[Reporter] = None,
                           progress: Optional[Callable[[str, int], None]] = None,
                           incumbent: Optional[Callable[[], Optional[Incumbent]]] = None,
                           calibrates: bool = False, calibration: Optional[CalibrationHooks] = None,
                           ) -> CapacityMeasure:
    """Search the warm server at ``ep`` (see the module docstring); ``incumbent`` reads the
    study's incumbent (None: none yet), for the early stop. With ``cfg.slo.p99_ms=auto``:
    ``calibrates`` (the baseline) measures the limit first, else ``calibration`` gives the study's.

    Raises:
        ServerDied: the baseline's light-load run served no request to calibrate on.
        NotCalibrated: no baseline calibrated the limit in time."""
    c = cfg.load.capacity
    plan = SearchPlan.of(c, default_cap(cfg.load, max_num_seqs))
    probe = LoadProbe(ep, rs, cfg.load, cfg.slo, progress=progress,
                      telemetry=lambda: TelemetrySampler(ep.base_url, 1.0, headers))
    cal: Optional[Calibration] = None
    light_warmup_s = math.nan
    t0 = time.monotonic()
    if cfg.slo.is_auto and calibrates:
        cal, light_warmup_s = await _calibrate(cfg, ep, rs, progress, tag)
        cfg = calibrate.resolved(cfg, cal)
    elif cfg.slo.is_auto:
        get, coming = calibration or ((lambda: None), (lambda: False))
        cfg = calibrate.resolved(cfg, calibrate.wait(get, coming, cfg.server.start_timeout_s))
    probe.slo = cfg.slo  # resolved: the limit the search judges by
    before_s = time.monotonic() - t0  # the calibration run (or the wait for it), with its warm-up
    unit = "users" if plan.control == "concurrency" else "req/s"
    log.info("%s capacity search: %s from %g up to %g %s, P99 %s <= %g ms", tag, plan.control, plan.start, plan.cap,
             unit, cfg.slo.metric, cfg.slo.limit_ms)
    step = [0]

    def on_probe(p: ProbeResult) -> None:
        log.info("%s probe %g %s: %s, P99 %s %.0f ms, %.1f output tok/s%s", tag, p.load, unit,
                 "pass" if p.passed else f"FAIL ({p.failed_on})", cfg.slo.metric, p.p99_ms, p.output_tok_s,
                 ", lengthened" if p.lengthened else "")
        v = p.output_tok_s if c.value == "output_tok_s" else p.req_s
        if report is not None and v == v:  # an aborted probe measured nothing: no intermediate value
            report(float(v), step[0])
        step[0] += 1

    seen: list[Incumbent] = []

    def needed() -> float:
        inc = incumbent() if incumbent is not None else None
        if inc is None or not inc.low_value == inc.low_value:
            return math.nan  # no incumbent (or no bound of it): nothing to stop below
        seen.append(inc)
        return inc.low_value

    early = c.early_stop and incumbent is not None
    result = await find_capacity(probe, CapacitySearch(plan, cfg.slo, stop_below=needed if early else None,
                                                       value=c.value), on_probe=on_probe)
    inc_by = next((i for i in reversed(seen) if i.low_value == result.early_stop_bound), None)
    by = inc_by.number if inc_by is not None else None
    if result.stopped_early and inc_by is not None:
        result = dataclasses.replace(result, early_stop_load=inc_by.load)
    if result.stopped_early:
        log.info("%s stopped early: its %s is at most %.4g, below the incumbent's lower bound %.4g (trial %s): %s; "
                 "its value is the throughput at %g %s, a lower bound (load.capacity.early_stop=false measures it "
                 "to the end)", tag, c.value, result.upper_value, result.early_stop_bound, by, result.stop_reason,
                 result.value, unit)
    else:
        log.info("%s capacity %g %s (%s: %s)", tag, result.value, unit, result.limited_by.value, result.stop_reason)
    at = result.value if result.feasible else min((p.load for p in result.probes if not p.aborted), default=math.nan)
    run = probe.runs.get(at)
    first = probe.runs.get(plan.start)
    # the run that carried the server's warm-up: the calibration's, when this trial calibrated
    warmup_s = light_warmup_s if cal is not None else first.warmup_s if first is not None else math.nan
    spent_s = result.duration_s + before_s
    load_s = spent_s - warmup_s if warmup_s == warmup_s else spent_s
    ci = throughput_interval(run.results, cfg.load.p99_confidence) \
        if run is not None and result.feasible and c.value == "output_tok_s" else None
    return CapacityMeasure(Capacity(result, by if result.stopped_early else None), _measurement(run) if run is not None else None,
                           outcome_of(result, str(c.value)), warmup_s, load_s, cal, ci)


async def _calibrate(cfg: Config, ep: Endpoint, rs: RequestSet, progress: Optional[Callable[[str, int], None]],
                     tag: str) -> tuple[Calibration, float]:
    """The baseline's light-load run on its warm server, the limit calibrated from it, and the
    run's warm-up time (the server's warm-up: the search's first probe comes after it)."""
    light = calibrate.light_load(cfg.load)
    log.info("%s slo.p99_ms=auto: measuring vLLM's defaults unloaded (1 user, %d requests after %d warm-up) "
             "to calibrate the SLO", tag, light.num_requests, light.warmup_requests)
    run = await run_load(ep, dataclasses.replace(rs, workload=probe_workload(rs.workload, -1)), light, progress)
    summary = summarize(run.results, run.duration_s, cfg.load.p99_confidence)
    try:
        cal = calibrate.from_summary(summary, cfg, users=1)
    except ValueError as exc:
        raise ServerDied(f"the SLO could not be calibrated (slo.p99_ms=auto): {exc}: the baseline served no "
                         f"request at one user ({summary.n_requests} sent, first error: "
                         f"{next((r.error for r in run.results if not r.ok), 'none')})",
                         reason="calibration", deterministic=False) from None
    log.info("%s %s", tag, cal.describe())
    if (warning := cal.spread_warning()) is not None:
        log.warning("%s %s", tag, warning)
    return cal, run.warmup_s
