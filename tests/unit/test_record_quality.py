"""The quality part of a trial record and the JSON of probe scores survive their encodings."""

from __future__ import annotations

import math

from optimizer.quality.gate import Floor, evaluate
from optimizer.quality.scoring import Generation, QualityScores, TextScore, compare
from optimizer.record import Quality, Setup, TrialRecord
from optimizer.record.quality import scores_from_json, scores_to_json
from optimizer.settings.config import QualityConfig
from tests.support.quality_fakes import scores as v2_scores


def _scores(ids: tuple[int, ...] = (1, 2, 3)) -> QualityScores:
    return QualityScores("quality-v1", "ab" * 32, (TextScore("t1", 70, -175.25), TextScore("t2", 30, -61.5)),
                         (Generation("p1", ids, "Paris is", "length"), Generation("p2", (), "", "stop")),
                         48, 1.25, 3.5)


def _same(a: object, b: object) -> bool:
    return repr(a) == repr(b)  # NaN equal to NaN


def test_scores_survive_their_json():
    s = _scores()
    assert _same(scores_from_json(scores_to_json(s)), s)


def test_v2_scores_with_distributions_tasks_and_top_ids_survive_their_json():
    s = v2_scores(0.2, correct=[True, False, True])
    back = scores_from_json(scores_to_json(s))
    assert back.tasks == s.tasks and back.generations == s.generations
    assert back.dists == s.dists and compare(back, s).distance.mean_kld == 0.0


def test_a_graded_quality_part_survives_the_trial_attrs():
    ref, s = v2_scores(), v2_scores(1.0, gens=((1, 2, 4), (7, 8)), correct=[False] * 10)
    ev = evaluate(compare(s, ref), QualityConfig(), Floor(0.001, 0.01, 0.999, 1))
    q = Quality.of(s, ev, numerics="kv_cache_dtype: None -> fp8_e5m2", gated=True, self_mean_kld=0.0005)
    rec = TrialRecord(Setup("cpu", "smollm2", "w", {}), quality=q)
    attrs = rec.to_attrs()
    assert attrs["q_gated"] is True and attrs["q_numerics"].startswith("kv_cache_dtype")
    assert attrs["q_exact_match"] == 0.5 and attrs["q_probe_s"] == 3.5 and "McNemar" in attrs["q_reasons"]
    back = TrialRecord.from_attrs(attrs).quality
    assert back is not None and back.gated and not back.is_reference and back.violation == round(ev.violation, 4) > 0
    d = ev.verdict.distance
    assert math.isclose(back.mean_kld, d.mean_kld, rel_tol=1e-4) and math.isclose(back.same_top1, d.same_top1)
    assert back.task_accuracy == 0.0 and back.reference_task_accuracy == 1.0 and back.mcnemar_p < 0.01
    assert back.floor_mean_kld == 0.001 and back.self_mean_kld == 0.0005 and back.reasons == q.reasons
    assert back.scores is not None and back.scores.tasks == s.tasks


def test_a_skipped_probe_is_recorded_with_nan_figures_not_zeros():
    rec = TrialRecord(Setup(), quality=Quality(skipped="dummy weights"))
    attrs = rec.to_attrs()
    assert attrs["q_skipped"] == "dummy weights" and attrs["q_ppl"] is None and "q_scores" not in attrs
    back = TrialRecord.from_attrs(attrs).quality
    assert back is not None and back.skipped == "dummy weights" and not back.measured
    assert math.isnan(back.agreement) and math.isnan(back.ppl_increase)


def test_a_reference_trial_and_a_record_without_the_part():
    q = Quality.of(_scores(), None, is_reference=True)
    back = TrialRecord.from_attrs(TrialRecord(quality=q).to_attrs()).quality
    assert back is not None and back.is_reference and math.isnan(back.agreement) and back.measured
    assert TrialRecord.from_attrs(TrialRecord().to_attrs()).quality is None
