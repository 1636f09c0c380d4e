"""Open-loop arrival times and request-count planning. Pure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optimizer.loadgen.runner import arrival_times, plan_requests
from optimizer.settings.config import LoadConfig


def test_arrivals_are_seeded_and_start_at_zero():
    a = arrival_times(100, 5.0, "poisson", 3)
    assert a == arrival_times(100, 5.0, "poisson", 3)
    assert a != arrival_times(100, 5.0, "poisson", 4)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:]))


def test_constant_arrivals_are_evenly_spaced():
    a = arrival_times(11, 4.0, "constant", 0)
    assert np.allclose(np.diff(a), 0.25) and a[-1] == pytest.approx(2.5)


def test_poisson_gaps_are_exponential_at_the_rate():
    gaps = np.diff(arrival_times(20001, 8.0, "poisson", 0))
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # CV of the exponential
    assert np.mean(gaps > 3 / 8.0) == pytest.approx(np.exp(-3), abs=0.01)  # its tail


def _cfg(**kw) -> LoadConfig:
    return dataclasses.replace(LoadConfig(), **kw)


def test_too_few_requests_warn_by_default_and_keep_the_count():
    n, note = plan_requests(_cfg(num_requests=96))
    assert n == 96 and "368" in note and "p99_sizing=auto" in note


def test_auto_sizing_raises_the_count_to_the_bound_minimum():
    assert plan_requests(_cfg(num_requests=96, p99_sizing="auto"))[0] == 368
    assert plan_requests(_cfg(num_requests=96, p99_sizing="auto", p99_confidence=0.99))[0] == 528
    assert plan_requests(_cfg(num_requests=1000, p99_sizing="auto")) == (1000, "")


def test_sizing_off_is_silent_and_a_rate_run_is_judged_by_its_expected_count():
    assert plan_requests(_cfg(num_requests=10, p99_sizing="off")) == (10, "")
    assert "about 100 requests" in plan_requests(_cfg(mode="rate", request_rate=10.0, duration_s=10.0))[1]
    assert plan_requests(_cfg(mode="rate", request_rate=100.0, duration_s=10.0))[1] == ""
