"""Pure decisions of the quality gate: which trials are probed, and how badly one violates.

:func:`needs_probe` says whether a trial's engine parameters change the model's numerics against
the baseline's (``quality.numerics_params``: quantization, dtype, KV-cache dtype, speculative
decoding and its settings). :func:`evaluate` grades a :class:`~optimizer.quality.scoring.QualityVerdict`
against :class:`Limits` (the configured limits in field units, raised to ``floor_multiple`` times
the study's :class:`Floor`, the baseline's distance from itself); :func:`grade` is its value for the
Optuna constraint ``quality``: 0 within every limit, otherwise the relative excess over each limit,
summed, so that a worse config is more infeasible. ``quality.mode`` decides whether the caller sets the constraint
(``gate``), only records the verdict (``measure``), or skips the probe (``off``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from optimizer.quality.distribution import DistanceSummary, summarize
from optimizer.quality.scoring import QualityScores, QualityVerdict
from optimizer.settings.config import QualityConfig

__all__ = ["UNMEASURED_VIOLATION", "Evaluation", "Floor", "Limits", "evaluate", "grade", "needs_probe", "noise_floor",
           "numerics_changes"]

# the constraint value of a verdict with NaN figures (nothing measured): infeasible, one full unit
UNMEASURED_VIOLATION = 1.0

# values that mean "vLLM's default" for a parameter (None: not set)
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "quantization": (None, "none"), "dtype": (None, "auto"), "kv_cache_dtype": (None, "auto"),
    "speculative": (None, "off"),
}
_SPEC_ONLY = ("num_speculative_tokens", "ngram_lookup_max", "ngram_lookup_min", "draft_model")


def _norm(key: str, value: Any) -> Any:
    return None if value in _DEFAULTS.get(key, (None,)) else value


def numerics_changes(params: Mapping[str, Any], baseline: Mapping[str, Any],
                     numerics_params: tuple[str, ...] | list[str]) -> dict[str, tuple[Any, Any]]:
    """The numerics parameters whose value differs, ``{key: (baseline's, trial's)}``.

    A missing key, None and the parameter's default spelling (``auto``, ``none``, ``off``) are the
    same value. Speculative settings count only while speculative decoding is on in either."""
    spec_on = any(_norm("speculative", d.get("speculative")) is not None for d in (params, baseline))
    out: dict[str, tuple[Any, Any]] = {}
    for key in numerics_params:
        if key in _SPEC_ONLY and not spec_on:
            continue
        a, b = _norm(key, baseline.get(key)), _norm(key, params.get(key))
        if a != b:
            out[key] = (a, b)
    return out


def needs_probe(params: Mapping[str, Any], baseline: Mapping[str, Any],
                numerics_params: tuple[str, ...] | list[str] = tuple(QualityConfig().numerics_params)) -> bool:
    """Whether a trial with engine ``params`` computes other numbers than the ``baseline`` config
    (both as ``EngineParams.as_dict()``-style mappings), so its quality must be measured."""
    return bool(numerics_changes(params, baseline, numerics_params))


@dataclass(frozen=True)
class Floor:
    """The baseline's distance from itself (its noise floor): the worst of its repeat views, e.g. the
    reference server probed again with every passage in flight at once (another batch composition),
    or a restarted server. Zeros with ``views=0`` when nothing was measured."""

    mean_kld: float = 0.0
    p99_kld: float = 0.0
    same_top1: float = 1.0
    views: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"mean_kld": self.mean_kld, "p99_kld": self.p99_kld, "same_top1": self.same_top1, "views": self.views}

    @classmethod
    def of(cls, distances: Sequence[DistanceSummary]) -> Floor:
        ok = [d for d in distances if math.isfinite(d.mean_kld)]
        if not ok:
            return cls()
        return cls(max(d.mean_kld for d in ok), max(d.p99_kld for d in ok), min(d.same_top1 for d in ok), len(ok))


def noise_floor(reference: QualityScores, views: Sequence[QualityScores]) -> Floor:
    """The :class:`Floor` of ``reference`` from other probes of the same config.

    Raises:
        ValueError: a view was measured on another set or tokenizer.
    """
    return Floor.of([summarize(v.dists, reference.dists) for v in views if v.dists and reference.dists])


@dataclass(frozen=True)
class Limits:
    """The gate's limits for one study: each the larger of the configured limit and
    ``floor_multiple`` times the floor (for same-top-1: the smaller share)."""

    mean_kld: float
    p99_kld: float
    same_top1: float

    @classmethod
    def of(cls, cfg: QualityConfig, floor: Floor) -> Limits:
        m = cfg.floor_multiple
        return cls(max(cfg.max_mean_kld, m * floor.mean_kld), max(cfg.max_p99_kld, m * floor.p99_kld),
                   min(cfg.min_same_top1, 1.0 - m * (1.0 - floor.same_top1)))


@dataclass(frozen=True)
class Evaluation:
    """A verdict graded: its figures, the limits, the reasons for a rejection and the violation."""

    verdict: QualityVerdict
    limits: Limits
    floor: Floor
    reasons: tuple[str, ...]
    violation: float

    @property
    def passed(self) -> bool:
        return self.violation <= 0

    def as_dict(self) -> dict[str, Any]:
        v, d, t = self.verdict, self.verdict.distance, self.verdict.tasks
        out: dict[str, Any] = {}
        if d is not None:
            out |= d.as_dict()
            out["mean_kld_over_floor"] = d.mean_kld / self.floor.mean_kld if self.floor.mean_kld > 0 else math.nan
        if t is not None:
            out |= {"task_accuracy": t.accuracy, "reference_task_accuracy": t.reference_accuracy,
                    "tasks_lost": t.lost, "tasks_won": t.won, "mcnemar_p": t.p_value, "task_wilson_low": t.wilson_low}
        out |= {"greedy_diverged": v.diverged, "greedy_not_near_tie": v.not_near_tie,
                "greedy_agreement": v.agreement, "limits": self.limits.__dict__,
                "violation": self.violation, "verdict": "pass" if self.passed else "reject: " + "; ".join(self.reasons)}
        return out


def evaluate(verdict: QualityVerdict, cfg: QualityConfig, floor: Floor = Floor(), *,
             speculative: bool = False) -> Evaluation:
    """Grade ``verdict`` (a trial against the reference) with ``cfg``'s limits raised to the floor.

    Rejected when: the mean or P99 KLD exceeds its limit; the same-top-1 share is below its limit;
    the trial lost more tasks than it won with McNemar's p below ``cfg.task_alpha``; or (speculative
    decoding only) a greedy answer differs at a token that is not a near-tie (not in the other side's
    top-N). The violation is the sum of the relative excesses (0: passed); a verdict without
    distribution figures (nothing measured) is :data:`UNMEASURED_VIOLATION`. Never NaN."""
    lim = Limits.of(cfg, floor)
    d, t = verdict.distance, verdict.tasks
    if d is None or not (math.isfinite(d.mean_kld) and math.isfinite(d.p99_kld) and math.isfinite(d.same_top1)):
        return Evaluation(verdict, lim, floor, ("no distribution measured",), UNMEASURED_VIOLATION)
    reasons: list[str] = []
    v = 0.0
    if d.mean_kld > lim.mean_kld:
        v += (d.mean_kld - lim.mean_kld) / lim.mean_kld
        reasons.append(f"mean KLD {d.mean_kld:.4g} > {lim.mean_kld:.4g}")
    if d.p99_kld > lim.p99_kld:
        v += (d.p99_kld - lim.p99_kld) / lim.p99_kld
        reasons.append(f"P99 KLD {d.p99_kld:.4g} > {lim.p99_kld:.4g}")
    if d.same_top1 < lim.same_top1:
        v += (lim.same_top1 - d.same_top1) / lim.same_top1
        reasons.append(f"same top-1 {d.same_top1:.2%} < {lim.same_top1:.2%}")
    if t is not None and t.worse and t.p_value < cfg.task_alpha:
        v += (cfg.task_alpha - t.p_value) / cfg.task_alpha
        reasons.append(f"tasks {t.accuracy:.1%} vs {t.reference_accuracy:.1%} (lost {t.lost}, won {t.won}, "
                       f"McNemar p {t.p_value:.3g} < {cfg.task_alpha})")
    if speculative and verdict.not_near_tie:
        v += verdict.not_near_tie / max(len(verdict.items), 1)
        reasons.append(f"speculative decoding changed {verdict.not_near_tie} greedy answer(s) at a token outside "
                       f"the other's top-{cfg.spec_top_n}")
    return Evaluation(verdict, lim, floor, tuple(reasons), v)


def grade(verdict: QualityVerdict, cfg: QualityConfig, floor: Floor = Floor(), *, speculative: bool = False) -> float:
    """The ``quality`` constraint value of :func:`evaluate`: 0.0 passes, > 0 is the violation."""
    return evaluate(verdict, cfg, floor, speculative=speculative).violation
