"""The capacity search of a ``load.mode=capacity`` trial as a record part.

:class:`Capacity` wraps the whole :class:`~optimizer.capacity.result.CapacityResult`: its JSON
(every probe: the latency-throughput curve) under one key, ``capacity_json``, so the curve is
reproducible from the study database alone, plus flat ``cap_*`` columns for tables and queries
(the capacity, its control, what limited it, the P99 there, how many probes).

A search stopped early against the incumbent (``load.capacity.early_stop``) says so:
``cap_stopped_early`` is true, ``cap_below_incumbent`` is the incumbent's capacity it could not
reach (a failure at or below it), ``cap_incumbent_trial`` the incumbent's trial number, and
``cap_value`` is the highest load that passed before the stop: a lower bound.

The capacity fitted over every probe with its interval (:mod:`optimizer.capacity.curve`) is in the
JSON (``estimate``, ``low``, ``high``, ``confidence``, ``flags``) and in ``cap_estimate``,
``cap_low``, ``cap_high`` (null high: open above) and ``cap_flags``. A record written before the fit
existed decodes as it was written (NaN fit); ``optimizer.capacity.curve.fitted(result)`` computes the fit from its probes
(their recorded P99 intervals stand in for the resampled requests), which is what the report and
the early stop's incumbent bound do, so old studies read like new ones.

A search stopped early also keeps ``cap_incumbent_low_value`` (the bar: the incumbent's lower
confidence bound on its value, in the unit the study ranks), ``cap_upper_value`` (this trial's
upper bound on its own value when it stopped, below the bar) and ``cap_value_is_bound: true``:
the trial's value is a lower bound, the true one lies between it and ``cap_upper_value``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.capacity.result import CapacityResult
from optimizer.record._attrs import Attrs, attr_value, integer

__all__ = ["Capacity"]

JSON_KEY = "capacity_json"


@dataclass(frozen=True)
class Capacity:
    """The trial's capacity search: the answer and every probe."""

    result: CapacityResult
    incumbent_trial: Optional[int] = None  # stopped early: the trial whose capacity it could not reach

    @property
    def stopped_early(self) -> bool:
        return self.result.stopped_early

    def limit_label(self) -> str:
        """What limited the capacity, for tables: ``slo``, ``cap``, ... or, stopped early,
        ``early stop: < 4 (incumbent #0 carries 4)``."""
        r = self.result
        if not r.stopped_early:
            return r.limited_by.value
        who = f"#{self.incumbent_trial} " if self.incumbent_trial is not None else ""
        if r.upper_value == r.upper_value:
            return (f"early stop: value <= {r.upper_value:.4g} < incumbent {who}lower bound "
                    f"{r.early_stop_bound:.4g}")
        hi = min((p.load for p in r.probes if not p.passed and not p.aborted), default=r.early_stop_load)
        return f"early stop: < {hi:g} (incumbent {who}carries {r.early_stop_load:g})"

    def to_attrs(self) -> dict[str, Any]:
        r = self.result
        out = {JSON_KEY: json.dumps(r.to_json(), sort_keys=True),
               "cap_value": attr_value(r.value), "cap_control": r.control,
               "cap_limited_by": r.limited_by.value, "cap_feasible": r.feasible,
               "cap_p99_ms": attr_value(r.p99_ms, 2), "cap_output_tok_s": attr_value(r.output_tok_s, 3),
               "cap_req_s": attr_value(r.req_s, 4), "cap_n_probes": len(r.probes),
               "cap_stopped_early": r.stopped_early,
               "cap_estimate": attr_value(r.estimate), "cap_low": attr_value(r.low), "cap_high": attr_value(r.high),
               "cap_flags": "; ".join(r.flags)}
        if r.stopped_early:
            out["cap_below_incumbent"] = attr_value(r.early_stop_load)
            out["cap_value_is_bound"] = True
            out["cap_incumbent_low_value"] = attr_value(r.early_stop_bound)
            out["cap_upper_value"] = attr_value(r.upper_value)
            if self.incumbent_trial is not None:
                out["cap_incumbent_trial"] = self.incumbent_trial
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Capacity]:
        """The part, or None when the trial ran no search (or its JSON is unreadable)."""
        raw = a.get(JSON_KEY)
        if not isinstance(raw, str):
            return None
        try:
            n = integer(a, "cap_incumbent_trial", -1)
            return cls(CapacityResult.from_json(json.loads(raw)), None if n < 0 else n)
        except (ValueError, TypeError, KeyError):
            return None
