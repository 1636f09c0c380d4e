"""The report's data step: FrozenTrials in, small immutable tuples out. No plotting here.

Every figure and table of the report is drawn from :class:`ReportData` alone, so what the page
says can be tested without a browser. Each trial is read through its
:class:`~optimizer.record.TrialRecord` (absent parts: that stage was not reached; NaN: not
measured); nothing here reads a user attr by its key.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from optuna.trial import FrozenTrial, TrialState

from optimizer.capacity.curve import fitted
from optimizer.config import LoadConfig, SloConfig
from optimizer.errors import FailureReason
from optimizer.metrics import LATENCY_METRICS
from optimizer.record import Timings, TrialRecord
from optimizer.server.startlog import START_PHASES
from optimizer.reporting.capacity import CapacityData, CapacityTrial, build_capacity_data
from optimizer.reporting.levers import ImportanceInfo, Levers, importance_info, main_levers
from optimizer.reporting.serving import portable_command
from optimizer.study.calibrate import ATTR as CALIBRATION_ATTR
from optimizer.study.confirm_plan import search_trials
from optimizer.study.results import engine_versions, is_feasible, params_as_set, study_result

__all__ = ["METRICS", "PHASES", "START_LABELS", "CdfSeries", "CompileCacheInfo", "ImportanceInfo", "PhaseRow", "ReportData", "Status", "SummaryInfo",
           "TelemetryRow", "Timeline", "TrialInfo", "build_report_data", "classify", "importance_info",
           "pareto_front", "study_config", "trial_info"]

METRICS = LATENCY_METRICS
PHASES = (("wait_s", "wait for GPU"), ("start_s", "server start"), ("warmup_s", "warm-up"),
          ("load_s", "load test"), ("stop_s", "server stop"))  # Timings field, label
# the server start split by its log (optimizer/server/startlog.py); "server start" holds the starts the
# log did not split (no log, or one that ended before the engine was up)
START_LABELS = tuple(f"start: {label}" for label, _ in START_PHASES)
_DEFAULT_SLO = SloConfig()  # for a study whose stored config lacks the SLO
_DEFAULT_WAIT_WARN = LoadConfig().client_wait_warn  # ... or load.client_wait_warn (older studies)
_CDF_POINTS = 400


class Status(str, Enum):
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"  # measured, but broke the SLO or the error budget
    FAILED = "failed"  # no measurement: the server could not start, or the trial failed
    RULED_OUT = "ruled out"  # the memory estimate refused it; no server was started
    RUNNING = "running"  # not finished (still running, or left behind by a killed run)


class TrialInfo(NamedTuple):
    number: int
    status: Status
    state: str
    baseline: bool
    throughput: float  # output tokens/s; NaN when not measured
    p99: float  # P99 of the SLO metric, ms
    p99s: dict[str, float]  # metric -> P99 ms
    error_rate: float
    params: dict[str, Any]
    constraints: dict[str, float]
    failure: str
    detail: str
    attempt: int
    retry_of: Optional[int]
    wall_s: float
    worker: str = ""  # <host>/w<index> that ran it ("" in studies from before parallel workers)
    gpus: str = ""  # the CUDA_VISIBLE_DEVICES its server got ("" where none were pinned)
    capacity: float = math.nan  # load.mode=capacity: the highest passing load (NaN: none, or no search)
    cap_limited_by: str = ""  # what limited it ("" without a search)
    cap_interval: str = ""  # the capacity fitted over every probe with its interval ("" without one)

    @property
    def measured(self) -> bool:
        return math.isfinite(self.throughput) and math.isfinite(self.p99)


class SummaryInfo(NamedTuple):
    study_name: str
    config: dict[str, Any]  # what the study was run with (``asdict(Config)``, as stored in the study)
    slo_metric: str
    slo_ms: float
    max_error_rate: float
    use_upper_bound: bool  # feasibility judged on the P99's upper confidence bound
    counts: dict[str, int]  # "trials" and one key per Status value
    best: Optional[TrialInfo]
    baseline: Optional[TrialInfo]
    gain: float  # best / baseline - 1 (NaN without a feasible baseline)
    margin: float  # 1 - judged P99 / SLO for the best trial (its ``slo`` constraint, negated)
    serve_config: dict[str, Any]  # the best trial's ``serve_config`` (vLLM flag names, underscores)
    trial_command: str  # the command the best trial's server ran (portable_command: no paths of this machine)
    extra_args: list[str]  # flags every server got that serve_config does not hold
    vllm_version: str
    notes: list[str]  # plain-language statements about what is missing or odd
    levers: Levers = Levers([], [], 0, "")  # what drove the result, with its measured effect (reporting.levers)
    engine_params: dict[str, Any] = {}  # what the best trial's server ran (Setup.engine_params)
    engine: str = ""  # the vLLM (and torch build) the ranked trials ran on, in words ("" unknown)
    engines: tuple[EngineRow, ...] = ()  # every vLLM version the study ran on, oldest first


class EngineRow(NamedTuple):
    """One vLLM version a study ran on: its trials and the defaults its baseline resolved."""

    version: str
    label: str  # vLLM and torch build in words
    search_trials: int
    confirmation_runs: int
    baseline: Optional[int]  # the trial of its latest baseline with recorded defaults (search or confirmation)
    defaults: dict[str, Any]  # as that vLLM resolved them (EngineArgs), {} unknown
    logged: dict[str, Any]  # as its baseline server logged them at start-up


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
    capacity: Optional[CapacityData] = None  # load.mode=capacity studies (optimizer/reporting/capacity.py)
    compile_cache: CompileCacheInfo = CompileCacheInfo()


def classify(t: FrozenTrial, rec: Optional[TrialRecord] = None) -> Status:
    rec = rec or TrialRecord.from_trial(t)
    if t.state == TrialState.COMPLETE:
        if is_feasible(t):
            return Status.FEASIBLE
        if rec.ruled_out:
            return Status.RULED_OUT
        if rec.failure is not None or not rec.measured:
            return Status.FAILED
        return Status.INFEASIBLE
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return Status.RUNNING
    return Status.FAILED


def trial_info(t: FrozenTrial, slo_metric: str, rec: Optional[TrialRecord] = None) -> TrialInfo:
    rec = rec or TrialRecord.from_trial(t)
    m = rec.measurement
    thr = m.summary.output_tok_s if m is not None else math.nan
    if t.state == TrialState.COMPLETE and t.value is not None and rec.failure is None:
        thr = float(t.value)
    wall = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else rec.timings.total_s if rec.timings is not None else math.nan
    p99s = {metric: rec.p99(metric) for metric in METRICS}
    failure = rec.failure.label if rec.failure else FailureReason.INTERRUPTED.value if rec.interrupted else ""
    detail = (rec.failure.detail if rec.failure else "") or (m.first_error if m is not None else "") \
        or rec.lineage.retry_reason
    error_rate = m.summary.error_rate if m is not None else math.nan
    return TrialInfo(
        number=t.number, status=classify(t, rec), state=t.state.name, baseline=rec.lineage.baseline,
        throughput=thr, p99=rec.p99(slo_metric), p99s=p99s, error_rate=error_rate, params=params_as_set(t),
        constraints=dict(t.constraints or {}), failure=failure,
        detail=detail or _violations(t, slo_metric, rec.p99(slo_metric), error_rate),
        attempt=rec.lineage.attempt, retry_of=rec.lineage.retry_of, wall_s=wall, worker=rec.setup.worker,
        gpus=rec.setup.gpus, capacity=rec.capacity.result.value if rec.capacity else math.nan,
        cap_limited_by=rec.capacity.limit_label() if rec.capacity else "",
        cap_interval=fitted(rec.capacity.result).interval_text() if rec.capacity else "")  # early stop: below which incumbent


def _violations(t: FrozenTrial, metric: str, p99: float, error_rate: float) -> str:
    """Why a measured trial is infeasible, in words ('' when it is not)."""
    c = t.constraints or {}
    out = []
    if c.get("slo", 0.0) > 0 and math.isfinite(p99):
        out.append(f"P99 {metric} {p99:.0f} ms is {c['slo']:.0%} over the SLO")
    if c.get("errors", 0.0) > 0 and math.isfinite(error_rate):
        out.append(f"error rate {error_rate:.1%} is over the allowed rate")
    return "; ".join(out)


def pareto_front(infos: Sequence[TrialInfo]) -> list[int]:
    """Measured trials no other beats on both throughput (higher) and P99 (lower), by P99."""
    pts = sorted((i for i in infos if i.measured), key=lambda i: (i.p99, -i.throughput))
    front, best = [], -math.inf
    for i in pts:
        if i.throughput > best:
            front.append(i.number)
            best = i.throughput
    return front


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


def _client_waits(records: dict[int, TrialRecord], warn: float) -> dict[int, float]:
    """Trial -> the client's run-queue wait share of its measured run, where above ``warn``."""
    return {n: r.measurement.client_wait_share for n, r in records.items()
            if r.measurement is not None and r.measurement.client_wait_share > warn}


