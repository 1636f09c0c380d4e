"""A latency SLO calibrated on this host: ``slo.p99_ms=auto``.

An absolute limit (e.g. P99 E2E <= 1500 ms) means one thing on the host it was chosen on and
another on a host three times slower or busy: the CPU demo found 5 of 6 configs feasible on one
host and none on another. With ``slo.p99_ms=auto`` the limit is instead

    slo_ms = slo.auto_factor x (the baseline's median of the SLO metric, at the study's load)

measured once per study by its baseline trial (vLLM defaults, enqueued first), stored in the
study's user attributes (:data:`ATTR`), printed, and reused on every resume, so every trial is
judged against the same number and the study database alone reproduces it. The question the
study then answers is the same on every host: which config serves the most while keeping its
tail latency within ``auto_factor`` times what vLLM's defaults typically give here.

Why the median and not the baseline's own P99 (the rule until 2026-12-07, 1.5 x that P99): on a
2-core host one run's P99 is set by a few episodes in which the load generator waits for a CPU (it
shares the two cores with the server: 12-65 % of a run) and a batch of requests is slowed together,
so its samples are few and correlated. The demo's defaults, on fresh servers on a quiet host, gave
P99s of 732-1,630 ms against medians of 440-601 ms (benchmarks/results/demo-slo-basis.md): a limit
of 1.5x one P99 was 1,098 ms in one run, which the same defaults broke in a later run, and three
runs of the demo gave three answers. The median is set by half the run, not by a handful of
requests, so no single episode moves it; between fresh servers it still moves about as much as the
P99 (x1.16 against x1.13 over the measured grid's 32 servers), so what matters most is the level:
the default factor (:data:`~optimizer.settings.config.AUTO_FACTOR_AT_LOAD`, 3) puts the limit near
1.8x a typical P99 (a run's P99 was 1.66x its median over the grid's 66 runs), above the defaults'
own spread, so that they meet their own limit on a fresh server, while a config that queues
(max_num_seqs below the concurrency: a request waits a whole service time or more) does not. The
calibration warns when the defaults' own P99 was already above the limit
(:meth:`Calibration.spread_warning`).

Why the baseline's latency at the study's load and not at light load (one request at a time):
the ratio of the two is how well the server batches, and that depends on the host as much as the
latency does. On a busy 2-core host the baseline's P99 at 16 concurrent requests was 16x its
median at concurrency 1 (4,737 ms vs 290 ms, see README: "The demo's SLO"); a fixed multiple of
the light-load latency would have judged every config infeasible there, as the absolute limit did.

Capacity mode (``load.mode=capacity``) differs: there is no "study's load". Each trial searches
the highest load that meets the limit, starting light, so the limit must exist before the first
probe, and it cannot be measured at any load the search will visit, since it would then decide
its own outcome at that load. The baseline instead measures, on its warm server before its
search, its *unloaded* latency (:func:`light_load`: one user, closed loop) and the limit is

    slo_ms = slo.auto_factor x (the baseline's median of the SLO metric at one user)

(default factor :data:`~optimizer.settings.config.AUTO_FACTOR_UNLOADED`, 1.5), the standard knee:
the load at which the tail latency has grown to ``auto_factor`` times the no-queue latency of the
defaults on this host. One user, not ``load.capacity.start``: a start above one user (or a request
rate, which may already queue) is not unloaded. The median here too: on a shared host the P99 of a
light run is set by the host's noise bursts, not by the server (2-core CPU build, load average 7-13:
a one-user P99 TTFT of 875 ms against a median of 131 ms; a one-user P99 E2E of 331 ms against 146
ms at two users a second later), which made the limit so loose that a config serving one request at
a time passed four users. The median of the run (at least :data:`LIGHT_MIN_REQUESTS` requests after
``load.warmup_requests`` of warm-up) is what no single spike, and no burst shorter than half the run,
can move. The price: a workload whose lengths spread widely has a one-user P99 well above its median
(``mixed-lengths``: ~1.75x in E2E), and a factor below that judges even the unloaded defaults
infeasible; the calibration warns then and says which factor to use. This run is not one of the
search's probes: the search starts with its own first probe, judged like the others.

A study calibrated before 2026-12-07 stored ``basis: p99`` (or nothing: read as the P99 at load,
the median unloaded) and keeps its stored limit on resume. The rule (:func:`calibrated_limit`) is
pure; :func:`from_summary` applies it to the baseline's load-test summary; the rest reads and writes
the study attribute. With parallel workers the first calibration stored wins; a trial that finishes
its load test before the baseline was measured waits for it while the baseline runs on a live
worker (:func:`wait`), and is otherwise failed and retried (:class:`NotCalibrated`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from optimizer.capacity.sizing import probe_load_config
from optimizer.core.errors import TrialError
from optimizer.measures.metrics import LoadSummary
from optimizer.settings.config import AUTO_FACTOR_AT_LOAD, AUTO_FACTOR_UNLOADED, Config, LoadConfig, SloConfig

__all__ = ["ATTR", "LIGHT_MIN_REQUESTS", "Calibration", "NotCalibrated", "calibrated_limit", "from_summary",
           "light_load", "resolved", "slo_ms", "store", "stored", "wait"]

log = logging.getLogger(__name__)

ATTR = "slo_calibration"  # study user attribute (and the calibrating trial's)
# capacity mode's light-load run: its median is what the limit is a multiple of
LIGHT_MIN_REQUESTS = 101


class NotCalibrated(TrialError):
    """A trial needs the study's ``auto`` SLO before the baseline trial has measured it."""

    def __init__(self) -> None:
        super().__init__("slo.p99_ms=auto: the SLO is calibrated by the baseline trial (vLLM defaults), which was "
                         "not measured in time (it could not start, or runs on a slow worker). This trial is retried; "
                         "if the baseline cannot start here, set slo.p99_ms to a limit in ms.",
                         reason="slo_not_calibrated", deterministic=False)


