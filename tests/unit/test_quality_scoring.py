"""Pure scoring of the quality probe: perplexity, first divergence, the verdict."""

from __future__ import annotations

import math

import pytest

from optimizer.quality.scoring import (
    Generation,
    QualityScores,
    TextScore,
    compare,
    first_divergence,
    perplexity,
    text_score,
)


def scores(texts=(("a", 10, -20.0), ("b", 30, -30.0)), gens=(("p", (1, 2, 3, 4)), ("q", (5, 6))),
           dataset="quality-v1", sha="s" * 64, max_tokens=4) -> QualityScores:
    return QualityScores(dataset, sha, tuple(TextScore(i, n, lp) for i, n, lp in texts),
                         tuple(Generation(i, ids, "", "length") for i, ids in gens), max_tokens, 1.0, 2.0)


def test_perplexity_is_token_weighted_over_all_texts_not_a_mean_of_per_text_values():
    s = scores()
    assert s.n_tokens == 40
    assert s.ppl == pytest.approx(math.exp(50 / 40))
    assert s.ppl != pytest.approx((s.texts[0].ppl + s.texts[1].ppl) / 2)
    assert s.seconds == 3.0


def test_perplexity_of_nothing_is_nan_not_zero_or_one():
    assert math.isnan(perplexity(0.0, 0))
    assert math.isnan(scores(texts=()).ppl)


def test_text_score_skips_the_first_token_which_has_no_context():
    t = text_score("x", [5, 6, 7], [None, -1.0, -3.0])
    assert (t.n_tokens, t.sum_logprob) == (2, -4.0)
    assert t.ppl == pytest.approx(math.exp(2.0))


@pytest.mark.parametrize("ids,lps", [([5, 6], [None]), ([5, 6, 7], [None, None, -1.0])])
def test_text_score_refuses_missing_or_misaligned_logprobs(ids, lps):
    with pytest.raises(ValueError):
        text_score("x", ids, lps)


@pytest.mark.parametrize("a,b,n", [((1, 2, 3), (1, 2, 3), 3), ((1, 2, 3), (1, 9, 3), 1), ((), (1,), 0),
                                   ((1, 2), (1, 2, 3), 2), ((7,), (8,), 0)])
def test_first_divergence_counts_the_shared_leading_tokens(a, b, n):
    assert first_divergence(a, b) == n == first_divergence(b, a)


def test_a_server_compared_with_itself_agrees_fully_and_has_no_ppl_increase():
    v = compare(scores(), scores())
    assert v.ppl_increase == 0.0 and v.agreement == 1.0 and v.exact_match_rate == 1.0
    assert [i.first_divergence for i in v.items] == [4, 2]


def test_divergence_and_a_shorter_answer_lower_agreement_item_by_item():
    ref = scores()
    trial = scores(texts=(("a", 10, -22.0), ("b", 30, -30.0)), gens=(("p", (1, 2, 9, 9)), ("q", (5,))))
    v = compare(trial, ref)
    assert v.ppl_increase == pytest.approx(math.exp(52 / 40) / math.exp(50 / 40) - 1)
    assert [(i.first_divergence, i.exact, i.agreement) for i in v.items] == [(2, False, 0.5), (1, False, 0.5)]
    assert v.agreement == 0.5 and v.exact_match_rate == 0.0 and v.mean_first_divergence == 1.5


@pytest.mark.parametrize("trial,needle", [
    (scores(dataset="quality-v2"), "quality set"),
    (scores(sha="t" * 64), "quality set"),
    (scores(max_tokens=8), "max_tokens"),
    (scores(texts=(("a", 11, -20.0), ("b", 30, -30.0))), "tokenizer"),
    (scores(texts=(("a", 10, -20.0),)), "texts"),
    (scores(gens=(("p", (1,)),)), "prompts"),
])
def test_scores_from_another_set_or_tokenizer_are_not_compared(trial, needle):
    with pytest.raises(ValueError, match=needle):
        compare(trial, scores())


def test_an_answer_longer_than_the_reference_is_not_full_agreement():
    v = compare(scores(gens=(("p", (1, 2, 3, 4)), ("q", (5, 6, 7, 8)))), scores())
    q = v.items[1]
    assert (q.first_divergence, q.exact, q.agreement) == (2, False, 0.5)