def _summary(name: str, trials: Sequence[FrozenTrial], records: dict[int, TrialRecord], infos: list[TrialInfo],
             cfg: dict[str, Any]) -> SummaryInfo:
    slo = cfg.get("slo") or {}
    metric, slo_ms = str(slo.get("metric", _DEFAULT_SLO.metric)), float(slo.get("p99_ms") or math.nan)
    max_err = float(slo.get("max_error_rate") or 0.0)
    res = study_result(trials)
    by_num = {i.number: i for i in infos}
    best = by_num.get(res.best.number) if res.best else None
    base = by_num.get(res.baseline.number) if res.baseline else None
    counts = {"trials": len(infos)} | {s.value: sum(1 for i in infos if i.status == s) for s in Status}
    notes = []
    if not infos:
        notes.append(f"This study has no trials yet. Run `python -m optimizer.run study.name={name}` to start it.")
    elif best is None:
        notes.append(f"No trial met the SLO (P99 {metric} ≤ {slo_ms:g} ms, error rate ≤ {max_err:.1%}). There is "
                     f"no config to recommend: raise slo.p99_ms, lower the load, or run more trials.")
    if len(infos) == 1:
        notes.append("Only one trial so far: there is nothing to compare it with yet.")
    if base is None and infos:
        notes.append("No baseline trial (vLLM defaults) was recorded, so there is no gain to report.")
    elif base is not None and base.status != Status.FEASIBLE:
        notes.append(f"The baseline (vLLM defaults, trial {base.number}) did not meet the SLO "
                     f"({base.status.value}), so the gain over it is not defined.")
    failed = counts[Status.FAILED.value]
    if failed:
        notes.append(f"{failed} trial(s) failed without a measurement; the table at the bottom says why.")
    if counts[Status.RUNNING.value]:
        notes.append(f"{counts[Status.RUNNING.value]} trial(s) are unfinished (running, or left by a killed run).")
    waits = _client_waits(records, float((cfg.get("load") or {}).get("client_wait_warn") or _DEFAULT_WAIT_WARN))
    if waits:
        worst, share = max(waits.items(), key=lambda kv: kv[1])
        notes.append(f"The load generator waited for a CPU in {len(waits)} of {len(records)} trial(s), up to "
                     f"{share:.0%} of a measured run (trial {worst}): this host's cores were busy with the server, so "
                     f"its TTFT and ITL read high (a stream read in one piece makes TTFT equal E2E); E2E is "
                     f"affected least. Give the client a free core, or measure from another host.")
    launch = records[res.best.number].launch if res.best else None
    server = cfg.get("server") or {}
    hw = cfg.get("hardware") or {}
    versions = engine_versions(trials)
    if res.set_aside:
        notes.append(f"This study ran on {len(versions)} vLLM versions ({', '.join(versions)}): the best trial and the "
                     f"gain are vLLM {res.version}'s trials only; {res.set_aside} trial(s) of the other version(s) "
                     f"stay in the table (the sampler's prior) but are not ranked with them.")
    return SummaryInfo(
        study_name=name, config=cfg, slo_metric=metric, slo_ms=slo_ms, max_error_rate=max_err,
        use_upper_bound=bool(slo.get("use_upper_bound")), counts=counts, best=best, baseline=base, gain=res.gain,
        margin=_margin(best, slo_ms),
        serve_config=dict(launch.serve_config) if launch else {},
        trial_command=portable_command(launch.argv, cfg.get("model") or {}, str(server.get("cache_dir") or ""))
        if launch else "",
        extra_args=[str(a) for a in list(hw.get("fixed_args") or []) + list(server.get("extra_args") or [])],
        vllm_version=", ".join(versions), notes=notes,
        levers=main_levers([i.params for i in infos], [i.throughput if i.measured else math.nan for i in infos],
                           [i.status == Status.FEASIBLE for i in infos]),
        engine_params=dict(records[res.best.number].setup.engine_params or {}) if res.best else {},
        engine=engine_label(records.values(), res.version))


