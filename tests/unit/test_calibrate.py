"""slo.p99_ms=auto: the SLO calibrated once per study from the baseline's P99 (issue 16, item 1)."""

from __future__ import annotations

import math
import time

import optuna
import pytest

from optimizer.core.errors import ConfigError
from optimizer.loadgen.records import RequestResult
from optimizer.measures.metrics import summarize
from optimizer.measures.objective import score
from optimizer.study.storage import fingerprint
from optimizer.trial import calibrate

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _summary(latencies_s):
    rs = [RequestResult(index=i, ok=True, latency=x, ttft=x / 4, itl=[x / 64] * 63, output_tokens=64,
                        prompt_tokens=256) for i, x in enumerate(latencies_s)]
    return summarize(rs, 10.0)


def test_the_rule_is_the_factor_times_the_baselines_p99_in_whole_ms():
    assert calibrate.calibrated_limit(1000.4, 1.5) == 1501.0


@pytest.mark.parametrize("p99, factor", [(math.nan, 1.5), (0.0, 1.5), (100.0, 1.0)])
def test_the_rule_refuses_an_unmeasured_baseline_or_a_factor_not_above_one(p99, factor):
    with pytest.raises(ValueError):
        calibrate.calibrated_limit(p99, factor)


def test_the_default_demo_is_calibrated_and_judges_trials_by_the_calibrated_limit(compose):
    cfg = compose()
    assert cfg.slo.is_auto and cfg.slo.auto_factor == 1.5 and cfg.study.enqueue_baseline
    with pytest.raises(RuntimeError, match="auto"):
        cfg.slo.limit_ms  # noqa: B018 - an uncalibrated SLO has no limit to judge by
    base = _summary([1.0] * 400)  # the baseline: every request 1 s
    cal = calibrate.from_summary(base, cfg)
    assert cal.base_p99_ms == pytest.approx(1000.0) and cal.slo_ms == 1500.0 and cal.n_ok == 400
    judged = calibrate.resolved(cfg, cal)
    assert judged.slo.limit_ms == 1500.0
    assert score(base, judged.slo).feasible  # the baseline is within 1.5x of itself
    assert not score(_summary([1.0] * 390 + [2.0] * 10), judged.slo).feasible  # a queueing config: P99 2 s


def test_the_calibration_is_stored_once_with_the_study_and_read_back_on_resume(compose, tmp_path):
    cfg = compose()
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    cal = calibrate.from_summary(_summary([1.0] * 400), cfg)
    assert calibrate.store(study, 0, {}) is None  # a trial that did not calibrate stores nothing
    first = calibrate.store(study, 0, {calibrate.ATTR: cal.as_attr()})
    assert first is not None and first.trial == 0 and first.slo_ms == 1500.0
    later = calibrate.from_summary(_summary([3.0] * 400), cfg)  # another worker calibrated as well
    assert calibrate.store(study, 5, {calibrate.ATTR: later.as_attr()}) == first  # the first one stays
    resumed = optuna.load_study(study_name="s", storage=url)
    assert calibrate.stored(resumed.user_attrs) == first
    assert calibrate.resolved(cfg, calibrate.stored(resumed.user_attrs)).slo.p99_ms == 1500.0
    assert "1500 ms" in first.describe() and "baseline trial 0" in first.describe()


def test_an_absolute_limit_is_left_alone_and_cli_integers_become_floats(compose):
    cfg = compose("slo.p99_ms=2500")
    assert cfg.slo.p99_ms == 2500.0 and isinstance(cfg.slo.p99_ms, float) and not cfg.slo.is_auto
    assert calibrate.resolved(cfg, None) is cfg
    assert calibrate.slo_ms(cfg.slo, None) == 2500.0
    assert math.isnan(calibrate.slo_ms(compose().slo, None))


