"""The study's stopping rules (optimizer/study/stopping.py) and the progress line
(optimizer/study/progress.py), pure, over hand-made trials."""

from __future__ import annotations

import datetime as dt
import math

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.measures.objective import Outcome
from optimizer.record import Failure, FailureReason, ThroughputCI, TrialRecord
from optimizer.study.progress import Progress, Verdict, eta_s, fmt_duration, progress_line
from optimizer.study.stopping import BudgetState, median_s, stall, trial_seconds

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def _trial(number: int, value: float = 100.0, feasible: bool = True, seconds: float = 60.0, ci: tuple = (),
           state: TrialState = TrialState.COMPLETE, failure: Failure | None = None, end_s: float | None = None):
    rec = TrialRecord(outcome=Outcome(value, {"slo": -0.5 if feasible else 0.5}, feasible),
                      throughput_ci=ThroughputCI(*ci, 10) if ci else None, failure=failure)
    cons = {"slo": -0.5 if feasible else 0.5}
    if state == TrialState.COMPLETE:
        t = optuna.trial.create_trial(value=value, user_attrs=rec.to_attrs(), constraints=cons)
    else:
        t = optuna.trial.create_trial(state=state, user_attrs=rec.to_attrs())
    t.number = number
    end = T0 + dt.timedelta(seconds=end_s if end_s is not None else 100.0 * (number + 1))
    t.datetime_complete, t.datetime_start = end, end - dt.timedelta(seconds=seconds)
    return t


# ---- budget ---------------------------------------------------------------------------------------
def test_the_first_trial_always_starts_while_the_budget_is_not_spent():
    assert BudgetState(60.0, 10.0, math.nan).refusal() == ""  # nothing timed: no estimate to refuse with
    assert "spent" in BudgetState(60.0, 60.0, math.nan).refusal()  # spent before any trial (a late worker)


def test_a_trial_starts_only_if_the_median_trial_still_fits():
    assert BudgetState(600.0, 400.0, 200.0, 3).refusal() == ""  # 400 + 200 = 600: fits exactly
    why = BudgetState(600.0, 401.0, 200.0, 3).refusal()
    assert "would not fit" in why and "median of 3" in why and "study.budget=10 min" in why
    assert BudgetState(600.0, 401.0, 200.0).left_s == pytest.approx(199.0)


def test_the_estimate_is_the_median_of_the_trials_that_started_a_server():
    ruled = Failure(FailureReason.RULED_OUT, "too small")
    trials = [_trial(0, seconds=100), _trial(1, seconds=300), _trial(2, seconds=120),
              _trial(3, seconds=0.01, failure=ruled, feasible=False),  # no server: not a trial's cost
              _trial(4, seconds=50, state=TrialState.FAIL), _trial(5, seconds=9999, state=TrialState.RUNNING)]
    secs = trial_seconds(trials)
    assert sorted(secs) == [50, 100, 120, 300]
    assert median_s(secs) == 110 and math.isnan(median_s([]))


# ---- patience -------------------------------------------------------------------------------------
def test_a_gain_inside_the_best_trials_throughput_interval_is_noise():
    trials = [_trial(0, 100.0, ci=(95.0, 105.0)), _trial(1, 104.0), _trial(2, 80.0), _trial(3, 90.0, feasible=False)]
    s = stall(trials, 0.02)
    # 104 is below 105, the best's upper bound: no gain, and the bar stays at 105
    assert s.streak == 3 and s.best_number == 0 and s.bar == 105.0 and "throughput interval of trial 0" in s.noise
    s = stall([*trials, _trial(4, 105.5)], 0.02)
    assert s.streak == 0 and s.best_number == 4 and s.bar == pytest.approx(105.5 * 1.02)  # no interval: +2 %


def test_without_an_interval_a_gain_must_exceed_the_relative_threshold():
    trials = [_trial(0, 100.0), _trial(1, 101.9), _trial(2, 102.1), _trial(3, 99.0)]
    s = stall(trials, 0.02)
    assert s.streak == 1 and s.best_number == 2  # 101.9 <= 102: noise; 102.1 > 102: a gain (steps add up)
    assert stall(trials[:2], 0.02).streak == 1 and stall(trials[:1], 0.02).streak == 0


