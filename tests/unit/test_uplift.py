"""The confirmation's statistics and recommendation rule (pure)."""

from __future__ import annotations

import math

import pytest

from optimizer.confirmation.uplift import NOISE_FLOOR, ConfigRuns, block_ratio, mean_interval, paired_ratio, recommend
from optimizer.core.stats import t_quantile


def runs(label: str, values, feasible=None, flags: int = 3, baseline: bool = False, of: int = 0) -> ConfigRuns:
    return ConfigRuns(label, of, baseline, 0 if baseline else flags, tuple(values),
                      tuple(feasible if feasible is not None else [True] * len(values)))


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=2e-3)


def test_paired_ratio_cancels_what_a_round_shares_but_never_gives_a_zero_width_interval():
    # the host drifts by +-20 % between rounds, A is 10 % faster within every round: paired, the point is
    # exact; the interval still has the noise floor's width (1 % per run), not zero
    base = [100.0, 120.0, 80.0]
    a = [110.0, 132.0, 88.0]
    r = paired_ratio(a, base)
    assert r.point == pytest.approx(1.10) and r.pairs == 3 and not r.within_noise
    half = t_quantile(0.975, 2) * math.sqrt(2) * NOISE_FLOOR / math.sqrt(3)
    assert (r.low, r.high) == pytest.approx((1.10 * math.exp(-half), 1.10 * math.exp(half)))
    blk = block_ratio(runs("a", a, of=1), runs("b", base, baseline=True), [])
    assert blk.low < 1.10 < blk.high


def test_paired_ratio_interval_is_the_t_interval_of_the_log_ratios():
    a, b = [105.0, 95.0, 112.0], [100.0, 100.0, 100.0]
    logs = [math.log(x / y) for x, y in zip(a, b)]
    m = sum(logs) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / 2)
    r = paired_ratio(a, b, 0.95)
    assert r.low == pytest.approx(math.exp(m - 4.3027 * sd / math.sqrt(3)), rel=1e-3)
    assert r.high == pytest.approx(math.exp(m + 4.3027 * sd / math.sqrt(3)), rel=1e-3)
    assert r.within_noise


def test_paired_ratio_without_two_pairs_has_no_interval():
    r = paired_ratio([110.0, math.nan], [100.0, 100.0])
    assert r.point == pytest.approx(1.1) and math.isnan(r.low) and r.within_noise


def test_mean_interval_of_one_value_is_nan():
    assert all(math.isnan(x) for x in mean_interval([5.0]))
    lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert lo < 2.0 < hi


def test_a_clear_winner_feasible_in_every_repeat_is_recommended_with_its_uplift():
    base = runs("baseline", [100, 102, 98], baseline=True)
    a = runs("trial 3", [130, 133, 128], of=3)
    b = runs("trial 5", [115, 118, 112], of=5)
    rec = recommend([base, a, b])
    assert rec.chosen is a and rec.beats_baseline and rec.uplift.low > 1.2
    assert "trial 3 over the baseline" in rec.reason


def test_a_config_that_breaks_the_slo_in_one_repeat_is_not_recommended_whatever_its_median():
    base = runs("baseline", [100, 102, 98], baseline=True)
    a = runs("trial 3", [200, 210, 205], feasible=[True, False, True], of=3)
    b = runs("trial 5", [130, 133, 128], of=5)
    rec = recommend([base, a, b])
    assert rec.chosen is b and "trial 3 (infeasible in 1 of 3 repeats)" in rec.reason


def test_a_simpler_winner_replaces_the_best_only_when_shown_non_inferior_within_the_margin():
    base = runs("baseline", [100, 102, 98], baseline=True)
    a = runs("trial 3", [131, 133, 130], flags=5, of=3)  # the best
    b = runs("trial 5", [129, 132, 128], flags=1, of=5)  # beats the defaults too, within 5 % of a
    rec = recommend([base, a, b])
    assert rec.top is a and rec.chosen is b and rec.tied == ("trial 5",) and rec.beats_baseline
    assert "non-inferior to it within 5%" in rec.reason and "changes 1 flag(s)" in rec.reason
    strict = recommend([base, a, b], margin=0.001)  # a margin it cannot be shown within: the best stays
    assert strict.chosen is a and strict.tied == ()


def test_a_noisy_simpler_config_within_noise_of_the_best_does_not_replace_it():
    base = runs("baseline", [100, 102, 98], baseline=True)
    a = runs("trial 3", [138, 128, 142], flags=5, of=3)  # the best, noisy
    b = runs("trial 5", [124, 126, 121], flags=1, of=5)  # beats the defaults; against a: holds 1, but also 0.9
    assert block_ratio(b, base, [base, a, b], comparisons=2).low > 1 and block_ratio(b, a, [base, a, b]).within_noise
    rec = recommend([base, a, b])
    assert rec.chosen is a and rec.beats_baseline and rec.tied == ()
    assert "of the 2 shown to beat them (trial 3, trial 5)" in rec.reason


def test_when_nothing_beats_the_defaults_the_defaults_are_recommended_without_claiming_equivalence():
    base = runs("baseline", [100, 120, 90], baseline=True)
    a = runs("trial 3", [104, 112, 99], of=3)
    rec = recommend([base, a])
    assert rec.chosen is base and not rec.beats_baseline and rec.uplift.within_noise
    assert "no config was shown to beat vLLM's defaults" in rec.reason and "not a proof" in rec.reason