def engine_rows(trials: Sequence[FrozenTrial]) -> tuple[EngineRow, ...]:
    """One row per vLLM version of ``trials`` (search trials and confirmation runs), oldest first."""
    recs = [(t, TrialRecord.from_trial(t)) for t in sorted(trials, key=lambda t: t.number)]
    out = []
    for v in engine_versions(trials):
        mine = [(t, r) for t, r in recs if r.vllm_version == v]
        base = [(t, r) for t, r in mine if r.vllm_defaults]
        out.append(EngineRow(v, engine_label([r for _, r in mine], v),
                             sum(1 for _, r in mine if r.confirmation is None),
                             sum(1 for _, r in mine if r.confirmation is not None),
                             base[-1][0].number if base else None,
                             dict(base[-1][1].vllm_defaults or {}) if base else {},
                             dict(base[-1][1].vllm_defaults_logged or {}) if base else {}))
    return tuple(out)


def engine_label(records: Iterable[TrialRecord], version: str) -> str:
    """vLLM ``version`` in words, with its torch build where a trial recorded it."""
    for r in records:
        if r.setup.engine.known and r.setup.engine.vllm == version:
            return r.setup.engine.label()
    return f"vLLM {version}" if version else ""


def _margin(best: Optional[TrialInfo], slo_ms: float) -> float:
    if best is None:
        return math.nan
    if "slo" in best.constraints:  # what feasibility was judged on (the upper bound, if so configured)
        return -best.constraints["slo"]
    return 1.0 - best.p99 / slo_ms if slo_ms > 0 else math.nan


