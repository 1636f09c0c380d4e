"""The study's main levers in words (optimizer.reporting.levers): measured effects, controlled
for the settings the sampler paired with them."""

from __future__ import annotations

import math

from optimizer.reporting.levers import main_levers


def _study(rows):
    params = [{"quantization": q, "gpu_memory_utilization": g} for q, g, _, _ in rows]
    return params, [float(y) for *_, y, _ in rows], [f for *_, f in rows]


# fp8 weights add 1000 tok/s; every trial at 0.95 happens to be fp8 (the sampler exploited), and
# the bf16 trials spread over 0.85-0.9 with no change: 0.95 only came along with fp8
ROWS = [("none", 0.85, 1000, False), ("none", 0.90, 1010, False), ("none", 0.90, 990, True),
        ("fp8", 0.85, 2000, True), ("fp8", 0.90, 1990, True),
        ("fp8", 0.95, 2010, True), ("fp8", 0.95, 2000, True), ("fp8", 0.95, 2020, True)]


def test_the_lever_is_named_with_its_medians_and_a_setting_that_only_came_along_is_not():
    lv = main_levers(*_study(ROWS))
    assert [x.param for x in lv.throughput] == ["quantization"]
    top = lv.throughput[0]
    assert (top.better, top.worse, top.n, top.other_n) == ("quantization=fp8", "quantization=none", 5, 3)
    assert top.value == 2000 and top.other_value == 1000
    assert top.text().startswith("quantization=fp8: median 2,000 output tok/s against 1,000 with quantization=none "
                                 "(5 vs 3 trials")


def test_what_separates_feasible_from_infeasible_is_counted_in_trials():
    lv = main_levers(*_study(ROWS))
    assert lv.feasibility and lv.feasibility[0].param == "quantization"
    assert lv.feasibility[0].text() == ("quantization=fp8: 5 of 5 trials feasible, against 1 of 3 with "
                                        "quantization=none")


def test_unmeasured_trials_are_left_out_and_too_few_give_a_reason():
    params, ys, fs = _study(ROWS[:3])
    lv = main_levers(params + [{"quantization": "fp8", "gpu_memory_utilization": 0.9}], ys + [math.nan], fs + [False])
    assert lv.n_measured == 3 and not lv.throughput and "at least 4" in lv.reason


def test_no_feasibility_levers_when_every_trial_is_feasible_or_none_is():
    params, ys, _ = _study(ROWS)
    assert main_levers(params, ys, [True] * len(ys)).feasibility == []
    assert main_levers(params, ys, [False] * len(ys)).feasibility == []
