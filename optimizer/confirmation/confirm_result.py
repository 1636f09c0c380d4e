"""The confirmation stage's result, read from a study's trials: pure (no server, no loop).

:func:`summarize_confirmation` groups the confirmation runs stored in a study (the stage itself:
:mod:`optimizer.confirmation.stage`) by config and recommends one (:func:`~optimizer.confirmation.uplift.recommend`);
the report (:mod:`optimizer.reporting.confirmation_section`) and the stage's closing log line read it here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

import optuna
from optuna.trial import TrialState

from optimizer.confirmation.know_more import know_more
from optimizer.confirmation.plan import config_runs, confirmation_trials, confirmed, search_trials
from optimizer.confirmation.uplift import DEFAULT_MARGIN, ConfigRuns, Ratio, Recommendation, block_ratio, recommend
from optimizer.study.results import latest_version, of_version, study_result

__all__ = ["ConfirmResult", "describe_confirmation", "of_engine", "summarize_confirmation"]


@dataclass(frozen=True)
class ConfirmResult:
    runs: list[ConfigRuns]  # baseline first
    recommendation: Recommendation
    study_pick: Optional[int]  # the search's best trial (None: no feasible one)
    rounds: int
    n_search: int = 0  # search trials finished (complete or pruned) of the ranked engine
    run_s: float = math.nan  # median seconds of one finished run (search or confirmation), start to end

    @property
    def pick_uplift(self) -> Optional[Ratio]:
        """The search's pick over the baseline on the fresh servers (simultaneous, as the
        recommendation's uplift); None when either was not confirmed."""
        base = next((r for r in self.runs if r.baseline), None)
        pick = next((r for r in self.runs if not r.baseline and r.of == self.study_pick), None)
        if base is None or pick is None:
            return None
        m = max(1, sum(1 for r in self.runs if not r.baseline))
        return block_ratio(pick, base, self.runs, self.recommendation.uplift.confidence, m)

    def search_pick_text(self) -> str:
        """One line on the search's best, labelled as the search's (never as "the best config")."""
        if self.study_pick is None:
            return ""
        if any(r.baseline and r.of == self.study_pick for r in self.runs):
            return (f"the search's best, trial {self.study_pick}, is vLLM's defaults (the baseline): re-measured "
                    f"on fresh servers as the baseline")
        u = self.pick_uplift
        where = (f"on fresh servers over the defaults: {u.text()}" if u is not None
                 else "not re-measured on fresh servers")
        verdict = {True: "it is the confirmed recommendation", False: "it is not the confirmed recommendation",
                   None: ""}[self.pick_survived]
        return f"the search's best, trial {self.study_pick}: {where}; {verdict}"

    def answer_line(self) -> str:
        """The confirmed answer in one line, for the head and the end of the log."""
        rec = self.recommendation
        base = next((r for r in self.runs if r.baseline), None)
        # the defaults broke the SLO in a round, so the best feasible config won without its interval above 1
        by_slo = (f"; it wins because vLLM's defaults broke the SLO in {base.n_infeasible} of {len(base.feasible)} "
                  f"rounds, not by a throughput gain shown beyond noise" if rec.beats_baseline and base is not None
                  and base.n_infeasible and not rec.uplift.low > 1.0 else "")
        return (f"RECOMMENDATION (confirmed on fresh servers): {rec.chosen.label if rec.chosen else 'none'}"
                + (f", {rec.uplift.text()} over vLLM's defaults{by_slo}" if rec.beats_baseline else
                   ", vLLM's defaults: no config was shown to beat them" if rec.chosen is not None else
                   f": {rec.reason}"))

    def know_more_line(self) -> str:
        """What this confirmation could tell apart and what it would take to know more (closing line)."""
        return know_more(self.recommendation.uplift, len(self.runs), self.rounds, self.n_search, self.run_s)

    @property
    def pick_survived(self) -> Optional[bool]:
        chosen = self.recommendation.chosen
        return None if self.study_pick is None else chosen is not None and chosen.of == self.study_pick


def of_engine(trials: Sequence[optuna.trial.FrozenTrial],
              version: Optional[str] = None) -> list[optuna.trial.FrozenTrial]:
    """The search trials the study ranks (those of its newest search trial's vLLM version) and the
    confirmation runs of vLLM ``version`` (None: the newest run's): runs of two engines are never
    rounds of one comparison, and a config confirmed on one vLLM is not confirmed on another."""
    search, runs = search_trials(trials), confirmation_trials(trials)
    return of_version(search, latest_version(search)) + of_version(runs, latest_version(runs) if version is None
                                                                    else version)


def _run_seconds(t: optuna.trial.FrozenTrial) -> float:
    """A run's seconds as its record timed them (a confirmation run is stored after it ran, so its
    trial's own start and end are the same instant); else the trial's start to end."""
    total = t.user_attrs.get("t_total_s")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return float(total)
    if t.datetime_complete is None or t.datetime_start is None:
        return math.nan
    return (t.datetime_complete - t.datetime_start).total_seconds()


def summarize_confirmation(trials: Sequence[optuna.trial.FrozenTrial], confidence: float,
                           margin: float = DEFAULT_MARGIN, version: Optional[str] = None) -> Optional[ConfirmResult]:
    """The confirmation result of a study's trials (None: no confirmation runs); ``margin``:
    ``study.confirm.margin``; the runs of vLLM ``version`` (None: the newest run's)."""
    trials = of_engine(trials, version)
    cands, rounds = confirmed(trials)
    if not cands:
        return None
    runs = config_runs(cands, trials, rounds)
    best = study_result(trials).best
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    secs = [_run_seconds(t) for t in done]
    secs = [x for x in secs if math.isfinite(x)]
    return ConfirmResult(runs, recommend(runs, confidence, margin), best.number if best is not None else None, rounds,
                         n_search=len(search_trials(done)), run_s=statistics.median(secs) if secs else math.nan)


def describe_confirmation(res: ConfirmResult) -> str:
    rec = res.recommendation
    lines = [res.answer_line(), f"confirmation ({res.rounds} rounds on fresh servers, held-out prompts):"]
    for r in res.runs:
        vals = ", ".join("—" if f is None else f"{v:.1f}{'' if f else ' (infeasible)'}"
                         for v, f in zip(r.values, r.feasible))
        lines.append(f"  {r.label}: median {r.median:.1f} [{vals}]")
    lines.append(f"recommendation: {rec.chosen.label if rec.chosen else 'none'}: {rec.reason}")
    if res.study_pick is not None:
        lines.append(res.search_pick_text() + ".")
    return "\n".join(lines)
