"""A study run with slo.p99_ms=auto: its report reads the limit the study calibrated, also in the
confirmation section (which once read the raw 'auto' and failed: "could not convert string to float")."""

from __future__ import annotations

import math

from optimizer.reporting.data import study_config
from optimizer.trial.calibrate import ATTR


def test_the_study_config_carries_the_calibrated_limit_in_place_of_auto():
    attrs = {"config": {"slo": {"metric": "e2e", "p99_ms": "auto"}}, ATTR: {"slo_ms": 1630.0}}
    assert study_config(attrs)["slo"] == {"metric": "e2e", "p99_ms": 1630.0}
    assert attrs["config"]["slo"]["p99_ms"] == "auto"  # the stored config is not changed


def test_before_the_baseline_calibrated_the_limit_is_unknown_not_auto():
    cfg = study_config({"config": {"slo": {"p99_ms": "auto"}}})
    assert cfg["slo"]["p99_ms"] is None and math.isnan(float(cfg["slo"]["p99_ms"] or math.nan))


def test_an_absolute_limit_and_the_fallback_config_pass_through():
    assert study_config({"config": {"slo": {"p99_ms": 1500.0}}})["slo"]["p99_ms"] == 1500.0
    assert study_config({}, {"slo": {"p99_ms": 900}})["slo"]["p99_ms"] == 900


def test_the_report_writer_gives_the_confirmation_section_the_resolved_config():
    import inspect

    from optimizer.reporting import write

    src = inspect.getsource(write)
    assert "confirmation_view(trials, study_config(" in src
