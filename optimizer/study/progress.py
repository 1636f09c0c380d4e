"""The line the terminal shows after each trial: its result against the best so far, the trials
done and left, and an ETA from the study's measured trial times (and the budget left). Pure.

:func:`progress_line` formats a :class:`Progress` (typed inputs, no study access); the study loop
(:class:`optimizer.study.stopping.StudyStopper`) gathers them from the study after each trial::

    [trial 7] 812.3 output tok/s, feasible: 9.8% below the best (trial 3, 900.1) | 6/20 done, 14 left |
    ETA 42 min (median trial 3.0 min x 14) | budget 18 of 60 min left, about 6 more trials fit
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

__all__ = ["Progress", "Verdict", "eta_s", "fmt_duration", "progress_line"]


class Verdict(str, Enum):
    """What became of the trial."""

    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"  # measured, outside the SLO or another constraint
    NO_START = "no_start"  # its config could not start a server (infeasible, the sampler learns)
    RULED_OUT = "ruled_out"  # the memory estimate refused it; no server started
    FAILED = "failed"  # the environment was in the way: retried
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Progress:
    number: int  # the trial just finished
    verdict: Verdict
    value: float  # its objective value (NaN: none)
    best_number: Optional[int]  # the best feasible trial before this one (None: none yet)
    best_value: float
    done: int  # trials that count toward n_trials, this one included
    n_trials: int
    trial_s: float  # the median measured trial time of the study (NaN: none yet)
    workers: int = 1  # this command's workers, running trials side by side
    budget_s: Optional[float] = None  # study.budget in s (None: no budget)
    budget_left_s: float = math.nan
    unit: str = "output tok/s"
    reason: str = ""  # no_start / failed: why
    stopped_early: bool = False  # load.mode=capacity: its search stopped below the incumbent


def fmt_duration(s: float) -> str:
    if not s == s:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min" if s >= 600 else f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def eta_s(left: int, trial_s: float, workers: int = 1, budget_left_s: Optional[float] = None) -> float:
    """Seconds until the study ends: ``left`` trials of ``trial_s`` each on ``workers`` side by
    side, or the budget left when that is shorter. NaN when no trial was timed yet."""
    if left <= 0:
        return 0.0
    if not trial_s == trial_s:
        return budget_left_s if budget_left_s is not None else math.nan
    t = math.ceil(left / max(1, workers)) * trial_s
    return min(t, budget_left_s) if budget_left_s is not None else t


def _result(p: Progress) -> str:
    v = f"{p.value:,.1f} {p.unit}" if p.value == p.value else ""
    early = " (capacity search stopped early: below the incumbent; a lower bound)" if p.stopped_early else ""
    if p.verdict is Verdict.FEASIBLE:
        if p.best_number is None:
            return f"{v}, feasible: new best (the first feasible trial){early}"
        if p.value > p.best_value:
            gain = f", +{(p.value / p.best_value - 1) * 100:.1f}%" if p.best_value > 0 else ""
            return f"{v}, feasible: new best{gain} over trial {p.best_number} ({p.best_value:,.1f}){early}"
        gap = (1 - p.value / p.best_value) * 100 if p.best_value > 0 else math.nan
        return (f"{v}, feasible: {gap:.1f}% below the best (trial {p.best_number}, {p.best_value:,.1f}){early}")
    best = f"; best: trial {p.best_number} ({p.best_value:,.1f})" if p.best_number is not None else "; no feasible trial yet"
    if p.verdict is Verdict.INFEASIBLE:
        return f"infeasible ({v or 'nothing'} outside the limits){best}"
    if p.verdict is Verdict.NO_START:
        return f"could not start ({p.reason or 'its config'}): infeasible{best}"
    if p.verdict is Verdict.RULED_OUT:
        return f"ruled out by the memory estimate (no server started){best}"
    if p.verdict is Verdict.INTERRUPTED:
        return f"interrupted{best}"
    return f"failed ({p.reason or 'environment'}), retried if retries are left{best}"


def progress_line(p: Progress) -> str:
    """One line: the trial against the best so far | done/left | ETA | budget."""
    left = max(0, p.n_trials - p.done)
    parts = [f"[trial {p.number}] {_result(p)}", f"{p.done}/{p.n_trials} done, {left} left"]
    budget_left = max(0.0, p.budget_left_s) if p.budget_s is not None and p.budget_left_s == p.budget_left_s else None
    eta = eta_s(left, p.trial_s, p.workers, budget_left)
    if left == 0:
        parts.append("ETA: done")
    elif budget_left is not None and budget_left <= 0:
        parts.append("ETA: now (the budget is spent)")
    elif not p.trial_s == p.trial_s:
        parts.append("ETA: no trial timed yet")
    else:
        by_trials = eta_s(left, p.trial_s, p.workers)
        how = f"median trial {fmt_duration(p.trial_s)} x {left}" + (f" / {p.workers} workers" if p.workers > 1 else "")
        if budget_left is not None and budget_left < by_trials:
            how += "; the budget ends the study first"
        parts.append(f"ETA {fmt_duration(eta)} ({how})")
    if p.budget_s is not None and budget_left is not None:
        fit = f", about {int(budget_left // p.trial_s) * max(1, p.workers)} more trials fit" \
            if p.trial_s == p.trial_s and p.trial_s > 0 else ""
        parts.append(f"budget {fmt_duration(budget_left)} of {fmt_duration(p.budget_s)} left{fit}")
    return " | ".join(parts)
