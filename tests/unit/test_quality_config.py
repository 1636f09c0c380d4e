"""quality.* keys: composed with defaults, bad values refused naming the key."""

from __future__ import annotations

import pytest

from optimizer.errors import ConfigError


def test_quality_defaults_gate_numerics_changes(compose):
    q = compose().quality
    assert q.mode == "gate" and 0 < q.max_ppl_increase < 0.1 and 0 < q.min_agreement <= 1
    assert {"quantization", "dtype", "kv_cache_dtype", "speculative"} <= set(q.numerics_params)


def test_quality_keys_are_overridable(compose):
    q = compose("quality.mode=measure", "quality.max_ppl_increase=0.05", "quality.numerics_params=[dtype]").quality
    assert (q.mode, q.max_ppl_increase, q.numerics_params) == ("measure", 0.05, ["dtype"])


@pytest.mark.parametrize("override,needle", [
    ("quality.mode=strict", "quality.mode"),
    ("quality.max_ppl_increase=0", "quality.max_ppl_increase"),
    ("quality.min_agreement=1.5", "quality.min_agreement"),
    ("quality.max_tokens=0", "quality.max_tokens"),
    ("quality.numerics_params=[max_num_seqs]", "quality.numerics_params"),
])
def test_bad_quality_values_are_refused_with_the_key_named(compose, override, needle):
    with pytest.raises(ConfigError, match=needle):
        compose(override)
