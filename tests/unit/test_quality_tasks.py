"""The task check (exact answers, McNemar, Wilson) and speculative decoding's exactness check."""

from __future__ import annotations

import math

import pytest

from optimizer.quality.tasks import TaskAnswer, compare_tasks, greedy_exactness, is_correct, mcnemar_p, wilson_interval


@pytest.mark.parametrize("text,ok", [(" 135", True), (" 135.\nmore", True), ("135 apples", False), ("", False),
                                     (" 13", False)])
def test_an_answer_is_its_first_line_exactly(text, ok):
    assert is_correct(text, "135") is ok


def test_mcnemar_exact_p_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(6, 0) == pytest.approx(2 / 64)  # all six discordant tasks lost
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)  # not below 0.05: five is too few to tell
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(2, 8) == mcnemar_p(8, 2)


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def _answers(flags: list[bool]) -> list[TaskAnswer]:
    return [TaskAnswer(f"t{i}", "copy", "", f) for i, f in enumerate(flags)]


def test_paired_comparison_counts_lost_and_won_tasks():
    ref = _answers([True] * 8 + [False] * 2)
    trial = _answers([False] * 7 + [True] + [True, False])
    c = compare_tasks(trial, ref)
    assert (c.lost, c.won, c.n) == (7, 1, 10) and c.worse and c.p_value == pytest.approx(mcnemar_p(7, 1))
    assert c.accuracy == 0.2 and c.reference_accuracy == 0.8 and c.wilson_low == pytest.approx(wilson_interval(2, 10)[0])
    with pytest.raises(ValueError):
        compare_tasks(trial[:-1], ref)


def test_exactness_check_at_the_first_differing_token():
    assert greedy_exactness((1, 2, 3), (1, 2, 3), [], []) is None
    assert greedy_exactness((1, 2), (1, 2, 3), [], []) is None  # one stopped earlier
    near_tie = greedy_exactness((1, 5), (1, 2), [(1,), (5, 2)], [(1,), (2, 5)])
    wrong = greedy_exactness((1, 9), (1, 2), [(1,), (9, 2)], [(1,), (2, 5)])  # 9 is not in the reference's top-N
    assert near_tie is True and wrong is False
