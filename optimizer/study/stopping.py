"""When the study stops starting trials: ``study.n_trials``, ``study.budget``, ``study.patience``,
and the failure streaks that mean the environment (or the search space) is broken.

Pure rules over the study's trials:

- :func:`trial_seconds` / :func:`median_s`: the measured wall time of the study's trials that
  started a server (ruled-out proposals, interrupted trials and confirmation runs excluded).
- :class:`BudgetState`: ``study.budget`` counts **this command's** wall-clock time, from its start
  (a resumed study gets the full budget again: "this run may take at most N minutes"). A trial
  starts only if the median trial of the study still fits in what is left; with nothing timed yet
  the first trial always starts. All workers of one command share its start time, so they share
  the budget. A trial longer than the median can overrun it by its excess: the budget decides
  which trials start, it does not cut a running one.
- :func:`stall`: ``study.patience`` ends the study after that many finished trials in a row
  (in completion order, study-wide, so a resumed study that had stalled stops again at once)
  gained nothing beyond noise over the best: a trial gains when it is feasible and its value
  exceeds the upper throughput bound of the trial of the last gain (:func:`optimizer.trial.noise.throughput_interval`,
  the study's noise estimate), or, when that trial has none (capacity trials), its value by
  more than ``study.patience_min_gain`` (2 %). Failed (environmental) and ruled-out trials
  neither count nor reset the streak.

:class:`StudyStopper` is the I/O shell: the Optuna callback that applies them after each trial,
logs the progress line (:mod:`optimizer.study.progress`), and records why the study stopped in
the study's user attr ``stopped`` (``{"rule": "budget" | "patience" | "n_trials" | ..., "detail",
"worker", "at"}``).
"""

from __future__ import annotations

import datetime
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.record import TrialRecord
from optimizer.settings.config import Config
from optimizer.study.coordination import fail_stale, in_flight
from optimizer.study.progress import Progress, Verdict, fmt_duration, progress_line
from optimizer.study.results import is_feasible, study_result
from optimizer.study.storage import finished_count

__all__ = ["STOP_ATTR", "BudgetState", "Stall", "StudyStopper", "median_s", "stall", "trial_seconds"]

log = logging.getLogger(__name__)

STOP_ATTR = "stopped"


def _search_trial(t: FrozenTrial, rec: TrialRecord) -> bool:
    return rec.confirmation is None and not rec.ruled_out and not rec.interrupted


def trial_seconds(trials: Sequence[FrozenTrial]) -> list[float]:
    """Wall seconds of each finished trial that started a server (complete or failed)."""
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.datetime_start is None \
                or t.datetime_complete is None:
            continue
        if _search_trial(t, TrialRecord.from_trial(t)):
            out.append((t.datetime_complete - t.datetime_start).total_seconds())
    return out


def median_s(seconds: Sequence[float]) -> float:
    return float(statistics.median(seconds)) if seconds else math.nan


@dataclass(frozen=True)
class BudgetState:
    budget_s: float
    elapsed_s: float  # since this command started
    trial_s: float  # the median measured trial (NaN: none yet)
    n_timed: int = 0

    @property
    def left_s(self) -> float:
        return max(0.0, self.budget_s - self.elapsed_s)

    def refusal(self) -> str:
        """Why the next trial may not start ('' : it may)."""
        spent = f"{fmt_duration(self.elapsed_s)} of study.budget={self.budget_s / 60:g} min spent"
        if self.elapsed_s >= self.budget_s:
            return f"the budget is spent ({spent})"
        if not self.trial_s == self.trial_s:
            return ""  # nothing timed yet: the first trial always starts
        if self.elapsed_s + self.trial_s > self.budget_s:
            return (f"the next trial would not fit in the budget: {spent}, {fmt_duration(self.left_s)} left, and a "
                    f"trial of this study takes {fmt_duration(self.trial_s)} (median of {self.n_timed})")
        return ""


@dataclass(frozen=True)
class Stall:
    streak: int  # finished trials in a row without a gain
    best_number: Optional[int]  # the trial of the last gain
    bar: float  # what a trial must exceed to gain (NaN: no feasible trial yet; any feasible one gains)
    noise: str  # how the bar was set, for the log


