"""The report's headline: what the study was run with, its best trial and baseline, the gain,
the vLLM versions it ran on, and the plain-language notes on what is missing or odd."""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from optuna.trial import FrozenTrial

from optimizer.record import TrialRecord
from optimizer.reporting.levers import Levers, main_levers
from optimizer.reporting.serving import portable_command
from optimizer.reporting.trial_table import Status, TrialInfo
from optimizer.settings.config import LoadConfig, SloConfig
from optimizer.study.results import StudyResult, engine_versions, study_result
from optimizer.trial.calibrate import ATTR as CALIBRATION_ATTR

__all__ = ["EngineRow", "SummaryInfo", "engine_label", "engine_rows", "slo_metric", "study_config", "summarize"]

_DEFAULT_SLO = SloConfig()  # for a study whose stored config lacks the SLO
_DEFAULT_WAIT_WARN = LoadConfig().client_wait_warn  # ... or load.client_wait_warn (older studies)


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



def _client_waits(records: dict[int, TrialRecord], warn: float) -> dict[int, float]:
    """Trial -> the client's run-queue wait share of its measured run, where above ``warn``."""
    return {n: r.measurement.client_wait_share for n, r in records.items()
            if r.measurement is not None and r.measurement.client_wait_share > warn}


def slo_metric(cfg: dict[str, Any]) -> str:
    """The latency metric the study's SLO is on (the default where its stored config lacks one)."""
    return str((cfg.get("slo") or {}).get("metric", _DEFAULT_SLO.metric))


def summarize(name: str, trials: Sequence[FrozenTrial], records: dict[int, TrialRecord], infos: list[TrialInfo],
              cfg: dict[str, Any]) -> SummaryInfo:
    """The headline of study ``name``: ``infos`` are its search trials' rows, ``records`` their records."""
    slo = cfg.get("slo") or {}
    metric, slo_ms = slo_metric(cfg), float(slo.get("p99_ms") or math.nan)
    max_err = float(slo.get("max_error_rate") or 0.0)
    res = study_result(trials)
    by_num = {i.number: i for i in infos}
    best = by_num.get(res.best.number) if res.best else None
    base = by_num.get(res.baseline.number) if res.baseline else None
    counts = {"trials": len(infos)} | {s.value: sum(1 for i in infos if i.status == s) for s in Status}
    versions = engine_versions(trials)
    notes = _outcome_notes(name, infos, best, base, counts, metric, slo_ms, max_err)
    notes += _host_and_version_notes(records, cfg, res, versions)
    launch = records[res.best.number].launch if res.best else None
    server = cfg.get("server") or {}
    hw = cfg.get("hardware") or {}
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


def _outcome_notes(name: str, infos: list[TrialInfo], best: Optional[TrialInfo], base: Optional[TrialInfo],
                   counts: dict[str, int], metric: str, slo_ms: float, max_err: float) -> list[str]:
    """What the trials leave missing: no trials, no feasible one, no baseline, failed or unfinished ones."""
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
    return notes


def _host_and_version_notes(records: dict[int, TrialRecord], cfg: dict[str, Any], res: StudyResult,
                            versions: list[str]) -> list[str]:
    """What may have skewed the numbers: a client starved of CPU, trials on more than one vLLM."""
    notes = []
    waits = _client_waits(records, float((cfg.get("load") or {}).get("client_wait_warn") or _DEFAULT_WAIT_WARN))
    if waits:
        worst, share = max(waits.items(), key=lambda kv: kv[1])
        notes.append(f"The load generator waited for a CPU in {len(waits)} of {len(records)} trial(s), up to "
                     f"{share:.0%} of a measured run (trial {worst}): this host's cores were busy with the server, so "
                     f"its TTFT and ITL read high (a stream read in one piece makes TTFT equal E2E); E2E is "
                     f"affected least. Give the client a free core, or measure from another host.")
    if res.set_aside:
        notes.append(f"This study ran on {len(versions)} vLLM versions ({', '.join(versions)}): the best trial and the "
                     f"gain are vLLM {res.version}'s trials only; {res.set_aside} trial(s) of the other version(s) "
                     f"stay in the table (the sampler's prior) but are not ranked with them.")
    return notes


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

