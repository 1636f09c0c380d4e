"""The report's data step: FrozenTrials in, small immutable tuples out. No plotting here.

Every figure and table of the report is drawn from :class:`ReportData` alone, so what the page
says can be tested without a browser. This module assembles it: the trial table
(:mod:`~optimizer.reporting.trial_table`), the headline (:mod:`~optimizer.reporting.study_summary`)
and, here, the per-trial series the charts draw (latency CDFs, server gauges, where the time went).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from optuna.trial import FrozenTrial

from optimizer.confirmation.plan import search_trials
from optimizer.record import Timings, TrialRecord
from optimizer.reporting.capacity_section import CapacityData, CapacityTrial, build_capacity_data
from optimizer.reporting.levers import ImportanceInfo, importance_info
from optimizer.reporting.study_summary import EngineRow, SummaryInfo, engine_label, engine_rows, slo_metric, \
    study_config, summarize
from optimizer.reporting.trial_table import METRICS, Status, TrialInfo, classify, pareto_front, trial_info
from optimizer.server.startlog import START_PHASES

__all__ = ["METRICS", "PHASES", "START_LABELS", "CdfSeries", "CompileCacheInfo", "EngineRow", "ImportanceInfo",
           "PhaseRow", "ReportData", "Status", "SummaryInfo", "TelemetryRow", "Timeline", "TrialInfo",
           "build_report_data", "classify", "engine_label", "engine_rows", "importance_info", "pareto_front",
           "study_config", "trial_info"]

PHASES = (("wait_s", "wait for GPU"), ("start_s", "server start"), ("warmup_s", "warm-up"),
          ("load_s", "load test"), ("stop_s", "server stop"))  # Timings field, label
# the server start split by its log (optimizer/server/startlog.py); "server start" holds the starts the
# log did not split (no log, or one that ended before the engine was up)
START_LABELS = tuple(f"start: {label}" for label, _ in START_PHASES)
_CDF_POINTS = 400


class CdfSeries(NamedTuple):
    number: int
    label: str
    curves: dict[str, tuple[list[float], list[float]]]  # metric -> (ms ascending, cumulative fraction)


class TelemetryRow(NamedTuple):
    number: int
    status: Status
    kv_peak_pct: float
    preemptions: float
    running_peak: float
    waiting_peak: float
    kv_tokens: float  # measured KV capacity (vLLM's own number)
    pred_kv_tokens: float  # the memory estimate's


class Timeline(NamedTuple):
    number: int
    label: str
    t_s: list[float]
    gauges: dict[str, list[float]]  # kv (percent), running, waiting


class PhaseRow(NamedTuple):
    number: int
    status: Status
    seconds: dict[str, float]  # phase label -> s (missing phases: 0; START_LABELS before "warm-up"), plus "other"
    wall_s: float
    compile_cache_hit: Optional[bool] = None  # the server loaded its compiled model (None: not known)


class CompileCacheInfo(NamedTuple):
    """How the study's server starts fared with vLLM's compile cache."""

    hits: int = 0  # starts that loaded the compiled model
    misses: int = 0  # starts that compiled
    unknown: int = 0  # starts whose log did not say (no log, eager mode, a start that failed early)
    keys: int = 0  # distinct compile cache keys among the starts

    @property
    def rate(self) -> float:
        """Hits over the starts whose log said; NaN when none did."""
        known = self.hits + self.misses
        return self.hits / known if known else math.nan


class ReportData(NamedTuple):
    summary: SummaryInfo
    trials: list[TrialInfo]
    pareto: list[int]  # trial numbers on the throughput/P99 front, by P99
    importances: list[ImportanceInfo]
    cdfs: list[CdfSeries]
    telemetry: list[TelemetryRow]
    timelines: list[Timeline]
    phases: list[PhaseRow]
    total_s: float  # sum of the trials' wall times
    span_s: float  # first start to last finish
    capacity: Optional[CapacityData] = None  # load.mode=capacity studies (optimizer/reporting/capacity_section.py)
    compile_cache: CompileCacheInfo = CompileCacheInfo()


def _cdf(samples: Sequence[Any]) -> tuple[list[float], list[float]]:
    xs = sorted(float(x) for x in samples if isinstance(x, (int, float)) and math.isfinite(x))
    n = len(xs)
    if n == 0:
        return [], []
    idx = range(n) if n <= _CDF_POINTS else sorted({round(k * (n - 1) / (_CDF_POINTS - 1)) for k in range(_CDF_POINTS)})
    return [xs[i] for i in idx], [(i + 1) / n for i in idx]


def _highlighted(infos: list[TrialInfo], best: Optional[int], baseline: Optional[int], k: int = 5) -> list[int]:
    """Baseline, best, the next feasible ones by throughput, the fastest infeasible one."""
    chosen = list(dict.fromkeys(n for n in (baseline, best) if n is not None))
    by_thr = sorted((i for i in infos if i.measured), key=lambda i: -i.throughput)
    extra = [i.number for i in by_thr if i.status == Status.FEASIBLE][:2]
    extra += [i.number for i in by_thr if i.status == Status.INFEASIBLE][:1]
    for n in extra:
        if n not in chosen and len(chosen) < k:
            chosen.append(n)
    return chosen


def _label(i: TrialInfo, best: Optional[int]) -> str:
    role = "baseline" if i.baseline else "best" if i.number == best else i.status.value
    if i.baseline and i.number == best:
        role = "baseline = best"
    return f"#{i.number} {role}"


def _gauge(rows: list[tuple[float, dict[str, float]]], key: str, factor: float = 1.0) -> list[float]:
    return [g[key] * factor if key in g else math.nan for _, g in rows]


def _timeline(rec: TrialRecord, number: int, label: str) -> Optional[Timeline]:
    rows = rec.measurement.kv_timeline if rec.measurement is not None else []
    if not rows:
        return None
    return Timeline(number, label, [r[0] for r in rows],
                    {"kv": _gauge(rows, "vllm:kv_cache_usage_perc", 100.0),  # vLLM reports a fraction
                     "running": _gauge(rows, "vllm:num_requests_running"),
                     "waiting": _gauge(rows, "vllm:num_requests_waiting")})


def build_report_data(name: str, trials: Sequence[FrozenTrial], study_attrs: dict[str, Any],
                      fallback_config: Optional[dict[str, Any]] = None) -> ReportData:
    """Everything the report shows. ``study_attrs["config"]`` (what the study was run with) wins
    over ``fallback_config`` (the config of this invocation)."""
    cfg = study_config(study_attrs, fallback_config)
    metric = slo_metric(cfg)
    engines = engine_rows(trials)
    trials = sorted(search_trials(trials), key=lambda t: t.number)  # confirmation runs: their own section
    records = {t.number: TrialRecord.from_trial(t) for t in trials}
    infos = [trial_info(t, metric, records[t.number]) for t in trials]
    summary = summarize(name, trials, records, infos, cfg)._replace(engines=engines)
    best_n = summary.best.number if summary.best else None
    picks = _highlighted(infos, best_n, summary.baseline.number if summary.baseline else None)
    cdfs, timelines = _highlighted_series(infos, records, picks, best_n)
    phases = [_phase_row(i, records[i.number]) for i in infos]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    searched = [CapacityTrial(i.number, _label(i, best_n), i.baseline, c.result) for i in infos
                if (c := records[i.number].capacity) is not None]
    capacity = build_capacity_data(searched, picks, best_n, metric, summary.slo_ms)
    return ReportData(summary=summary, trials=infos, pareto=pareto_front(infos),
                      importances=importance_info(trials, metric), cdfs=cdfs, telemetry=_telemetry(infos, records),
                      timelines=timelines, phases=phases, total_s=sum(p.wall_s for p in phases), span_s=span,
                      capacity=capacity, compile_cache=_compile_cache(records.values()))


def _highlighted_series(infos: list[TrialInfo], records: dict[int, TrialRecord], picks: list[int],
                        best: Optional[int]) -> tuple[list[CdfSeries], list[Timeline]]:
    """The latency CDFs and gauge timelines of the highlighted trials ``picks``, where they were recorded."""
    info_by = {i.number: i for i in infos}
    cdfs = []
    timelines = []
    for n in picks:
        label = _label(info_by[n], best)
        m = records[n].measurement
        samples = m.latency_samples if m is not None else {}
        curves = {metric: _cdf(v) for metric, v in samples.items() if metric in METRICS}
        if any(xs for xs, _ in curves.values()):
            cdfs.append(CdfSeries(n, label, curves))
        tl = _timeline(records[n], n, label)
        if tl is not None:
            timelines.append(tl)
    return cdfs, timelines


def _telemetry(infos: list[TrialInfo], records: dict[int, TrialRecord]) -> list[TelemetryRow]:
    """One row per trial whose server's gauges were scraped: peaks and KV capacity, measured and predicted."""
    telemetry = []
    for i in infos:
        rec = records[i.number]
        if rec.measurement is None or not math.isfinite(rec.measurement.telemetry.kv_usage_peak):
            continue
        srv = rec.measurement.telemetry
        telemetry.append(TelemetryRow(i.number, i.status, srv.kv_usage_peak * 100, srv.preemptions, srv.running_peak,
                                      srv.waiting_peak, srv.kv_cache_tokens,
                                      float(rec.memory.kv_tokens) if rec.memory else math.nan))
    return telemetry


