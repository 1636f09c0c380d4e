"""Which trials the quality probe runs on, and the graded `quality` constraint."""

from __future__ import annotations

import math

import pytest

from optimizer.config import QualityConfig
from optimizer.quality.gate import UNMEASURED_VIOLATION, grade, needs_probe, numerics_changes
from optimizer.quality.scoring import ItemAgreement, QualityVerdict

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


def verdict(ppl: float, agreements: list[tuple[int, int]], ref: float = 10.0) -> QualityVerdict:
    return QualityVerdict(ppl, ref, 100, tuple(ItemAgreement(str(i), d, n, n) for i, (d, n) in enumerate(agreements)))


CFG = QualityConfig(max_ppl_increase=0.02, min_agreement=0.8)


@pytest.mark.parametrize("ppl,agree", [(10.0, [(10, 10)]), (10.19, [(8, 10)]), (9.0, [(10, 10)])])
def test_within_both_limits_grades_zero(ppl, agree):
    assert grade(verdict(ppl, agree), CFG) == 0.0


def test_violation_is_graded_by_the_relative_excess_and_sums_both_limits():
    assert grade(verdict(10.6, [(10, 10)]), CFG) == pytest.approx(2.0)  # 6 % over a 2 % limit: 2 limits over
    assert grade(verdict(10.4, [(10, 10)]), CFG) == pytest.approx(1.0)
    assert grade(verdict(10.0, [(4, 10)]), CFG) == pytest.approx(0.5)  # 0.4 under a 0.8 floor
    worse = grade(verdict(10.4, [(4, 10)]), CFG)
    assert worse == pytest.approx(1.5) and worse > grade(verdict(10.4, [(10, 10)]), CFG)


@pytest.mark.parametrize("v", [verdict(math.nan, [(1, 1)]), verdict(10.0, [])])
def test_a_verdict_with_nothing_measured_is_infeasible_never_nan(v):
    assert grade(v, CFG) == UNMEASURED_VIOLATION > 0
