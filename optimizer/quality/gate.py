"""Pure decisions of the quality gate: which trials are probed, and how badly one violates.

:func:`needs_probe` says whether a trial's engine parameters change the model's numerics against
the baseline's (``quality.numerics_params``: quantization, dtype, KV-cache dtype, speculative
decoding and its settings). :func:`grade` turns a :class:`~optimizer.quality.scoring.QualityVerdict`
into the value of the Optuna constraint ``quality``: 0 when within ``quality.max_ppl_increase``
and ``quality.min_agreement``, otherwise the relative excess over each limit, summed, so that a
worse config is more infeasible. ``quality.mode`` decides whether the caller sets the constraint
(``gate``), only records the verdict (``measure``), or skips the probe (``off``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from optimizer.config import QualityConfig
from optimizer.quality.scoring import QualityVerdict

__all__ = ["UNMEASURED_VIOLATION", "grade", "needs_probe", "numerics_changes"]

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


def grade(verdict: QualityVerdict, cfg: QualityConfig) -> float:
    """The ``quality`` constraint value: 0.0 is within both limits, > 0 is the violation.

    ``max(0, ppl_increase - max_ppl_increase) / max_ppl_increase
    + max(0, min_agreement - agreement) / min_agreement`` (the second term only when
    ``min_agreement > 0``). A verdict with a NaN figure (nothing measured) grades
    :data:`UNMEASURED_VIOLATION`. Never NaN (Optuna refuses NaN constraints)."""
    inc, agree = verdict.ppl_increase, verdict.agreement
    if not (math.isfinite(inc) and math.isfinite(agree)):
        return UNMEASURED_VIOLATION
    v = max(0.0, inc - cfg.max_ppl_increase) / cfg.max_ppl_increase
    if cfg.min_agreement > 0:
        v += max(0.0, cfg.min_agreement - agree) / cfg.min_agreement
    return v
