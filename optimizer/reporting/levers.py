"""What drove the result, in words: the study's main levers and their measured effect. Pure.

A lever is one parameter's split of the measured trials in two groups (a categorical value
against the rest; a numeric parameter at a threshold), each of at least :data:`MIN_GROUP`
trials, chosen where the two groups differ most: in median output tokens/s (every measured
trial, feasible or not), or in the share of feasible trials (what separates feasible from
infeasible).

Why not Optuna's importances alone: with the tens of trials a study has, they also credit
whatever the sampler happened to pair with the winners. In the committed H100 study every trial
at ``gpu_memory_utilization >= 0.94`` also had fp8 weights, while the bf16 trials spread over
0.83-0.92 without any change in throughput; PED-ANOVA over all measured trials ranks
``gpu_memory_utilization`` first (0.86), fANOVA puts it level with ``quantization`` (which of
the two comes first changes with the forest's seed). So each lever's effect is measured again
inside each group of every other parameter's split (its *controlled* effect: the weighted mean
of the within-group differences, the smallest over the other parameters); a setting whose
apparent effect came along with another's shrinks, and levers are ranked by it.

:func:`importance_info` gives Optuna's own view (PED-ANOVA) over the same trials, for the chart.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from optimizer.record import summary_from_attrs
from optimizer.study.results import is_feasible

__all__ = ["MIN_GROUP", "ImportanceInfo", "Lever", "Levers", "importance_info", "main_levers"]

MIN_GROUP = 2  # trials on each side of a split (the report prints n beside every figure)
_MAX_LEVERS = 3
_MIN_THROUGHPUT_EFFECT = 0.05  # controlled effect below 5% of the median throughput: not a lever
_MIN_FEASIBLE_EFFECT = 0.25  # controlled difference in the feasible share below 25 points: not a lever
_MIN_IMPORTANCE_TRIALS = 4
_TOP_TRIALS = 5  # PED-ANOVA: trials in the top set, when there are enough (Optuna's note)


class Lever(NamedTuple):
    """One parameter's split; ``value``/``other_value`` are median tok/s or a feasible share."""

    param: str
    better: str  # the better group, in words: "quantization=fp8", "max_num_seqs >= 67"
    worse: str
    value: float
    other_value: float
    n: int
    other_n: int
    controlled: float  # the effect left inside the groups of every other parameter's split
    feasible: tuple[int, int] = (0, 0)  # (feasible, trials) in the better group (feasibility levers)
    other_feasible: tuple[int, int] = (0, 0)

    def text(self, unit: str = "output tok/s") -> str:
        if self.feasible != (0, 0):
            return (f"{self.better}: {self.feasible[0]} of {self.feasible[1]} trials feasible, against "
                    f"{self.other_feasible[0]} of {self.other_feasible[1]} with {self.worse}")
        held = f"; {self.controlled:+,.0f} {unit} when compared within the groups of the other settings" \
            if abs(self.controlled - (self.value - self.other_value)) > 0.005 * abs(self.value) else ""
        return (f"{self.better}: median {self.value:,.0f} {unit} against {self.other_value:,.0f} with "
                f"{self.worse} ({self.n} vs {self.other_n} trials{held})")


class Levers(NamedTuple):
    throughput: list[Lever]  # over every measured trial, strongest first
    feasibility: list[Lever]  # what separates feasible from infeasible trials, strongest first
    n_measured: int
    reason: str  # why a list is empty ("" when neither is, or when nothing stood out)


class _Split(NamedTuple):
    param: str
    mask: tuple[bool, ...]  # True: the better group
    better: str
    worse: str


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "unset"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _candidates(param: str, values: Sequence[Any]) -> list[_Split]:
    """Every split of ``values`` with at least MIN_GROUP on each side (better side not yet known)."""
    n = len(values)
    out = []
    if _numeric(values):
        xs = sorted(set(values))
        for lo, hi in zip(xs, xs[1:]):
            mask = tuple(v <= lo for v in values)
            out.append(_Split(param, mask, f"{param} <= {_fmt(lo)}", f"{param} >= {_fmt(hi)}"))
    else:
        keys = [json.dumps(v, default=str) for v in values]
        distinct = list(dict.fromkeys(keys))
        for k in distinct[:1] if len(distinct) == 2 else distinct:
            mask = tuple(x == k for x in keys)
            rest = [values[i] for i, x in enumerate(keys) if x != k]
            other = f"{param}={_fmt(rest[0])}" if len(distinct) == 2 else f"{param} not {_fmt(values[keys.index(k)])}"
            out.append(_Split(param, mask, f"{param}={_fmt(values[keys.index(k)])}", other))
    return [s for s in out if MIN_GROUP <= sum(s.mask) <= n - MIN_GROUP]


