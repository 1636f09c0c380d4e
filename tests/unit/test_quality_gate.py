"""Which trials the quality probe runs on, and the graded `quality` constraint."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from optimizer.settings.config import QualityConfig
from optimizer.quality.gate import UNMEASURED_VIOLATION, Floor, Limits, evaluate, grade, needs_probe, noise_floor, \
    numerics_changes
from optimizer.quality.scoring import TextScore, compare
from tests.support.quality_fakes import dist, scores

BASE = {"max_num_seqs": 128, "enable_prefix_caching": True}


@pytest.mark.parametrize("params", [
    {"max_num_seqs": 16, "max_num_batched_tokens": 512, "enable_prefix_caching": False},
    {"dtype": "auto", "kv_cache_dtype": "auto", "quantization": "none", "speculative": "off"},
    {"speculative": "off", "num_speculative_tokens": 5, "ngram_lookup_max": 3},  # settings of a method that is off
])
def test_scheduler_changes_and_default_spellings_need_no_probe(params):
    assert not needs_probe(params, BASE)


@pytest.mark.parametrize("params,key", [
    ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype"),
    ({"dtype": "float16"}, "dtype"),
    ({"quantization": "fp8"}, "quantization"),
    ({"speculative": "ngram", "num_speculative_tokens": 3}, "speculative"),
])
def test_numerics_changes_need_a_probe(params, key):
    assert needs_probe(params, BASE)
    assert key in numerics_changes(params, BASE, QualityConfig().numerics_params)


def test_speculative_settings_count_while_speculation_is_on():
    base = {"speculative": "ngram", "num_speculative_tokens": 3}
    assert not needs_probe({"speculative": "ngram", "num_speculative_tokens": 3}, base)
    assert numerics_changes({"speculative": "ngram", "num_speculative_tokens": 5}, base,
                            QualityConfig().numerics_params) == {"num_speculative_tokens": (3, 5)}


def test_only_the_configured_numerics_params_count():
    assert not needs_probe({"speculative": "ngram"}, BASE, ["dtype", "kv_cache_dtype"])


CFG = QualityConfig()


def test_the_reference_against_itself_passes():
    ev = evaluate(compare(scores(), scores()), CFG)
    assert ev.passed and ev.violation == 0.0 and ev.reasons == ()


def test_a_small_distribution_shift_passes_and_a_large_one_is_graded_by_its_relative_excess():
    small = evaluate(compare(scores(0.01), scores()), CFG)
    assert small.passed and 0 < small.verdict.distance.mean_kld < CFG.max_mean_kld
    large = evaluate(compare(scores(1.0), scores()), CFG)
    d = large.verdict.distance
    assert not large.passed and any("mean KLD" in r for r in large.reasons)
    assert large.violation >= (d.mean_kld - CFG.max_mean_kld) / CFG.max_mean_kld


def test_flipped_top1_tokens_fail_same_top1():
    ev = evaluate(compare(scores(flip_every=10), scores()), CFG)
    assert ev.verdict.distance.same_top1 == pytest.approx(0.9, abs=0.01)
    assert any("same top-1" in r for r in ev.reasons) and not ev.passed


def test_the_noise_floor_raises_the_limits_to_its_multiple():
    lim = Limits.of(CFG, Floor(0.01, 0.2, 0.98, 1))
    assert lim.mean_kld == pytest.approx(3 * 0.01) and lim.p99_kld == pytest.approx(0.6)
    assert lim.same_top1 == pytest.approx(min(CFG.min_same_top1, 1 - 3 * 0.02))
    assert Limits.of(CFG, Floor()) == Limits(CFG.max_mean_kld, CFG.max_p99_kld, CFG.min_same_top1)
    moved = compare(scores(0.3), scores())
    assert not evaluate(moved, CFG).passed
    floor = noise_floor(scores(), [scores(0.3)])
    assert floor.views == 1 and evaluate(moved, CFG, floor).passed  # within 3x a floor that large


def test_tasks_lost_beyond_chance_are_rejected_and_a_few_are_not():
    ref = scores(correct=[True] * 10)
    bad = evaluate(compare(scores(correct=[False] * 7 + [True] * 3), ref), CFG)
    assert not bad.passed and any("McNemar" in r for r in bad.reasons)
    few = evaluate(compare(scores(correct=[False] * 2 + [True] * 8), ref), CFG)
    assert few.passed and few.verdict.tasks.lost == 2


def test_speculative_decoding_must_flip_only_near_ties():
    ref = scores(gens=((1, 2, 3, 4), (7, 8)))
    wrong = scores(gens=((1, 9, 3, 4), (7, 8)))  # 9 is not in the reference's top-N (2, 102) at position 1
    assert compare(wrong, ref).not_near_tie == 1
    assert not evaluate(compare(wrong, ref), CFG, speculative=True).passed
    assert evaluate(compare(wrong, ref), CFG).passed  # a greedy flip alone is information, not a gate
    near = scores(gens=((1, 102, 3, 4), (7, 8)))  # 102 is the reference's second choice, 2 the trial's
    g0 = near.generations[0]
    near = replace(near, generations=(replace(g0, top_ids=((1, 101), (102, 2), (3, 103), (4, 104))),
                                      near.generations[1]))
    assert compare(near, ref).not_near_tie == 0 and compare(near, ref).diverged == 1


def test_a_verdict_with_nothing_measured_is_infeasible_never_nan():
    s = replace(scores(), dists=())
    assert grade(compare(s, scores()), CFG) == UNMEASURED_VIOLATION > 0


def test_a_trial_that_scored_a_long_passage_on_its_first_tokens_is_compared_on_them():
    """A server whose context is shorter than a passage scores its first max_model_len - 1 tokens
    (optimizer.quality.server_probe): compare() takes it, on the positions both sides have, where
    it used to refuse it as 'another tokenizer' (a real 2,048-token server against a 4,096 one did)."""
    def cut(s, n):
        dists = tuple(dist(d.id, n) if d.id == "long" else d for d in s.dists)
        return replace(s, dists=dists, texts=tuple(TextScore(d.id, d.n, math.fsum(d.logprobs)) for d in dists))

    v = compare(cut(scores(), 600), scores())
    assert v.distance is not None and v.distance.n_positions == 50 + 600 and v.distance.mean_kld == 0.0
    tilted = replace(cut(scores(), 600), dists=(dist("t1", 50, 0.5), dist("long", 600, 0.5)))
    assert compare(tilted, scores()).distance.mean_kld > 0.01