def test_environmental_failures_and_ruled_out_proposals_neither_count_nor_reset_the_streak():
    ruled = Failure(FailureReason.RULED_OUT, "too small")
    trials = [_trial(0, 100.0, ci=(95.0, 105.0)), _trial(1, 90.0), _trial(2, 0.0, state=TrialState.FAIL),
              _trial(3, 0.0, feasible=False, failure=ruled), _trial(4, 99.0)]
    assert stall(trials, 0.02).streak == 2


def test_the_streak_follows_completion_order_not_trial_numbers():
    # with parallel workers trial 1 may finish after trial 2
    trials = [_trial(0, 100.0), _trial(1, 200.0, end_s=900.0), _trial(2, 50.0, end_s=500.0)]
    assert stall(trials, 0.02).streak == 0  # the last to finish (trial 1) gained
    assert stall([t for t in trials if t.number != 1], 0.02).streak == 1


def test_no_feasible_trial_is_a_stall_too():
    trials = [_trial(i, 10.0, feasible=False) for i in range(3)]
    s = stall(trials, 0.02)
    assert s.streak == 3 and s.best_number is None


# ---- the progress line ----------------------------------------------------------------------------
def _p(**kw) -> Progress:
    base = dict(number=7, verdict=Verdict.FEASIBLE, value=812.3, best_number=3, best_value=900.0, done=6,
                n_trials=20, trial_s=180.0)
    return Progress(**(base | kw))


def test_the_progress_line_puts_the_trial_against_the_best_with_trials_left_and_an_eta():
    line = progress_line(_p())
    assert line == ("[trial 7] 812.3 output tok/s, feasible: 9.7% below the best (trial 3, 900.0) | 6/20 done, "
                    "14 left | ETA 42 min (median trial 3.0 min x 14)")


def test_a_new_best_and_the_first_feasible_trial_say_so():
    assert "new best, +11.1% over trial 3 (900.0)" in progress_line(_p(value=1000.0))
    assert "new best (the first feasible trial)" in progress_line(_p(best_number=None, best_value=math.nan))


def test_failures_and_infeasible_trials_show_the_best_so_far():
    assert "infeasible (812.3 output tok/s outside the limits); best: trial 3 (900.0)" in \
        progress_line(_p(verdict=Verdict.INFEASIBLE))
    assert "failed (start_timeout)" in progress_line(_p(verdict=Verdict.FAILED, value=math.nan, reason="start_timeout"))
    assert "no feasible trial yet" in progress_line(_p(verdict=Verdict.NO_START, best_number=None))


def test_the_eta_uses_the_workers_and_stops_at_the_budget():
    assert eta_s(14, 180.0) == 14 * 180 and eta_s(14, 180.0, workers=4) == 4 * 180  # ceil(14 / 4) rounds
    assert eta_s(14, 180.0, budget_left_s=600.0) == 600.0 and eta_s(0, 180.0) == 0.0
    assert math.isnan(eta_s(3, math.nan))
    line = progress_line(_p(budget_s=3600.0, budget_left_s=1080.0))
    assert line.endswith("ETA 18 min (median trial 3.0 min x 14; the budget ends the study first) | budget 18 min "
                         "of 60 min left, about 6 more trials fit")
    assert "ETA: no trial timed yet" in progress_line(_p(trial_s=math.nan))
    assert "ETA: done" in progress_line(_p(done=20))
    assert "ETA: now (the budget is spent) | budget 0 s of 60 min left, about 0 more" in \
        progress_line(_p(budget_s=3600.0, budget_left_s=-5.0))
    assert "/ 2 workers" in progress_line(_p(workers=2))


def test_durations_read_for_people():
    assert [fmt_duration(s) for s in (42, 150, 1800, 7200)] == ["42 s", "2.5 min", "30 min", "2.0 h"]
