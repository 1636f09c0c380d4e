"""quality.* keys: composed with defaults, bad values refused naming the key."""

from __future__ import annotations

import pytest

from optimizer.core.errors import ConfigError


def test_quality_defaults_gate_numerics_changes(compose):
    q = compose().quality
    assert q.mode == "gate" and q.max_mean_kld == 0.005 and q.min_same_top1 == 0.97 and q.dataset == "quality-v2"
    assert {"quantization", "dtype", "kv_cache_dtype", "speculative"} <= set(q.numerics_params)


def test_quality_keys_are_overridable(compose):
    q = compose("quality.mode=measure", "quality.max_mean_kld=0.05", "quality.numerics_params=[dtype]",
                "quality.dataset=quality-v1").quality
    assert (q.mode, q.max_mean_kld, q.numerics_params, q.dataset) == ("measure", 0.05, ["dtype"], "quality-v1")
    assert compose("quality.dataset=quality-v2-ci").quality.dataset == "quality-v2-ci"  # the CI-sized subset


@pytest.mark.parametrize("override,needle", [
    ("quality.mode=strict", "quality.mode"),
    ("quality.dataset=quality-v9", "quality.dataset.*available: quality-v1, quality-v2, quality-v2-ci$"),
    ("quality.dataset=quality-ci", "quality.dataset.*'quality-ci'.*no such quality set"),
    ("quality.max_mean_kld=0", "quality.max_mean_kld"),
    ("quality.max_p99_kld=-1", "quality.max_p99_kld"),
    ("quality.min_same_top1=1.5", "quality.min_same_top1"),
    ("quality.floor_multiple=-1", "quality.floor_multiple"),
    ("quality.task_alpha=1", "quality.task_alpha"),
    ("quality.top_k=21", "quality.top_k.*max-logprobs"),
    ("quality.max_tokens=0", "quality.max_tokens"),
    ("quality.numerics_params=[max_num_seqs]", "quality.numerics_params"),
])
def test_bad_quality_values_are_refused_with_the_key_named(compose, override, needle):
    with pytest.raises(ConfigError, match=needle):
        compose(override)