def test_a_config_that_beats_the_defaults_is_never_lost_through_a_chain_of_within_noise_steps():
    # issue #25: B the defaults, T at x1.30 (95 % CI 1.12-1.51), X one flag, within noise of both. The old
    # rule chose X over T (within T's noise, fewer flags), then B over X (within B's noise): "nothing beats
    # the defaults". X was never shown to beat the defaults, so it can replace nothing: T is recommended.
    b = runs("baseline", [100, 100, 100], baseline=True)
    t = runs("trial 3", [122, 138, 131], flags=5, of=3)
    x = runs("trial 5", [100, 130, 115], flags=1, of=5)
    single = block_ratio(t, b, [b, t, x])
    assert (single.point, single.low, single.high) == pytest.approx((1.30, 1.12, 1.51), abs=0.01)
    assert block_ratio(x, b, [b, t, x]).within_noise and block_ratio(x, t, [b, t, x]).within_noise
    rec = recommend([b, t, x])
    assert rec.chosen is t and rec.beats_baseline and rec.uplift.low > 1.0 and rec.uplift.comparisons == 2


def test_the_recommended_uplift_is_simultaneous_over_every_config_against_the_defaults():
    base = runs("baseline", [100, 102, 98], baseline=True)
    cfgs = [runs(f"trial {i}", [120 + i, 124 + i, 119 + i], of=i) for i in (1, 2, 3)]
    rec = recommend([base, *cfgs])
    plain = block_ratio(rec.chosen, base, [base, *cfgs])
    assert rec.uplift.comparisons == 3 and rec.uplift.low < plain.low and rec.uplift.high > plain.high
    assert rec.uplift.point == pytest.approx(plain.point)


def test_a_baseline_that_breaks_the_slo_loses_to_a_feasible_config_even_within_noise():
    base = runs("baseline", [100, 101, 99], feasible=[True, False, True], baseline=True)
    a = runs("trial 3", [101, 100, 99], of=3)
    rec = recommend([base, a])
    assert rec.chosen is a and rec.beats_baseline and "baseline broke the SLO in 1 of 3" in rec.reason


def test_nothing_feasible_in_every_repeat_means_no_recommendation():
    base = runs("baseline", [100, 101, 99], feasible=[True, False, True], baseline=True)
    a = runs("trial 3", [101, math.nan, 99], feasible=[True, None, True], of=3)
    rec = recommend([base, a])
    assert rec.chosen is None and not rec.beats_baseline and "not every repeat was measured for trial 3" in rec.reason


# ---- block_ratio: the rounds as blocks, the noise pooled over every confirmed config ----------------
def _runs(label: str, of: int, values: tuple[float, ...], baseline: bool = False) -> ConfigRuns:
    return ConfigRuns(label, of, baseline, 0 if baseline else 6, values, tuple(True for _ in values))


def test_block_ratio_of_two_configs_is_the_paired_interval():
    a, b = _runs("a", 1, (110.0, 125.0, 118.0)), _runs("b", 0, (100.0, 104.0, 101.0), True)
    blk, pr = block_ratio(a, b, [a, b]), paired_ratio(a.values, b.values)
    assert (blk.point, blk.low, blk.high, blk.configs) == pytest.approx((pr.point, pr.low, pr.high, 2))


def test_block_ratio_pools_the_residual_noise_of_all_configs():
    # the H200 capacity study's confirmation (output tok/s at capacity, 2 rounds): the paired interval of
    # trial 7 over the baseline (1 degree of freedom, t 12.7) holds 1; the block design's (3 dof) does not
    base = _runs("baseline", 0, (4750.0, 4708.0), True)
    t9, t7, t5 = _runs("trial 9", 9, (7196.0, 7848.0)), _runs("trial 7", 7, (8205.0, 7116.0)), _runs("trial 5", 5, (6753.0, 7356.0))
    runs = [base, t9, t7, t5]
    assert paired_ratio(t7.values, base.values).within_noise
    r = block_ratio(t7, base, runs)
    # by hand: residual SS of the 4 x 2 two-way fit on logs 0.017554, 3 dof; se sqrt(SS/3 * 2/2); t(3) 3.182
    assert (r.point, r.low, r.high, r.dof, r.configs) == pytest.approx((1.6159, 1.267, 2.060, 3, 4), rel=1e-3)
    assert not r.within_noise and "noise pooled over 4 configs" in r.text()
    rec = recommend(runs)
    assert rec.chosen is t7 and rec.beats_baseline and rec.uplift.low > 1


def test_block_ratio_leaves_out_a_config_missing_a_round_and_needs_two_rounds():
    a, b = _runs("a", 1, (110.0, 125.0, 118.0)), _runs("b", 0, (100.0, 104.0, 101.0), True)
    gap = ConfigRuns("gap", 2, False, 1, (90.0, math.nan, 95.0), (True, None, True))
    assert block_ratio(a, b, [a, b, gap]).configs == 2
    one = block_ratio(_runs("a", 1, (110.0,)), _runs("b", 0, (100.0,), True), [])
    assert one.point == pytest.approx(1.1) and math.isnan(one.low)
