"""The quality part of a trial record and the JSON of probe scores survive their encodings."""

from __future__ import annotations

import math

from optimizer.quality.scoring import Generation, QualityScores, TextScore, compare
from optimizer.record import Quality, Setup, TrialRecord
from optimizer.record.quality import scores_from_json, scores_to_json


def _scores(ids: tuple[int, ...] = (1, 2, 3)) -> QualityScores:
    return QualityScores("quality-v1", "ab" * 32, (TextScore("t1", 70, -175.25), TextScore("t2", 30, -61.5)),
                         (Generation("p1", ids, "Paris is", "length"), Generation("p2", (), "", "stop")),
                         48, 1.25, 3.5)


def _same(a: object, b: object) -> bool:
    return repr(a) == repr(b)  # NaN equal to NaN


def test_scores_survive_their_json():
    s = _scores()
    assert _same(scores_from_json(scores_to_json(s)), s)


def test_a_graded_quality_part_survives_the_trial_attrs():
    ref, s = _scores(), _scores((1, 2, 4))
    v = compare(s, ref)
    q = Quality.of(s, v, numerics="kv_cache_dtype: None -> fp8_e5m2", gated=True, violation=0.5)
    rec = TrialRecord(Setup("cpu", "smollm2", "w", {}), quality=q)
    attrs = rec.to_attrs()
    assert attrs["q_gated"] is True and attrs["q_numerics"].startswith("kv_cache_dtype")
    assert attrs["q_agreement"] == round(v.agreement, 4) and attrs["q_exact_match"] == 0.5
    assert attrs["q_first_divergence"] == 1.0 and attrs["q_probe_s"] == 4.75
    back = TrialRecord.from_attrs(attrs).quality
    assert back is not None and _same(back.scores, s)
    assert back.ppl == round(v.ppl, 5) and back.n_tokens == 100 and back.gated and not back.is_reference
    assert math.isclose(back.ppl_increase, 0.0, abs_tol=1e-4) and back.violation == 0.5


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
