"""The one-knob-at-a-time staged search (optimizer/study/staged.py)."""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optimizer.study.staged import StagedSampler, levels, next_params

SPACE = {"max_num_seqs": CategoricalDistribution([8, 128]),
         "max_num_batched_tokens": CategoricalDistribution([512, 1024, 2048]),
         "kv_cache_gib": FloatDistribution(1.0, 2.0, step=1.0)}
START = {"max_num_seqs": 128, "max_num_batched_tokens": 2048, "kv_cache_gib": 2.0}


def _trial(n: int, params: dict[str, Any], value: float, feasible: bool = True) -> Any:
    t = create_trial(params=params, distributions=SPACE, value=value, state=TrialState.COMPLETE,
                     system_attrs={"constraints": (-1.0 if feasible else 1.0,)})
    t.number = n
    return t


def test_levels_of_each_kind_of_distribution() -> None:
    assert levels(CategoricalDistribution([True, False])) == [True, False]
    assert levels(FloatDistribution(1.0, 4.0, step=0.5)) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert levels(IntDistribution(4, 256, log=True)) == [4, 8, 16, 32, 64, 128, 256]
    assert len(levels(FloatDistribution(0.8, 0.95))) == 5
    assert levels(IntDistribution(1, 4)) == [1, 2, 3, 4]
    assert levels(IntDistribution(0, 1000, step=10)) == [0, 250, 500, 750, 1000]


def test_it_changes_one_knob_at_a_time_in_order_and_keeps_the_best_feasible() -> None:
    trials = [_trial(0, START, 100.0)]
    assert next_params(SPACE, trials) == {**START, "max_num_seqs": 8}
    trials.append(_trial(1, {**START, "max_num_seqs": 8}, 150.0, feasible=False))  # faster but infeasible
    assert next_params(SPACE, trials) == {**START, "max_num_batched_tokens": 512}  # max_num_seqs stays 128
    trials.append(_trial(2, {**START, "max_num_batched_tokens": 512}, 120.0))
    assert next_params(SPACE, trials) == {**START, "max_num_batched_tokens": 1024}
    trials.append(_trial(3, {**START, "max_num_batched_tokens": 1024}, 110.0))
    # 512 kept: the memory knob is tried next from the new incumbent
    assert next_params(SPACE, trials) == {**START, "max_num_batched_tokens": 512, "kv_cache_gib": 1.0}


def test_it_converges_when_every_neighbour_of_the_incumbent_was_measured() -> None:
    configs = [START, {**START, "max_num_seqs": 8}, {**START, "max_num_batched_tokens": 512},
               {**START, "max_num_batched_tokens": 1024}, {**START, "kv_cache_gib": 1.0}]
    trials = [_trial(i, p, 100.0 - i) for i, p in enumerate(configs)]  # the start stays the best
    assert next_params(SPACE, trials) is None
    assert next_params(SPACE, []) is None


def test_after_a_pass_that_moved_the_incumbent_it_passes_over_the_knobs_again() -> None:
    configs = [START, {**START, "max_num_seqs": 8}, {**START, "max_num_batched_tokens": 512},
               {**START, "max_num_batched_tokens": 1024}, {**START, "max_num_batched_tokens": 512, "kv_cache_gib": 1.0}]
    values = [100.0, 90.0, 120.0, 110.0, 115.0]
    trials = [_trial(i, p, v) for i, (p, v) in enumerate(zip(configs, values))]
    # the incumbent moved to max_num_batched_tokens=512: max_num_seqs=8 is a new neighbour of it
    assert next_params(SPACE, trials) == {**START, "max_num_batched_tokens": 512, "max_num_seqs": 8}


def _study(sampler: optuna.samplers.BaseSampler, value: Callable[[dict[str, Any]], float], n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(START)
    for _ in range(n):
        t = study.ask()
        p = {"max_num_seqs": t.suggest_categorical("max_num_seqs", [8, 128]),
             "max_num_batched_tokens": t.suggest_categorical("max_num_batched_tokens", [512, 1024, 2048]),
             "kv_cache_gib": t.suggest_float("kv_cache_gib", 1.0, 2.0, step=1.0)}
        t.set_constraint("slo", -1.0)
        study.tell(t, value(p))
    return study


def test_in_a_study_it_walks_to_the_best_of_a_separable_space_then_draws_at_random() -> None:
    def value(p: dict[str, Any]) -> float:
        return p["max_num_seqs"] + {512: 30, 1024: 20, 2048: 10}[p["max_num_batched_tokens"]] + p["kv_cache_gib"]

    study = _study(StagedSampler(seed=0), value, 12)
    first = [t.params for t in study.trials[:6]]
    assert first[1] == {**START, "max_num_seqs": 8}
    assert study.best_trial.params == {"max_num_seqs": 128, "max_num_batched_tokens": 512, "kv_cache_gib": 2.0}
    assert len({tuple(sorted(p.items())) for p in first}) == 6  # no config measured twice while planning