def _orient(s: _Split, ys: Sequence[float], stat: Callable[[list[float]], float]) -> tuple[_Split, float]:
    a = stat([y for y, m in zip(ys, s.mask) if m])
    b = stat([y for y, m in zip(ys, s.mask) if not m])
    if a >= b:
        return s, a - b
    return _Split(s.param, tuple(not m for m in s.mask), s.worse, s.better), b - a


def _controlled(s: _Split, others: Sequence[_Split], ys: Sequence[float],
                stat: Callable[[list[float]], float]) -> float:
    """The smallest, over the other splits, of the effect measured inside each of their groups."""
    effects = []
    for q in others:
        num = den = 0.0
        for side in (True, False):
            inside = [i for i, m in enumerate(q.mask) if m == side]
            a = [ys[i] for i in inside if s.mask[i]]
            b = [ys[i] for i in inside if not s.mask[i]]
            if a and b:
                num += len(inside) * (stat(a) - stat(b))
                den += len(inside)
        if den:  # no group holds both sides: the two splits cannot be told apart from these trials
            effects.append(num / den)
    return min(effects, default=stat([y for y, m in zip(ys, s.mask) if m])
               - stat([y for y, m in zip(ys, s.mask) if not m]))


def _rank(params: Sequence[dict[str, Any]], ys: Sequence[float], stat: Callable[[list[float]], float],
          floor: float) -> list[tuple[_Split, float]]:
    best: dict[str, tuple[_Split, float]] = {}
    for p in sorted({k for ps in params for k in ps}):
        if any(p not in ps for ps in params):
            continue  # a conditional parameter: not every trial has it
        cands = [_orient(s, ys, stat) for s in _candidates(p, [ps[p] for ps in params])]
        if cands:
            best[p] = max(cands, key=lambda c: c[1])
    splits = [s for s, _ in best.values()]
    ranked = [(s, _controlled(s, [q for q in splits if q.param != s.param], ys, stat)) for s in splits]
    ranked = [(s, c) for s, c in ranked if c >= floor]
    return sorted(ranked, key=lambda sc: (-sc[1], sc[0].param))[:_MAX_LEVERS]


def main_levers(params: Sequence[dict[str, Any]], throughput: Sequence[float], feasible: Sequence[bool],
                min_trials: int = 4) -> Levers:
    """The main levers of a study's measured trials (``params[i]``, ``throughput[i]``,
    ``feasible[i]`` describe trial i; trials without a finite throughput are left out)."""
    keep = [i for i, y in enumerate(throughput) if math.isfinite(y)]
    ps = [params[i] for i in keep]
    ys = [float(throughput[i]) for i in keep]
    fs = [bool(feasible[i]) for i in keep]
    if len(keep) < min_trials:
        return Levers([], [], len(keep), f"{len(keep)} measured trial(s): at least {min_trials} are needed")
    thr = [_lever(s, c, ys, None) for s, c in _rank(ps, ys, statistics.median,
                                                     _MIN_THROUGHPUT_EFFECT * statistics.median(ys))]
    feas: list[Lever] = []
    if 0 < sum(fs) < len(fs):
        share = [1.0 if f else 0.0 for f in fs]
        feas = [_lever(s, c, share, fs) for s, c in _rank(ps, share, statistics.fmean, _MIN_FEASIBLE_EFFECT)]
    reason = "" if thr or feas else "no parameter setting stood out from the others in these trials"
    return Levers(thr, feas, len(keep), reason)