def _phase_row(i: TrialInfo, rec: TrialRecord) -> PhaseRow:
    timings = rec.timings or Timings()
    secs: dict[str, float] = {}
    for field, label in PHASES:
        v = getattr(timings, field)
        v = max(0.0, v) if math.isfinite(v) else 0.0
        if field == "start_s":
            split = rec.start_log.phases(v) if rec.start_log is not None and v > 0 else None
            secs.update(zip(START_LABELS, split.values() if split else [0.0] * len(START_LABELS)))
            v = 0.0 if split else v
        secs[label] = v
    wall = i.wall_s if math.isfinite(i.wall_s) else sum(secs.values())
    secs["other"] = max(0.0, wall - sum(secs.values()))
    return PhaseRow(i.number, i.status, secs, wall, rec.start_log.compile_cache_hit if rec.start_log else None)


def _compile_cache(records: Iterable[TrialRecord]) -> CompileCacheInfo:
    started = [r for r in records if r.timings is not None and math.isfinite(r.timings.start_s)]
    logs = [r.start_log for r in started if r.start_log is not None]
    hits = sum(1 for s in logs if s.compile_cache_hit is True)
    misses = sum(1 for s in logs if s.compile_cache_hit is False)
    return CompileCacheInfo(hits, misses, len(started) - hits - misses, len({s.compile_key for s in logs if s.compile_key}))