def study_config(study_attrs: dict[str, Any], fallback_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The config the study ran with (``study_attrs["config"]``, else ``fallback_config``), with
    slo.p99_ms=auto replaced by the limit the study calibrated (None before the baseline set it)."""
    cfg = study_attrs.get("config") or fallback_config or {}
    cal = study_attrs.get(CALIBRATION_ATTR)
    if (cfg.get("slo") or {}).get("p99_ms") == "auto":
        cfg = dict(cfg, slo=dict(cfg["slo"], p99_ms=cal.get("slo_ms") if isinstance(cal, dict) else None))
    return cfg


def build_report_data(name: str, trials: Sequence[FrozenTrial], study_attrs: dict[str, Any],
                      fallback_config: Optional[dict[str, Any]] = None) -> ReportData:
    """Everything the report shows. ``study_attrs["config"]`` (what the study was run with) wins
    over ``fallback_config`` (the config of this invocation)."""
    cfg = study_config(study_attrs, fallback_config)
    metric = str((cfg.get("slo") or {}).get("metric", _DEFAULT_SLO.metric))
    engines = engine_rows(trials)
    trials = sorted(search_trials(trials), key=lambda t: t.number)  # confirmation runs: their own section
    records = {t.number: TrialRecord.from_trial(t) for t in trials}
    infos = [trial_info(t, metric, records[t.number]) for t in trials]
    summary = _summary(name, trials, records, infos, cfg)._replace(engines=engines)
    best_n = summary.best.number if summary.best else None
    picks = _highlighted(infos, best_n, summary.baseline.number if summary.baseline else None)
    info_by = {i.number: i for i in infos}
    cdfs = []
    timelines = []
    for n in picks:
        label = _label(info_by[n], best_n)
        m = records[n].measurement
        samples = m.latency_samples if m is not None else {}
        curves = {metric: _cdf(v) for metric, v in samples.items() if metric in METRICS}
        if any(xs for xs, _ in curves.values()):
            cdfs.append(CdfSeries(n, label, curves))
        tl = _timeline(records[n], n, label)
        if tl is not None:
            timelines.append(tl)
    telemetry = []
    for i in infos:
        rec = records[i.number]
        if rec.measurement is None or not math.isfinite(rec.measurement.telemetry.kv_usage_peak):
            continue
        srv = rec.measurement.telemetry
        telemetry.append(TelemetryRow(i.number, i.status, srv.kv_usage_peak * 100, srv.preemptions, srv.running_peak,
                                      srv.waiting_peak, srv.kv_cache_tokens,
                                      float(rec.memory.kv_tokens) if rec.memory else math.nan))
    phases = [_phase_row(i, records[i.number]) for i in infos]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    searched = [CapacityTrial(i.number, _label(i, best_n), i.baseline, c.result) for i in infos
                if (c := records[i.number].capacity) is not None]
    capacity = build_capacity_data(searched, picks, best_n, metric, summary.slo_ms)
    return ReportData(summary=summary, trials=infos, pareto=pareto_front(infos),
                      importances=importance_info(trials, metric), cdfs=cdfs, telemetry=telemetry,
                      timelines=timelines, phases=phases, total_s=sum(p.wall_s for p in phases), span_s=span,
                      capacity=capacity, compile_cache=_compile_cache(records.values()))


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