def _lever(s: _Split, controlled: float, ys: Sequence[float], fs: Optional[Sequence[bool]]) -> Lever:
    a = [y for y, m in zip(ys, s.mask) if m]
    b = [y for y, m in zip(ys, s.mask) if not m]
    if fs is None:
        return Lever(s.param, s.better, s.worse, statistics.median(a), statistics.median(b), len(a), len(b),
                     controlled)
    fa = sum(f for f, m in zip(fs, s.mask) if m)
    fb = sum(f for f, m in zip(fs, s.mask) if not m)
    return Lever(s.param, s.better, s.worse, statistics.fmean(a), statistics.fmean(b), len(a), len(b), controlled,
                 (fa, len(a)), (fb, len(b)))


class ImportanceInfo(NamedTuple):
    target: str
    values: dict[str, float]  # param -> importance, largest first; empty when not computable
    n_trials: int
    reason: str  # why there are no values ("" when there are)


def importance_info(trials: Sequence[FrozenTrial], slo_metric: str) -> list[ImportanceInfo]:
    """Optuna's PED-ANOVA importances over every measured trial, feasible or not: for throughput,
    and for what separates the feasible trials from the infeasible ones.

    PED-ANOVA (Optuna's default evaluator) asks which parameter values the top trials share that
    the rest do not. It takes categorical and conditional parameters and needs no scikit-learn
    (fANOVA does). Throughput: the top set is the best ``max(10%, 5 trials)`` (Optuna's note asks
    for at least 5), at most half. Feasibility: the top set is exactly the feasible trials (target:
    the total constraint violation, 0 for every feasible trial; quantile: their share). Over
    feasible trials only (as before), a lever that makes configs feasible at all (fp8 weights in
    the H100 study) barely varies and reads as ~0. ``slo_metric`` is kept for the caller's labels.
    """
    del slo_metric
    # a trial holding a value its distribution does not (the baseline's vLLM defaults in a narrowed
    # range: Optuna runs an enqueued value it warns about) cannot be copied into the temporary study
    measured = [t for t in trials if t.state == TrialState.COMPLETE and t.constraints
                and math.isfinite(summary_from_attrs(t.user_attrs).output_tok_s) and all(
                    d._contains(d.to_internal_repr(t.params[k])) for k, d in t.distributions.items() if k in t.params)]
    n, n_feasible = len(measured), sum(1 for t in measured if is_feasible(t))
    quantile = min(0.5, max(0.1, _TOP_TRIALS / n)) if n else 0.5
    jobs: list[tuple[str, Any, float, str]] = [
        ("output tokens/s, every measured trial", lambda t: -summary_from_attrs(t.user_attrs).output_tok_s,
         quantile, ""),
        ("feasible vs infeasible", lambda t: sum(max(0.0, v) for v in t.constraints.values()),
         n_feasible / n if n else 0.0,
         "" if 0 < n_feasible < n else f"{n_feasible} of {n} measured trials feasible: nothing to separate")]
    out = []
    for label, target, q, why in jobs:
        varied = {p for p in {k for t in measured for k in t.params}
                  if len({json.dumps(t.params.get(p), default=str) for t in measured}) > 1}
        if n < _MIN_IMPORTANCE_TRIALS or not varied or why:
            why = why or (f"{n} measured trial(s): at least {_MIN_IMPORTANCE_TRIALS} are needed"
                          if n < _MIN_IMPORTANCE_TRIALS else "no parameter varied among the measured trials")
            out.append(ImportanceInfo(label, {}, n, why))
            continue
        tmp = optuna.create_study(direction="maximize")
        tmp.add_trials(measured)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = optuna.importance.get_param_importances(
                    tmp, evaluator=PedAnovaImportanceEvaluator(target_quantile=q), target=target, normalize=True)
            except (ValueError, RuntimeError) as exc:  # e.g. a search space that changed within the study
                out.append(ImportanceInfo(label, {}, n, f"{type(exc).__name__}: {exc}"))
                continue
        if any("will be equal" in str(w.message) for w in caught):
            out.append(ImportanceInfo(label, {}, n, "too few trials to tell parameters apart"))
        else:
            out.append(ImportanceInfo(label, dict(values), n, ""))
    return out
