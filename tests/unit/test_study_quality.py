"""The loop's side of the quality probe: the reference stored once per study, verdicts graded
against it, the ``quality`` constraint applied only where the numerics differ and mode=gate."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import optuna
import pytest

from optimizer.measures.objective import Outcome
from optimizer.quality import UNMEASURED_VIOLATION
from optimizer.quality.scoring import QualityScores
from optimizer.record import Quality, Setup, TrialRecord
from optimizer.trial import trial_quality as sq
from tests.support.quality_fakes import scores as fake_scores

BASE = {"kv_cache_gib": 2}
FP8 = {"kv_cache_gib": 2, "kv_cache_dtype": "fp8_e5m2"}
SCHED = {"kv_cache_gib": 2, "max_num_seqs": 4}


def _scores(ids: tuple[int, ...], lp: float = -200.0) -> QualityScores:
    """Baseline-like scores for (1, 2, 3, 4); others are damaged: distributions tilted, tasks lost."""
    damaged = ids != (1, 2, 3, 4)
    return fake_scores(1.0 if damaged else 0.0, gens=(ids, (7, 8)), correct=[not damaged] * 10)


def _rec(scores: QualityScores | None = None, **kw) -> TrialRecord:
    q = Quality.of(scores, None) if scores is not None else Quality(**kw)
    return TrialRecord(Setup(), quality=q, outcome=Outcome(100.0, {"slo": -0.5, "errors": 0.0, "startup": 0.0,
                                                                     "memory": 0.0}, True))


@pytest.fixture
def study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def test_baseline_sets_the_reference_once_and_a_damaging_numerics_change_is_gated(compose, study):
    cfg = compose("quality.mode=gate")
    base = sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), BASE, BASE)
    assert base.quality.is_reference and base.quality.mean_kld == 0.0 and base.quality.violation == 0.0
    assert base.outcome.constraints["quality"] == 0.0 and base.outcome.feasible
    assert sq.read_reference(study) == _scores((1, 2, 3, 4))
    bad = sq.judge(study, cfg, _rec(_scores((1, 9, 9, 9), lp=-260.0)), FP8, BASE)
    q = bad.quality
    assert q.gated and not q.is_reference and q.numerics == "kv_cache_dtype: None -> fp8_e5m2"
    assert q.mean_kld > 0.05 and q.task_accuracy == 0.0 and q.ppl_ratio > 1.0 and "mean KLD" in q.reasons
    assert bad.outcome.constraints["quality"] == q.violation > 0 and not bad.outcome.feasible
    assert sq.read_reference(study) == _scores((1, 2, 3, 4))  # stored once: a later trial does not replace it


def test_measure_mode_records_the_grade_without_a_constraint(compose, study):
    cfg = compose("quality.mode=measure")
    sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), BASE, BASE)
    bad = sq.judge(study, cfg, _rec(_scores((9, 9, 9, 9))), FP8, BASE)
    assert bad.quality.violation > 0 and not bad.quality.gated
    assert "quality" not in bad.outcome.constraints and bad.outcome.feasible


def test_same_numerics_are_measured_but_never_gated(compose, study):
    cfg = compose("quality.mode=gate")
    sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), BASE, BASE)
    other = sq.judge(study, cfg, _rec(_scores((9, 9, 9, 9))), SCHED, BASE)  # nondeterminism is recorded only
    assert not other.quality.gated and other.quality.violation > 0 and other.outcome.constraints["quality"] == 0.0


def test_a_changed_config_before_any_reference_is_unmeasured_and_keeps_its_scores(compose, study):
    cfg = compose("quality.mode=gate")
    r = sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), FP8, BASE)
    assert "no quality reference yet" in r.quality.error and r.quality.scores is not None
    assert r.outcome.constraints["quality"] == UNMEASURED_VIOLATION and sq.read_reference(study) is None


def test_a_trial_finished_before_the_reference_waits_for_the_running_baseline_and_is_graded(compose, study):
    cfg = compose("quality.mode=gate")
    calls: list[int] = []

    def baseline_running() -> bool:  # the baseline (another worker) stores the reference on the second look
        calls.append(1)
        if len(calls) == 2:
            sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), BASE, BASE)
        return len(calls) < 3

    r = sq.judge(study, cfg, _rec(_scores((1, 9, 9, 9), lp=-260.0)), FP8, BASE, baseline_running=baseline_running,
                 poll_s=0.01)
    assert not r.quality.error and r.quality.mean_kld > 0.05 and r.outcome.constraints["quality"] > 0
    ok = sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), FP8, BASE, baseline_running=lambda: False)
    assert ok.quality.mean_kld == 0.0 and ok.outcome.constraints["quality"] == 0.0


def test_the_reference_trial_stores_its_self_distance_as_the_noise_floor(compose, study):
    cfg = compose("quality.mode=gate")
    rec = _rec(_scores((1, 2, 3, 4)))
    rec = TrialRecord(rec.setup, quality=replace(rec.quality, self_mean_kld=0.004, self_p99_kld=0.05,
                                                 self_same_top1=0.98), outcome=rec.outcome)
    sq.judge(study, cfg, rec, BASE, BASE)
    floor = sq.read_floor(study)
    assert (floor.mean_kld, floor.p99_kld, floor.same_top1, floor.views) == (0.004, 0.05, 0.98, 1)
    # a trial 1.6x the configured mean limit passes within 3x that floor
    moved = sq.judge(study, cfg, _rec(fake_scores(0.25)), FP8, BASE)
    assert 0.005 < moved.quality.mean_kld < 0.012 and moved.quality.floor_mean_kld == 0.004
    assert moved.outcome.constraints["quality"] == 0.0, moved.quality.reasons


def test_a_failed_probe_on_a_gated_config_is_infeasible(compose, study):
    cfg = compose("quality.mode=gate")
    r = sq.judge(study, cfg, _rec(error="quality probe, text 't1': HTTP 500"), FP8, BASE)
    assert r.outcome.constraints["quality"] == UNMEASURED_VIOLATION and not r.outcome.feasible


def test_dummy_weights_skip_the_probe_with_one_warning_per_study(compose, study, caplog):
    cfg = compose("quality.mode=gate", "model.load_format=dummy", "study.name=dummy-warn-test")
    with caplog.at_level(logging.WARNING):
        a = sq.probe_server(cfg, "http://127.0.0.1:1", "m", None)
        b = sq.probe_server(cfg, "http://127.0.0.1:1", "m", None)
    assert a.skipped == b.skipped == sq.DUMMY_WEIGHTS
    assert sum("load_format=dummy" in r.message for r in caplog.records) == 1
    r = sq.judge(study, cfg, TrialRecord(quality=a, outcome=_rec().outcome), FP8, BASE)
    assert r.outcome.constraints["quality"] == 0.0 and r.quality.skipped == sq.DUMMY_WEIGHTS


def test_mode_off_probes_nothing_and_adds_no_constraint(compose, study):
    cfg = compose("quality.mode=off")
    q = sq.probe_server(cfg, "http://127.0.0.1:1", "m", None)
    assert q.skipped == "quality.mode=off"
    assert "quality" not in sq.judge(study, cfg, TrialRecord(quality=q, outcome=_rec().outcome), FP8,
                                     BASE).outcome.constraints


def test_the_loop_stores_the_reference_and_gates_a_damaging_trial(compose, tmp_path):
    """Through run_study with an injected runner: the baseline's probe becomes the reference, the
    fp8_e5m2 KV-cache trial is infeasible by the quality constraint alone."""
    from dataclasses import replace as dc_replace

    from optimizer.loadgen.records import RequestResult
    from optimizer.measures.metrics import summarize
    from optimizer.measures.objective import score
    from optimizer.record import Measurement
    from optimizer.server.telemetry import Snapshot, server_stats
    from optimizer.study.loop import Runtime, run_study

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = compose("model.generate=", f"model.path={model}", "study.name=q", "search.sampler=random",
                  f"study.storage=sqlite:///{tmp_path / 'q.db'}", f"study.runs_dir={tmp_path / 'runs'}",
                  f"server.cache_dir={tmp_path / 'cache'}", "study.n_trials=2", "search.kv_cache_dtype=[fp8_e5m2]",
                  "quality.mode=gate", "slo.p99_ms=1000")

    def runner(ctx, number, params, tag, rule_check):
        results = [RequestResult(i, ok=True, ttft=0.01, latency=0.1, output_tokens=16, prompt_tokens=64)
                   for i in range(20)]
        summary = summarize(results, 1.0)
        damaged = params.kv_cache_dtype == "fp8_e5m2"
        scores = _scores((1, 9, 9, 9) if damaged else (1, 2, 3, 4), -260.0 if damaged else -200.0)
        return TrialRecord(Setup(), measurement=Measurement(summary, server_stats(Snapshot(), Snapshot(), {})),
                           quality=Quality.of(scores, None), outcome=score(summary, ctx.cfg.slo))

    run_study(cfg, Runtime(environ={}, worker="test/w0"), runner=runner)
    study = optuna.load_study(study_name="q", storage=cfg.study.storage)
    t0, t1 = study.trials
    assert sq.read_reference(study) == _scores((1, 2, 3, 4))
    q0, q1 = TrialRecord.from_trial(t0).quality, TrialRecord.from_trial(t1).quality
    assert q0.is_reference and t0.constraints["quality"] == 0.0 and TrialRecord.from_trial(t0).outcome.feasible
    assert q1.gated and t1.constraints["quality"] > 0
    assert t1.constraints["slo"] <= 0 and t1.user_attrs["feasible"] is False
    assert dc_replace(q1, scores=None).numerics == "kv_cache_dtype: None -> fp8_e5m2"


def test_only_a_trial_that_may_become_the_reference_measures_the_noise_floor(compose, study):
    cfg = compose("quality.mode=gate")
    assert sq.measures_floor(study, cfg, BASE, BASE)  # the baseline, no reference yet
    assert not sq.measures_floor(study, cfg, FP8, BASE)  # never the reference
    assert not sq.measures_floor(study, compose("quality.mode=off"), BASE, BASE)
    sq.judge(study, cfg, _rec(_scores((1, 2, 3, 4))), BASE, BASE)
    assert not sq.measures_floor(study, cfg, BASE, BASE) and not sq.measures_floor(study, cfg, SCHED, BASE)
    study.set_user_attr(sq.REFERENCE_ATTR, "{not json")  # unreadable: the next baseline-numerics trial measures both
    assert sq.measures_floor(study, cfg, SCHED, BASE)
