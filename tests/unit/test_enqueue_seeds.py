"""``study.enqueue``: configs measured first, after the baseline (vLLM's defaults with the changes given)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.core.errors import ConfigError
from optimizer.record import TrialRecord
from optimizer.space.search_space import baseline_params, build_space, seed_params
from tests.unit.test_loop_policy import Script, _run, _trials, measured, study_cfg  # noqa: F401 (a fixture)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def seeded_cfg(study_cfg):
    def make(*overrides: str):
        return study_cfg("search.enable_prefix_caching=[true,false]", "search.enable_chunked_prefill=[true,false]",
                         *overrides)
    return make


def test_a_seed_is_the_defaults_with_the_changes_given(seeded_cfg):
    cfg = seeded_cfg("study.enqueue=[{enable_prefix_caching:false},{enable_chunked_prefill:false,max_num_seqs:16}]")
    base = baseline_params(cfg)
    seeds = seed_params(cfg, build_space(cfg))
    assert seeds == [{**base, "enable_prefix_caching": False}, {**base, "enable_chunked_prefill": False, "max_num_seqs": 16}]


@pytest.mark.parametrize("entry, message", [
    ("{max_num_seqz:16}", "not a search parameter; one of"),
    ("{enable_prefix_caching:maybe}", r"not one of search.enable_prefix_caching=\[True, False\]"),
    ("{quantization:fp8}", r"the space fixes quantization to \['none'\]"),
    ("{max_num_seqs:100}", r"not on search.max_num_seqs.s grid \[4, 8, 16"),
    ("{}", "is empty"),
], ids=["unknown-key", "not-a-choice", "fixed", "off-grid", "empty"])
def test_a_seed_the_space_cannot_run_is_refused_before_the_study_is_touched(seeded_cfg, entry, message):
    cfg = seeded_cfg(f"study.enqueue=[{entry}]", "study.n_trials=2")
    with pytest.raises(ConfigError, match=message):
        _run(cfg, Script())
    assert not Path(cfg.study.storage.removeprefix("sqlite:///")).exists()


def test_seeds_run_right_after_the_baseline_once_and_a_new_one_joins_a_resumed_study(seeded_cfg):
    cfg = seeded_cfg("study.enqueue=[{enable_prefix_caching:false},{enable_chunked_prefill:false}]", "study.n_trials=4")
    _run(cfg, Script(measured(), measured(), measured(), measured()))
    trials = _trials(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    recs = [TrialRecord.from_trial(t) for t in trials]
    assert recs[0].lineage.baseline and recs[1].lineage.seed and recs[2].lineage.seed and not recs[3].lineage.seed
    assert trials[1].params["enable_prefix_caching"] is False and trials[1].params["enable_chunked_prefill"] is True
    assert trials[2].params["enable_chunked_prefill"] is False and trials[2].params["enable_prefix_caching"] is True
    # resumed with one more seed: only the new one is enqueued (the measured ones are not run again)
    more = seeded_cfg("study.enqueue=[{enable_prefix_caching:false},{enable_chunked_prefill:false},{max_num_seqs:16}]",
                      "study.n_trials=5")
    _run(more, Script(measured()))
    trials = _trials(more)
    assert len(trials) == 5 and trials[4].params["max_num_seqs"] == 16
    assert TrialRecord.from_trial(trials[4]).lineage.seed