@pytest.mark.parametrize("overrides, key", [
    (("slo.p99_ms=fast",), "slo.p99_ms"),
    (("slo.auto_factor=1.0",), "slo.auto_factor"),
    (("study.enqueue_baseline=false",), "study.enqueue_baseline"),
])
def test_bad_auto_settings_are_refused(compose, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(*overrides)


def test_the_factor_is_part_of_an_auto_studys_identity_only(compose):
    from optimizer.space.search_space import build_space

    auto, absolute = compose(), compose("slo.p99_ms=1500")
    assert fingerprint(auto, build_space(auto))["objective"]["auto_factor"] == 1.5
    assert "auto_factor" not in fingerprint(absolute, build_space(absolute))["objective"]


def test_a_trial_that_finishes_before_the_baseline_waits_for_its_calibration_or_is_retried():
    cal = calibrate.Calibration("e2e", 800.0, 1000.0, 368, 1.5, 1500.0, trial=0)
    answers = iter([None, None, cal])
    assert calibrate.wait(lambda: next(answers), lambda: True, timeout_s=5, poll_s=0.01) == cal
    with pytest.raises(calibrate.NotCalibrated) as e:
        calibrate.wait(lambda: None, lambda: True, timeout_s=0.05, poll_s=0.01)  # never came
    assert not e.value.deterministic and e.value.reason == "slo_not_calibrated"
    t0 = time.monotonic()
    with pytest.raises(calibrate.NotCalibrated):  # no baseline running: no point waiting
        calibrate.wait(lambda: None, lambda: False, timeout_s=60, poll_s=0.01)
    assert time.monotonic() - t0 < 5


# ---- load.mode=capacity: the limit from the baseline's unloaded latency (one user) ------------------------

def test_the_capacity_calibration_run_is_one_user_warmed_up_and_counted(compose):
    cfg = compose("load.mode=capacity", "load.num_requests=8", "load.warmup_requests=3", "load.duration_s=5")
    light = calibrate.light_load(cfg.load)
    assert light.mode == "concurrency" and light.concurrency == 1
    assert light.warmup_requests == 3 and light.num_requests == calibrate.LIGHT_MIN_REQUESTS == 101
    assert light.duration_s == 0  # counted: a timed run at one user could end after a handful of requests
    assert calibrate.light_load(compose("load.mode=capacity", "load.num_requests=368").load).num_requests == 368


def test_the_capacity_rule_is_the_factor_times_the_unloaded_median_which_host_noise_cannot_move(compose):
    cfg = compose("load.mode=capacity", "slo.metric=ttft", "slo.auto_factor=3")
    # one user on a shared host: TTFT 131 ms, but a noise burst hit 3 requests (875 ms at the P99)
    unloaded = _summary([0.524] * 95 + [3.5] * 3 + [0.524] * 3)  # TTFT = latency / 4: 131 ms, 875 ms
    assert unloaded.ttft.p99 > 800
    cal = calibrate.from_summary(unloaded, cfg, users=1)
    assert cal.users == 1 and cal.base_p50_ms == pytest.approx(131.0) and cal.slo_ms == 393.0
    assert calibrate.from_summary(unloaded, cfg).slo_ms > 2600  # fixed-load mode's rule: the P99, burst and all
    judged = calibrate.resolved(cfg, cal).slo
    at4 = _summary([0.6] * 8)  # the defaults at 4 users: TTFT 150 ms
    queued = _summary([0.6 * 3.5] * 8)  # one request at a time: waits for the other three, 525 ms
    assert score(at4, judged).feasible and not score(queued, judged).feasible
    d = cal.describe()
    assert "393 ms" in d and "3 x 131 ms, the median ttft" in d and "at 1 user (unloaded)" in d and "P99 875" in d
    again = calibrate.Calibration.from_attr(cal.as_attr())
    assert again == cal and again is not None and again.users == 1
    legacy = {k: v for k, v in cal.as_attr().items() if k != "users"}  # stored before capacity mode had it
    assert calibrate.Calibration.from_attr(legacy).users == 0


def test_a_one_user_p99_above_the_limit_is_warned_about_with_the_factor_to_use(compose):
    cfg = compose("load.mode=capacity", "slo.auto_factor=1.3")
    spread = _summary([0.16] * 34 + [0.28] * 33 + [0.4] * 34)  # spread output lengths: P99 1.43x the median
    cal = calibrate.from_summary(spread, cfg, users=1)
    w = cal.spread_warning()
    assert w is not None and "slo.auto_factor above 1.4" in w and "364 ms" in w
    assert calibrate.from_summary(spread, compose("load.mode=capacity", "slo.auto_factor=2"), users=1).spread_warning() \
        is None
    assert calibrate.from_summary(spread, cfg).spread_warning() is None  # fixed-load mode: the limit is above its P99
