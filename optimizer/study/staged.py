"""A one-knob-at-a-time staged search, as an Optuna sampler (PolyServe's way of tuning a server).

Starting from the study's first finished trial (the baseline: vLLM's defaults), each stage tries
every level of one knob with the others held at the incumbent's values, keeps the best feasible
config of the stage as the new incumbent, and moves to the next knob in a fixed order. After the
last knob it passes over the knobs again from the new incumbent, skipping configs already
measured; once a whole pass proposes nothing new (every neighbour of the incumbent was measured),
the rest of the study is drawn at random.

The levels of a knob are its distribution's: every choice of a categorical (the search space's
integer grids are categoricals, optimizer/space/grid.py), every step of a stepped int or float, and
otherwise a few points (powers of two for a log-scale int, five evenly spaced for the rest).

:func:`next_params` is the pure plan (finished trials in, the next config out);
:class:`StagedSampler` feeds it the study's finished trials.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from optimizer.study.results import is_feasible

__all__ = ["KNOB_ORDER", "StagedSampler", "levels", "next_params"]

# the fixed order of the stages: the knobs that change the schedule first, the memory share last;
# a parameter not named here follows, alphabetically
KNOB_ORDER = ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "enable_prefix_caching",
              "kv_cache_gib", "gpu_memory_utilization")
_POINTS = 5  # levels of a continuous range without a step


def levels(dist: BaseDistribution) -> list[Any]:
    """The values one stage tries for a parameter of distribution ``dist``."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log:
            out = {dist.low, dist.high} | {2 ** k for k in range(64) if dist.low < 2 ** k < dist.high}
            return sorted(out)
        n = (dist.high - dist.low) // dist.step + 1
        if n <= 2 * _POINTS:
            return list(range(dist.low, dist.high + 1, dist.step))
        return sorted({dist.low + round(i * (n - 1) / (_POINTS - 1)) * dist.step for i in range(_POINTS)})
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            if n <= 2 * _POINTS:
                return [round(dist.low + i * dist.step, 10) for i in range(n)]
        n = _POINTS
        if dist.log:
            return [math.exp(math.log(dist.low) + i * (math.log(dist.high) - math.log(dist.low)) / (n - 1))
                    for i in range(n)]
        return [dist.low + i * (dist.high - dist.low) / (n - 1) for i in range(n)]
    raise TypeError(f"staged search: no levels for a distribution of type {type(dist).__name__}")


def _order(names: Sequence[str], order: Sequence[str]) -> list[str]:
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def _key(params: dict[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(params.get(n) for n in names)


def next_params(space: dict[str, BaseDistribution], trials: Sequence[FrozenTrial],
                order: Sequence[str] = KNOB_ORDER) -> Optional[dict[str, Any]]:
    """The next config of the staged search over ``space``, given the study's finished trials
    (COMPLETE ones count; a feasible one is one whose constraints are all <= 0); None when there is
    no start (no trial finished yet) or the search has converged (a pass proposed nothing new)."""
    names = _order(list(space), order)
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and all(n in t.params for n in names)),
                  key=lambda t: t.number)
    if not done:
        return None
    measured: dict[tuple[Any, ...], list[FrozenTrial]] = {}
    for t in done:
        measured.setdefault(_key(t.params, names), []).append(t)
    base = {n: done[0].params[n] for n in names}
    while True:
        changed = False
        for knob in names:
            stage = [{**base, knob: v} for v in levels(space[knob])]
            for cand in stage:
                if _key(cand, names) not in measured:
                    return cand
            ran = [t for c in stage for t in measured[_key(c, names)]]
            good = [t for t in ran if is_feasible(t)]
            if good:
                best = max(good, key=lambda t: (t.value or 0.0, -t.number))
                new = {n: best.params[n] for n in names}
                changed = changed or new != base
                base = new
        if not changed:
            return None


class StagedSampler(optuna.samplers.BaseSampler):
    """One knob at a time in ``order`` (see the module docstring); random once the plan is done,
    and for a parameter outside the space all finished trials share (the first trial's, when no
    baseline was enqueued)."""

    def __init__(self, order: Sequence[str] = KNOB_ORDER, seed: Optional[int] = None) -> None:
        self._order = tuple(order)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {n: d for n, d in self._space.calculate(study).items() if not d.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return next_params(search_space, done, self._order) or {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)
