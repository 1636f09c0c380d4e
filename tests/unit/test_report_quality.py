"""The report's quality section: per-trial figures, who the gate rejected and why, the winner
next to the baseline, and a plain note when quality was not measured (dummy weights)."""

from __future__ import annotations

import math

import optuna

from optimizer.measures.metrics import Dist, LoadSummary
from optimizer.settings.config import QualityConfig
from optimizer.quality.gate import evaluate
from optimizer.quality.scoring import QualityScores, compare
from optimizer.record import Lineage, Measurement, Quality, Setup, TrialRecord
from optimizer.reporting import write_study_report
from optimizer.reporting.data import build_report_data
from optimizer.reporting.quality_section import quality_figure, quality_info, trade_lines
from optimizer.server.telemetry import ServerStats
from tests.support.quality_fakes import scores


def _scores(ids: tuple[int, ...], lp: float) -> QualityScores:
    damaged = lp != -200.0
    return scores(1.0 if damaged else 0.0, gens=(ids,), correct=[not damaged] * 10)


REF = _scores((1, 2, 3, 4), -200.0)


def _measurement(tok_s: float, spec: float) -> Measurement:
    d = Dist(10, 100.0, 90.0, 120.0, 130.0, 140.0, 80.0, 150.0)
    s = LoadSummary(n_requests=10, n_ok=10, error_rate=0.0, errors={}, duration_s=1.0, output_tok_s=tok_s,
                    total_tok_s=tok_s, req_s=10.0, output_tokens=100, prompt_tokens=100, ttft=d, itl=d, e2e=d,
                    tpot_mean_ms=1.0)
    return Measurement(s, ServerStats(1.0, 2.0, 9.0, 0.0, math.nan, spec_acceptance=spec, spec_drafts=1.0,
                                      kv_usage_peak=0.5, running_peak=8.0, waiting_peak=1.0, kv_cache_tokens=4096.0,
                                      num_gpu_blocks=32.0, block_size=128.0))


