"""Teacher-forced distribution metrics: the KLD lower bound, same-top-1, perplexity ratio."""

from __future__ import annotations

import math
import random

import pytest

from optimizer.quality.distribution import FAR_POSITION, TextDist, kld_lower_bound, percentile, summarize
from tests.support.quality_fakes import dist


def _full_kl(p: list[float], q: list[float]) -> float:
    return math.fsum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_kld_of_a_distribution_from_itself_is_zero():
    d = {1: math.log(0.5), 2: math.log(0.3)}
    assert kld_lower_bound(d, dict(d)) == 0.0


def test_kld_sums_the_shared_tokens_and_one_rest_bucket():
    ref = {1: math.log(0.5), 2: math.log(0.3)}  # rest 0.2
    trial = {1: math.log(0.4), 2: math.log(0.3)}  # rest 0.3
    expected = 0.5 * math.log(0.5 / 0.4) + 0.2 * math.log(0.2 / 0.3)
    assert kld_lower_bound(ref, trial) == pytest.approx(expected)


def test_a_token_only_one_side_knows_falls_into_the_rest_bucket():
    ref = {1: math.log(0.5), 2: math.log(0.3)}
    trial = {1: math.log(0.5), 3: math.log(0.3)}  # 2 is not in the trial's top-k: merged into the rest
    assert kld_lower_bound(ref, trial) == pytest.approx(0.5 * math.log(0.5 / 0.5))


def test_the_truncated_kld_never_exceeds_the_full_kld():
    rng = random.Random(7)
    for _ in range(200):
        n = 30
        p = [rng.random() ** 3 for _ in range(n)]
        q = [x * math.exp(rng.gauss(0, 0.5)) for x in p]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        k = rng.randint(1, 8)
        top = lambda d: dict(sorted(((t, math.log(x)) for t, x in enumerate(d)), key=lambda a: -a[1])[:k])  # noqa: E731
        lb = kld_lower_bound(top(p), top(q))
        assert 0.0 <= lb <= _full_kl(p, q) + 1e-12


def test_a_packed_passage_reads_back_equal():
    d = dist("t", 40, tilt=0.3)
    back = TextDist.unpack(d.pack())
    assert back.token_ids == d.token_ids and back.top_ids == d.top_ids
    assert back == d and back.k == 3


def test_summary_of_the_reference_against_itself_is_zero_distance():
    ref = [dist("a", 50), dist("b", FAR_POSITION + 100)]
    s = summarize(ref, ref)
    assert s.n_positions == 50 + FAR_POSITION + 100 and s.mean_kld == 0.0 and s.p99_kld == 0.0
    assert s.same_top1 == 1.0 and s.ppl_ratio == 1.0 and s.far_positions == 101


def test_a_tilted_distribution_moves_kld_and_perplexity_and_a_flipped_one_moves_same_top1():
    ref = [dist("a", 60)]
    tilted = summarize([dist("a", 60, tilt=0.5)], ref)
    assert tilted.mean_kld > 0.01 and tilted.same_top1 == 1.0 and tilted.ppl_ratio > 1.0
    flipped = summarize([dist("a", 60, flip_every=4)], ref)
    assert flipped.same_top1 == pytest.approx(45 / 60) and flipped.p99_kld > flipped.mean_kld > 0


def test_another_tokenization_is_refused():
    other = dist("a", 50)
    other = TextDist.from_positions("a", 3, [(t + 1) % 6 for t in other.token_ids], list(other.logprobs),
                                    [sorted(other.top(i).items(), key=lambda p: -p[1]) for i in range(other.n)])
    with pytest.raises(ValueError, match="tokenizer"):
        summarize([other], [dist("a", 50)])


def test_a_server_with_a_shorter_context_is_compared_on_the_positions_it_scored():
    """A trial at --max-model-len 2048 scores a 3,000-token passage's first 2,047 tokens; the
    reference (the defaults' longer context) has all of them: the common positions compare, and a
    change within them still shows (issue 27's H200 study lost every quality verdict to this)."""
    ref = [dist("short", 50), dist("long", FAR_POSITION + 400)]
    cut = [dist("short", 50), dist("long", FAR_POSITION + 100)]
    same = summarize(cut, ref)
    assert same.n_positions == 50 + FAR_POSITION + 100 and same.mean_kld == 0.0 and same.far_positions == 101
    assert same.ppl_ratio == pytest.approx(1.0)  # over the same positions, not the reference's whole passage
    tilted = summarize([dist("short", 50, tilt=0.5), dist("long", FAR_POSITION + 100, tilt=0.5)], ref)
    assert tilted.mean_kld > 0.01 and tilted.n_positions == same.n_positions
    assert summarize(ref, cut).n_positions == same.n_positions  # either side may be the shorter


def test_percentile_interpolates_and_is_nan_for_nothing():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert math.isnan(percentile([], 99))
