"""Compile-cache hits end to end: a real vLLM (CPU build) study whose two trials share one compile
shape, in a compile cache of their own (``server.compile_cache_dir``): the first compiles, the
second finds its shape in the cache, and the report says so."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from optimizer.record import TrialRecord
from optimizer.reporting.data import START_LABELS, build_report_data
from tests.support.study_runner import StudyDir

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# a space of one config, no baseline (vLLM's defaults run the tiny model at its native 4096 tokens, a
# shape of their own): both trials start the same shape
SAME_SHAPE = ["study.enqueue_baseline=false", "slo.p99_ms=100000", "search.max_num_seqs.low=128", "search.max_num_seqs.high=128", "search.max_num_batched_tokens.low=2048",
              "search.max_num_batched_tokens.high=2048", "search.enable_chunked_prefill=[true]",
              "search.enable_prefix_caching=[true]", "search.kv_cache_gib.low=2", "search.kv_cache_gib.high=2"]


def test_the_second_start_of_a_shape_finds_it_in_the_studys_compile_cache(tmp_path):
    sd = StudyDir(tmp_path)
    cache = tmp_path / "compile-cache"
    r = sd.run("study.n_trials=2", "quality.mode=off", f"server.compile_cache_dir={cache}", *SAME_SHAPE)
    assert r.returncode == 0, r.stderr[-3000:]
    study = sd.study()
    trials = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    assert len(trials) == 2
    first, second = (TrialRecord.from_trial(t).start_log for t in trials)
    assert first is not None and second is not None
    assert first.compile_cache_hit is False and second.compile_cache_hit is True, (first, second)
    assert first.compile_key and second.compile_key == first.compile_key
    assert (cache / "torch_compile_cache" / "torch_aot_compile" / first.compile_key).is_dir()  # the setting moved it
    d = build_report_data(study.study_name, study.trials, study.user_attrs)
    c = d.compile_cache
    assert (c.hits, c.misses, c.keys) == (1, 1, 1) and c.rate == 0.5
    for row in d.phases:
        assert row.seconds["start: torch.compile"] > 0 and row.seconds["server start"] == 0
        assert sum(row.seconds[k] for k in START_LABELS) == pytest.approx(
            TrialRecord.from_trial(trials[row.number]).timings.start_s, abs=0.05)