def _study(quality: list[tuple[Quality, float, dict]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("config", {"quality": {"mode": "gate", "max_mean_kld": 0.005, "min_same_top1": 0.97},
                                   "slo": {"metric": "e2e", "p99_ms": 1000}})
    for k, (q, tok_s, params) in enumerate(quality):
        def objective(trial: optuna.Trial, q=q, tok_s=tok_s, params=params, k=k) -> float:
            rec = TrialRecord(Setup("cpu", "smollm2", "w", params), Lineage(baseline=k == 0), quality=q,
                              measurement=_measurement(tok_s, 0.4 if "speculative" in params else math.nan))
            for key, v in rec.to_attrs().items():
                trial.set_user_attr(key, v)
            for key, v in {"slo": -0.5, "errors": 0.0, "startup": 0.0, "memory": 0.0,
                           "quality": q.violation if q.gated else 0.0}.items():
                trial.set_constraint(key, v)
            return tok_s
        study.optimize(objective, n_trials=1)
    return study


def _graded(s: QualityScores, numerics: str, violation: float, **kw) -> Quality:
    q = Quality.of(s, evaluate(compare(s, REF), QualityConfig()), numerics=numerics, gated=bool(numerics), **kw)
    return q if violation == q.violation else Quality(**{**q.__dict__, "violation": violation})


def test_rejected_configs_winner_and_baseline(tmp_path):
    study = _study([(_graded(REF, "", 0.0, is_reference=True, self_mean_kld=0.002, self_same_top1=0.99), 100.0, {}),
                    (_graded(_scores((1, 9, 9, 9), -260.0), "kv_cache_dtype: None -> fp8_e5m2", 30.0), 300.0,
                     {"kv_cache_dtype": "fp8_e5m2"}),
                    (_graded(REF, "speculative: None -> ngram", 0.0), 200.0, {"speculative": "ngram"}),
                    (_graded(_scores((9, 9, 9, 9), -200.0), "", 1.0), 50.0, {"max_num_seqs": 4})])  # not gated
    trials = study.get_trials()
    d = build_report_data(study.study_name, trials, study.user_attrs)
    info = quality_info(d, trials)
    assert [r.number for r in info.rows if r.rejected] == [1]
    assert info.winner is not None and info.winner.number == 2 and info.baseline.number == 0
    assert info.rows[2].spec_acceptance == 0.4 and math.isnan(info.rows[0].spec_acceptance)
    assert info.measured and not info.notes and quality_figure(info) is not None
    page = write_study_report(study, tmp_path).read_text()
    assert 'id="quality"' in page and "Rejected by the quality gate" in page
    assert "trial 1 (kv_cache_dtype: None -&gt; fp8_e5m2): mean KLD " in page and "McNemar p" in page
    assert "noise floor (the baseline&#x27;s server against itself" in page or "noise floor (the baseline" in page
    assert f"{info.rows[1].mean_kld / 0.002:.1f}x" in page  # each trial's distance in floors
    assert info.max_mean_kld == 0.005 and info.rows[1].task_accuracy == 0.0 and info.rows[1].mean_kld > 0.005


def test_the_trade_puts_a_rejected_faster_config_beside_its_verdict(tmp_path):
    """A numerics change that carried more than the winner but was rejected shows what the gate gave
    up, and a passing one its distance; the baseline's numerics are not a trade."""
    study = _study([(_graded(REF, "", 0.0, is_reference=True), 100.0, {}),
                    (_graded(_scores((1, 9, 9, 9), -260.0), "kv_cache_dtype: None -> fp8", 30.0), 300.0,
                     {"kv_cache_dtype": "fp8"}),
                    (_graded(REF, "speculative: None -> ngram", 0.0), 200.0, {"speculative": "ngram"})])
    trials = study.get_trials()
    d = build_report_data(study.study_name, trials, study.user_attrs)
    lines = trade_lines(quality_info(d, trials))
    # the all-trials table says why the faster config is infeasible (not only "infeasible")
    assert d.trials[1].detail.startswith("rejected by the quality gate: mean KLD ") and not d.trials[2].detail
    assert len(lines) == 2
    assert lines[0].startswith("trial 1 (kv_cache_dtype: None -> fp8): 300 output tok/s, +50.0 % against the "
                               "winner (trial 2); rejected by the quality gate: mean KLD ")
    assert lines[0].endswith("; the gate gave up 50.0 % for quality")
    assert lines[1].startswith("trial 2 (speculative: None -> ngram): 200 output tok/s (the winner); within the "
                               "quality gate (mean KLD 0, same top-1 100.00 %)")
    page = write_study_report(study, tmp_path).read_text()
    assert "The trade: what each numerics change carried" in page and "the gate gave up 50.0 % for quality" in page


def test_the_trade_states_a_capacity_searched_as_a_rate_in_requests_per_second():
    study = _study([(_graded(REF, "", 0.0, is_reference=True), 100.0, {}),
                    (_graded(_scores((1, 9, 9, 9), -260.0), "kv_cache_dtype: None -> fp8", 30.0), 300.0,
                     {"kv_cache_dtype": "fp8"})])
    trials = study.get_trials()
    info = quality_info(build_report_data(study.study_name, trials, study.user_attrs), trials)
    info = info._replace(rows=[r._replace(capacity=3.5) for r in info.rows])
    assert "300 output tok/s at 4 users," in trade_lines(info)[0]
    assert "300 output tok/s at 3.5 req/s," in trade_lines(info._replace(rate_control=True))[0]


def test_dummy_weights_say_quality_was_not_measured(tmp_path):
    study = _study([(Quality(skipped="dummy weights"), 100.0, {}),
                    (Quality(skipped="dummy weights"), 150.0, {"kv_cache_dtype": "fp8"})])
    trials = study.get_trials()
    info = quality_info(build_report_data(study.study_name, trials, study.user_attrs), trials)
    assert not info.measured and quality_figure(info) is None
    assert "Quality was not measured in this study (dummy weights)" in info.notes[0]
    assert "Quality was not measured in this study" in write_study_report(study, tmp_path).read_text()


def test_a_study_without_probes_has_no_quality_section(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: 1.0, n_trials=1)
    assert 'id="quality"' not in write_study_report(study, tmp_path).read_text()
