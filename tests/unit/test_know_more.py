"""The closing line's arithmetic (optimizer/confirmation/know_more.py): the noise read back from an interval
is the one the block design used, so the smallest gain it projects for the same design is that
interval's own half-width; more rounds or fewer configs show smaller gains; and the launcher that
``server.launcher=auto`` resolves to."""

from __future__ import annotations

import math

import pytest

from optimizer.confirmation.know_more import NextStep, detectable_gain, know_more, run_noise
from optimizer.confirmation.uplift import ConfigRuns, Ratio, block_ratio, recommend
from optimizer.server.launcher import resolve


def _runs(*rows: tuple[float, ...]) -> list[ConfigRuns]:
    return [ConfigRuns("baseline" if i == 0 else f"trial {i}", i, i == 0, i, r, tuple(True for _ in r))
            for i, r in enumerate(rows)]


@pytest.mark.parametrize("rows", [
    ((100.0, 104.0, 97.0), (110.0, 109.0, 105.0)),  # 2 configs, 3 rounds
    ((100.0, 104.0), (110.0, 101.0)),  # 2 configs, 2 rounds: 1 degree of freedom
    ((100.0, 104.0, 97.0), (110.0, 109.0, 105.0), (99.0, 103.0, 104.0), (120.0, 101.0, 100.0)),  # 4 x 3, pooled
])
def test_the_noise_read_back_gives_the_intervals_own_half_width(rows):
    runs = _runs(*rows)
    rec = recommend(runs)
    u = rec.uplift
    assert u.pairs == len(rows[0]) and math.isfinite(u.high)
    var = run_noise(u)
    assert var > 0
    if u.dof == (len(rows) - 1) * (len(rows[0]) - 1):  # the pooled noise: the design detectable_gain assumes
        assert detectable_gain(var, len(rows[0]), len(rows), u.confidence) == pytest.approx(u.high / u.point)
    # the pair's own noise (wider) still reads back exactly through the same ratio
    again = block_ratio(runs[[r.label for r in runs].index(rec.top.label)], runs[0], runs, u.confidence, u.comparisons)
    assert math.log(again.high / again.point) == pytest.approx(math.log(u.high / u.point))


def test_more_rounds_show_smaller_gains_and_more_configs_larger():
    var = 0.05 ** 2
    two, three, five = (detectable_gain(var, n, 2, 0.95) for n in (2, 3, 5))
    assert two > three > five > 1
    assert two == pytest.approx(math.exp(12.706 * 0.05), rel=1e-3)  # t(0.975, 1 dof) * sqrt(2 var / 2)
    assert detectable_gain(var, 5, 4, 0.95) > five  # Bonferroni over 3 comparisons
    assert math.isnan(detectable_gain(var, 1, 2, 0.95)) and math.isnan(detectable_gain(math.nan, 3, 2, 0.95))


def test_the_closing_line_names_what_was_measured_and_the_larger_study():
    u = recommend(_runs((100.0, 104.0), (110.0, 101.0))).uplift
    line = know_more(u, configs=2, rounds=2, n_search=3, run_s=60.0, step=NextStep(20, 3, 5))
    assert line.startswith("TO KNOW MORE: this study searched 3 configs; 2 configs confirmed in 2 rounds")
    now = detectable_gain(run_noise(u), 2, 2, 0.95)
    then = detectable_gain(run_noise(u), 5, 4, 0.95)
    assert f"x{now:.2f}" in line and f"x{then:.2f}" in line and then < now
    assert "study.n_trials=20 study.confirm.top_k=3 study.confirm.repeats=5" in line
    assert "at most 37 more server runs, about 37 min" in line  # 17 search trials + 4 configs x 5 rounds, 60 s each
    plus = detectable_gain(run_noise(u), 3, 2, 0.95)  # one more round of the same two configs
    assert f"study.confirm.repeats=3 lowers that to x{plus:.2f} (at most 2 more server runs, about 2 min" in line
    assert then < plus < now
    blind = know_more(Ratio(1.1, math.nan, math.nan, 1, 0.95), configs=2, rounds=1, n_search=3, run_s=math.nan)
    assert "gave no interval" in blind and "min" not in blind.split("(")[-1]


