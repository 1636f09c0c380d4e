"""A latency SLO calibrated on this host: ``slo.p99_ms=auto``.

An absolute limit (e.g. P99 E2E <= 1500 ms) means one thing on the host it was chosen on and
another on a host three times slower or busy: the CPU demo found 5 of 6 configs feasible on one
host and none on another. With ``slo.p99_ms=auto`` the limit is instead

    slo_ms = slo.auto_factor x (median latency of the SLO metric at light load)

where light load is one request at a time (:data:`LIGHT_REQUESTS` of the workload's requests,
other prompts than the load test's) on the warm server of the study's first measured trial,
just before its load test. That trial is the baseline (vLLM defaults) whenever
``study.enqueue_baseline`` is on (the default). The result is stored once in the study's user
attributes (:data:`ATTR`), printed, and reused on every resume, so every trial of a study is
judged against the same number and the study database alone reproduces it.

The rule (:func:`calibrated_limit`) is pure; :func:`measure` runs the light load against a live
server URL with the project's load generator; the rest reads and writes the study attribute.
With parallel workers the first calibration stored wins (a worker that calibrated at the same
moment reads the stored one back and judges its trial by it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.config import Config, LoadConfig, SloConfig
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.metrics import summarize

__all__ = ["ATTR", "LIGHT_REQUESTS", "Calibration", "calibrated_limit", "light_load", "measure", "resolved",
           "slo_ms", "store", "stored"]

log = logging.getLogger(__name__)

ATTR = "slo_calibration"  # study user attribute (and the calibrating trial's)
LIGHT_REQUESTS = 24  # measured at concurrency 1, after 2 warm-up requests
_SEED_OFFSET = 7919  # light-load prompts differ from the load test's (no prefix-cache head start)


@dataclass(frozen=True)
class Calibration:
    """How the study's SLO was derived; ``slo_ms`` is the limit every trial is judged by."""

    metric: str  # e2e | ttft | itl: the SLO metric, measured at light load
    light_p50_ms: float  # median at concurrency 1
    light_p99_ms: float
    n_ok: int  # successful light-load requests
    factor: float  # slo.auto_factor
    slo_ms: float
    trial: int = -1  # the trial whose server was measured (-1: not yet stored)

    def as_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, raw: Any) -> Optional["Calibration"]:
        if not isinstance(raw, dict):
            return None
        try:
            return cls(metric=str(raw["metric"]), light_p50_ms=float(raw["light_p50_ms"]),
                       light_p99_ms=float(raw["light_p99_ms"]), n_ok=int(raw["n_ok"]), factor=float(raw["factor"]),
                       slo_ms=float(raw["slo_ms"]), trial=int(raw.get("trial", -1)))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        return (f"SLO calibrated on this host (slo.p99_ms=auto): P99 {self.metric} <= {self.slo_ms:.0f} ms = "
                f"slo.auto_factor {self.factor:g} x {self.light_p50_ms:.0f} ms, the median {self.metric} of "
                f"{self.n_ok} requests sent one at a time to trial {self.trial}'s server "
                f"(P99 at that light load {self.light_p99_ms:.0f} ms)")


def calibrated_limit(light_p50_ms: float, factor: float) -> float:
    """The rule: ``factor`` x the light-load median, in whole milliseconds (at least 1).

    Raises:
        ValueError: the median was not measured (NaN: no request succeeded) or ``factor`` <= 1.
    """
    if not math.isfinite(light_p50_ms) or light_p50_ms <= 0:
        raise ValueError(f"no light-load latency to calibrate on (median {light_p50_ms} ms)")
    if not factor > 1:
        raise ValueError(f"slo.auto_factor={factor}: must be > 1")
    return float(max(1, round(factor * light_p50_ms)))


def light_load(load: LoadConfig) -> LoadConfig:
    """The load settings of the calibration: one request at a time, a fixed small count."""
    return dataclasses.replace(load, mode="concurrency", concurrency=1, num_requests=LIGHT_REQUESTS, duration_s=0.0,
                               warmup_requests=2, p99_sizing="off", abort_after_failures=4)


async def measure(ep: Endpoint, cfg: Config) -> Calibration:
    """Send the light load to the server behind ``ep`` and apply the rule.

    Raises:
        ValueError: no light-load request succeeded (the trial then fails; its server is broken).
    """
    workload = dataclasses.replace(cfg.workload, seed=cfg.workload.seed + _SEED_OFFSET)
    run = await run_load(ep, RequestSet.build(workload, cfg.model), light_load(cfg.load))
    d = summarize(run.results, run.duration_s, cfg.load.p99_confidence).dist(cfg.slo.metric)
    n_ok = sum(1 for r in run.results if r.ok)
    limit = calibrated_limit(d.p50, cfg.slo.auto_factor)
    return Calibration(metric=cfg.slo.metric, light_p50_ms=round(d.p50, 2), light_p99_ms=round(d.p99, 2),
                       n_ok=n_ok, factor=cfg.slo.auto_factor, slo_ms=limit)


def stored(study_attrs: dict[str, Any]) -> Optional[Calibration]:
    """The study's calibration, if one was measured."""
    return Calibration.from_attr(study_attrs.get(ATTR))


def resolved(cfg: Config, cal: Optional[Calibration]) -> Config:
    """``cfg`` with ``slo.p99_ms=auto`` replaced by the calibrated limit (unchanged otherwise, or
    when there is no calibration yet)."""
    if not cfg.slo.is_auto or cal is None:
        return cfg
    return dataclasses.replace(cfg, slo=dataclasses.replace(cfg.slo, p99_ms=cal.slo_ms))


def slo_ms(slo: SloConfig, cal: Optional[Calibration]) -> float:
    """The limit in ms; NaN while an ``auto`` SLO is not calibrated."""
    if not slo.is_auto:
        return slo.limit_ms
    return cal.slo_ms if cal is not None else math.nan


def store(study: Any, trial_number: int, trial_attrs: dict[str, Any]) -> Optional[Calibration]:
    """Keep the calibration a trial measured (``trial_attrs[ATTR]``) as the study's, unless the
    study already has one; return the study's calibration. ``study`` is an ``optuna.Study``."""
    have = stored(study.user_attrs)
    if have is not None:
        return have
    cal = Calibration.from_attr(trial_attrs.get(ATTR))
    if cal is None:
        return None
    cal = dataclasses.replace(cal, trial=trial_number)
    study.set_user_attr(ATTR, cal.as_attr())
    log.info("%s; stored with the study and reused on resume", cal.describe())
    return stored(study.user_attrs)