@dataclass(frozen=True)
class Calibration:
    """How the study's SLO was derived; ``slo_ms`` is the limit every trial is judged by."""

    metric: str  # e2e | ttft | itl: the SLO metric
    base_p50_ms: float  # the baseline's median and P99 at the study's load (capacity mode: at `users`)
    base_p99_ms: float
    n_ok: int  # the baseline's successful requests
    factor: float  # slo.auto_factor
    slo_ms: float
    trial: int = -1  # the trial that measured it (-1: not yet stored)
    users: int = 0  # 0: measured at the study's load; else at this many users (load.mode=capacity: 1)
    basis: str = "p50"  # the statistic the factor multiplies: p50 (the median); p99 in studies made before it

    def as_attr(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attr(cls, raw: Any) -> Optional["Calibration"]:
        if not isinstance(raw, dict):
            return None
        try:
            users = int(raw.get("users", 0))
            return cls(metric=str(raw["metric"]), base_p50_ms=float(raw["base_p50_ms"]),
                       base_p99_ms=float(raw["base_p99_ms"]), n_ok=int(raw["n_ok"]), factor=float(raw["factor"]),
                       slo_ms=float(raw["slo_ms"]), trial=int(raw.get("trial", -1)), users=users,
                       basis=str(raw.get("basis", "p50" if users else "p99")))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        where = (f"at {self.users} user{'s' if self.users > 1 else ''} (unloaded)" if self.users
                 else "at this load")
        if self.basis == "p99":  # a study calibrated before the median became the basis
            return (f"SLO calibrated on this host (slo.p99_ms=auto): P99 {self.metric} <= {self.slo_ms:.0f} ms = "
                    f"slo.auto_factor {self.factor:g} x {self.base_p99_ms:.0f} ms, the P99 {self.metric} of vLLM's "
                    f"defaults {where} (baseline trial {self.trial}, {self.n_ok} requests, median "
                    f"{self.base_p50_ms:.0f} ms)")
        return (f"SLO calibrated on this host (slo.p99_ms=auto): P99 {self.metric} <= {self.slo_ms:.0f} ms = "
                f"slo.auto_factor {self.factor:g} x {self.base_p50_ms:.0f} ms, the median {self.metric} of vLLM's "
                f"defaults {where} (baseline trial {self.trial}, {self.n_ok} requests, P99 {self.base_p99_ms:.0f} ms)")

    def spread_warning(self) -> Optional[str]:
        """A warning when the defaults' own P99 in the calibrating run is above the limit (the
        workload's length spread, a noisy host, or a factor below the defaults' P99/median at this
        load); None otherwise."""
        if self.basis != "p50" or not self.base_p99_ms > self.slo_ms:
            return None
        ratio = self.base_p99_ms / self.base_p50_ms
        if self.users:
            why = ("vLLM's defaults at one user, unloaded, already have a P99 "
                   f"{self.metric} of {self.base_p99_ms:.0f} ms")
            then = "light loads may fail for that alone"
        else:
            why = f"vLLM's defaults at this load already have a P99 {self.metric} of {self.base_p99_ms:.0f} ms"
            then = "the defaults may be judged infeasible at their own load, and so may every config like them"
        return (f"slo.p99_ms=auto: {why}, {ratio:.1f}x their median and above the limit of {self.slo_ms:.0f} ms "
                f"(slo.auto_factor={self.factor:g} x the median): the workload's lengths spread widely or the host is "
                f"noisy, and {then}; set slo.auto_factor above {ratio:.1f}, or slo.p99_ms to a limit in ms")


def calibrated_limit(base_ms: float, factor: float) -> float:
    """The rule: ``factor`` x the baseline's median latency, in whole milliseconds (at least 1).

    Raises:
        ValueError: the latency was not measured (NaN: no request succeeded) or ``factor`` <= 1.
    """
    if not math.isfinite(base_ms) or base_ms <= 0:
        raise ValueError(f"no baseline latency to calibrate on (median {base_ms} ms)")
    if not factor > 1:
        raise ValueError(f"slo.auto_factor={factor}: must be > 1")
    return float(max(1, round(factor * base_ms)))


def from_summary(summary: LoadSummary, cfg: Config, users: int = 0) -> Calibration:
    """The calibration from the baseline's load test: ``slo.auto_factor`` x its median (``users``:
    capacity mode's light-load run at that many users; 0: the study's own load).

    Raises:
        ValueError: no request of it succeeded.
    """
    d = summary.dist(cfg.slo.metric)
    factor = cfg.slo.auto_factor
    if factor is None:  # a Config not built by to_config (tests): the default of its mode
        factor = AUTO_FACTOR_UNLOADED if users else AUTO_FACTOR_AT_LOAD
    return Calibration(metric=cfg.slo.metric, base_p50_ms=round(d.p50, 2), base_p99_ms=round(d.p99, 2),
                       n_ok=summary.n_ok, factor=factor, slo_ms=calibrated_limit(d.p50, factor), users=users)


def light_load(load: LoadConfig) -> LoadConfig:
    """Capacity mode: the baseline's calibration run, sized as the search's first probe at one user
    (closed loop, with the server's warm-up) and at least :data:`LIGHT_MIN_REQUESTS` requests long,
    counted (``load.duration_s`` does not apply: a timed run at one user may end far shorter)."""
    first = probe_load_config(load, "concurrency", 1, first=True)
    return dataclasses.replace(first, num_requests=max(first.num_requests, LIGHT_MIN_REQUESTS), duration_s=0.0)


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


def wait(get: Callable[[], Optional[Calibration]], coming: Callable[[], bool], timeout_s: float,
         poll_s: float = 2.0) -> Calibration:
    """Poll ``get`` (the study's calibration) until there is one, for at most ``timeout_s``, while
    ``coming()`` says a baseline trial is running on a live worker.

    Raises:
        NotCalibrated: none came in time, or no baseline is running (it failed, or waits in the
            queue: this worker may be the one to run it next, so it must not wait for it).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        cal = get()
        if cal is not None:
            return cal
        if time.monotonic() >= deadline or not coming():
            raise NotCalibrated()
        log.info("slo.p99_ms=auto: waiting for the baseline trial to calibrate the SLO")
        time.sleep(poll_s)