def test_auto_is_the_forkserver_on_the_cpu_build_and_on_gpus():
    assert resolve("auto", "cpu") == "forkserver"
    assert resolve("auto", "cuda") == "forkserver"  # on one GPU too since the H200 study of 2026-12-07
    assert resolve("auto", "cuda", gpus=2) == "plain"  # tensor parallelism has not run forked
    assert resolve("forkserver", "cuda", gpus=2) == "forkserver"  # what the user sets is used
    assert resolve("plain", "cpu") == "plain" and resolve("forkserver", "cuda") == "forkserver"


def test_a_runs_seconds_are_its_records_not_its_trials_instant():
    """A confirmation run is stored after it ran (its trial starts and ends at once): its seconds
    are the record's t_total_s; a trial without one falls back to its start and end."""
    from datetime import datetime, timedelta

    import optuna

    from optimizer.confirmation.confirm_result import _run_seconds

    now = datetime(2026, 12, 6, 22, 0, 0)
    stored = optuna.trial.create_trial(value=1.0, user_attrs={"t_total_s": 74.5})
    stored.datetime_start = stored.datetime_complete = now
    plain = optuna.trial.create_trial(value=1.0)
    plain.datetime_start, plain.datetime_complete = now, now + timedelta(seconds=90)
    assert _run_seconds(stored) == 74.5 and _run_seconds(plain) == 90.0


def test_a_win_by_the_defaults_breaking_the_slo_says_so_in_the_answer_line():
    """The rule lets the best feasible config win when the baseline broke the SLO in a round; the
    answer line then says that the gain itself was not shown (its interval holds 1)."""
    from optimizer.confirmation.confirm_result import ConfirmResult

    base = ConfigRuns("baseline", 0, True, 0, (1276.1, 1253.2), (False, True))
    tuned = ConfigRuns("trial 1", 1, False, 1, (1605.9, 1494.1), (True, True))
    rec = recommend([base, tuned])
    assert rec.beats_baseline and rec.uplift.low < 1.0
    line = ConfirmResult([base, tuned], rec, 1, 2).answer_line()
    assert line.startswith("RECOMMENDATION (confirmed on fresh servers): trial 1, x1.225")
    assert line.endswith("it wins because vLLM's defaults broke the SLO in 1 of 2 rounds, not by a throughput gain "
                         "shown beyond noise")
    shown = ConfigRuns("baseline", 0, True, 0, (1000.0, 1010.0, 990.0), (False, True, True))
    far = ConfigRuns("trial 1", 1, False, 1, (1500.0, 1520.0, 1490.0), (True, True, True))
    rec = recommend([shown, far])
    assert rec.uplift.low > 1.0 and "broke the SLO" not in ConfirmResult([shown, far], rec, 1, 3).answer_line()


def test_the_search_pick_line_says_when_the_searchs_best_is_the_baseline():
    """The demo's search can find vLLM's defaults best: its line must not say "not re-measured" (the
    baseline is re-measured in every round), and a search pick other than the baseline keeps its ratio."""
    from optimizer.confirmation.confirm_result import ConfirmResult

    runs = _runs((100.0, 104.0), (110.0, 101.0))
    rec = recommend(runs)
    line = ConfirmResult(runs, rec, study_pick=0, rounds=2).search_pick_text()
    assert "is vLLM's defaults (the baseline): re-measured on fresh servers" in line
    assert "not re-measured" not in line
    other = ConfirmResult(runs, rec, study_pick=1, rounds=2).search_pick_text()
    assert other.startswith("the search's best, trial 1: on fresh servers over the defaults: x")