def stall(trials: Sequence[FrozenTrial], min_gain: float) -> Stall:
    """The current streak of trials that gained nothing beyond noise (see the module docstring).

    The bar is set by the trial of the last gain, not moved by trials that beat it within its noise:
    small steps that add up beyond the noise count as a gain once they do."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete is not None]
    done.sort(key=lambda t: (t.datetime_complete, t.number))
    streak, ref, bar, noise = 0, None, math.nan, ""
    for t in done:
        rec = TrialRecord.from_trial(t)
        if not _search_trial(t, rec):
            continue
        v = float(t.value) if t.value is not None else 0.0
        if not (is_feasible(t) and (ref is None or v > bar)):
            streak += 1
            continue
        streak, ref = 0, t.number
        ci = rec.throughput_ci
        if ci is not None and math.isfinite(ci.high):
            bar, noise = max(v, ci.high), f"the {ci.confidence:.0%} throughput interval of trial {t.number}"
        else:
            bar, noise = v * (1 + min_gain), f"trial {t.number}'s value +{min_gain:.0%} (study.patience_min_gain)"
    return Stall(streak, ref, bar, noise)


def _verdict(t: FrozenTrial, rec: TrialRecord) -> Verdict:
    if t.state == TrialState.FAIL:
        return Verdict.INTERRUPTED if rec.interrupted else Verdict.FAILED
    if rec.ruled_out:
        return Verdict.RULED_OUT
    if rec.failure is not None:
        return Verdict.NO_START
    return Verdict.FEASIBLE if is_feasible(t) else Verdict.INFEASIBLE


class StudyStopper:
    """The Optuna callback that ends this worker's loop (see the module docstring).

    With parallel workers (this host's, or other hosts'), a worker stops once the finished trials
    plus those still running elsewhere reach n_trials; the last one running stops last. Workers
    that decide at the same moment may each start one more: the study can end up to (workers - 1)
    trials over n_trials, never under it while a worker is alive."""

    def __init__(self, cfg: Config, *, started: float, workers: int = 1, worker: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.started, self.workers, self.worker, self.clock = cfg, started, workers, worker, clock
        self.consecutive_env = 0
        self.ruled_out_streak = 0
        self.abort: Optional[str] = None  # an error: the study cannot go on as configured
        self.stopped: Optional[str] = None  # a rule ended it (budget, patience): not an error

    # ---- the rules, on the study as it is now ----------------------------------------------------------
    def budget(self, trials: Sequence[FrozenTrial]) -> Optional[BudgetState]:
        b = self.cfg.study.budget
        if b is None:
            return None
        secs = trial_seconds(trials)
        return BudgetState(b * 60.0, self.clock() - self.started, median_s(secs), len(secs))

    def may_start(self, study: optuna.Study) -> bool:
        """Before this command's first trial: False (logged and recorded) when the budget refuses it."""
        b = self.budget(study.get_trials(deepcopy=False))
        why = b.refusal() if b is not None else ""
        if why:
            self._stop(study, "budget", why, in_loop=False)
        return not why

    def _stop(self, study: optuna.Study, rule: str, detail: str, in_loop: bool = True) -> None:
        self.stopped = f"{rule}: {detail}"
        if rule == "n_trials":
            log.info("study.n_trials=%d reached", self.cfg.study.n_trials)
        else:
            log.warning("stopping the study (%s): %s", f"study.{rule}", detail)
        study.set_user_attr(STOP_ATTR, {"rule": rule, "detail": detail, "worker": self.worker,
                                        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        if in_loop:
            study.stop()

    # ---- the callback ------------------------------------------------------------------------------
    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rec = TrialRecord.from_attrs(trial.user_attrs)
        if trial.state == TrialState.FAIL and not rec.interrupted:
            self.consecutive_env += 1
        elif trial.state == TrialState.COMPLETE:
            self.consecutive_env = 0
        self.ruled_out_streak = self.ruled_out_streak + 1 if rec.ruled_out else 0
        limit = self.cfg.study.max_consecutive_env_failures
        if self.consecutive_env >= limit:
            last = f"{rec.failure.label}: {rec.failure.detail[:300]}" if rec.failure else "?"
            self.abort = (f"{self.consecutive_env} trials in a row failed for reasons outside their config "
                          f"(last: {last}). Stopping instead of burning "
                          f"the budget; fix the environment and run the same command to resume "
                          f"(study.max_consecutive_env_failures={limit}).")
            study.stop()
            return
        if self.ruled_out_streak >= 50:
            self.abort = ("50 proposals in a row were ruled out by the memory estimate: the search space is "
                          "almost all infeasible on this hardware. Narrow the ranges in conf/search.")
            study.stop()
            return
        fail_stale(study)  # a dead worker's trial is not in flight
        trials = study.get_trials(deepcopy=False)
        done, running = finished_count(study), in_flight(study)
        budget = self.budget(trials)
        if not rec.ruled_out:
            log.info("%s", progress_line(self._progress(trial, rec, trials, done, budget)))
        st = self.cfg.study
        if done + running >= st.n_trials:
            self._stop(study, "n_trials", f"{done} finished trials (+{running} running) of study.n_trials={st.n_trials}")
        elif budget is not None and (why := budget.refusal()):
            self._stop(study, "budget", why)
        elif st.patience is not None and (s := stall(trials, st.patience_min_gain)).streak >= st.patience:
            self._stop(study, "patience",
                       f"{s.streak} trials in a row gained nothing beyond noise (a gain must exceed {s.bar:,.1f}, "
                       f"{s.noise}); study.patience={st.patience}. Raise "
                       f"study.patience (or set it to null) to search on.")

    def _progress(self, trial: FrozenTrial, rec: TrialRecord, trials: Sequence[FrozenTrial], done: int,
                  budget: Optional[BudgetState]) -> Progress:
        before = study_result([t for t in trials if t.number != trial.number]).best
        c = self.cfg.load.capacity
        unit = "output tok/s" if self.cfg.load.mode != "capacity" or c.value == "output_tok_s" else "req/s"
        secs = trial_seconds(trials)
        return Progress(
            number=trial.number, verdict=_verdict(trial, rec),
            value=float(trial.value) if trial.value is not None else math.nan,
            best_number=before.number if before is not None else None,
            best_value=float(before.value or 0.0) if before is not None else math.nan,
            done=done, n_trials=self.cfg.study.n_trials, trial_s=median_s(secs), workers=self.workers,
            budget_s=budget.budget_s if budget is not None else None,
            budget_left_s=budget.left_s if budget is not None else math.nan, unit=unit,
            reason=rec.failure.label if rec.failure is not None else "",
            stopped_early=rec.capacity is not None and rec.capacity.stopped_early)
