"""The capacity search of a ``load.mode=capacity`` trial as a record part.

:class:`Capacity` wraps the whole :class:`~optimizer.capacity.result.CapacityResult`: its JSON
(every probe: the latency-throughput curve) under one key, ``capacity_json``, so the curve is
reproducible from the study database alone, plus flat ``cap_*`` columns for tables and queries
(the capacity, its control, what limited it, the P99 there, how many probes).

A search stopped early against the incumbent (``load.capacity.early_stop``) says so:
``cap_stopped_early`` is true, ``cap_below_incumbent`` is the incumbent's capacity it could not
reach (a failure at or below it), ``cap_incumbent_trial`` the incumbent's trial number, and
``cap_value`` is the highest load that passed before the stop: a lower bound.
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
        hi = min((p.load for p in r.probes if not p.passed and not p.aborted), default=r.early_stop_load)
        who = f"#{self.incumbent_trial} " if self.incumbent_trial is not None else ""
        return f"early stop: < {hi:g} (incumbent {who}carries {r.early_stop_load:g})"

    def to_attrs(self) -> dict[str, Any]:
        r = self.result
        out = {JSON_KEY: json.dumps(r.to_json(), sort_keys=True),
               "cap_value": attr_value(r.value), "cap_control": r.control,
               "cap_limited_by": r.limited_by.value, "cap_feasible": r.feasible,
               "cap_p99_ms": attr_value(r.p99_ms, 2), "cap_output_tok_s": attr_value(r.output_tok_s, 3),
               "cap_req_s": attr_value(r.req_s, 4), "cap_n_probes": len(r.probes),
               "cap_stopped_early": r.stopped_early}
        if r.stopped_early:
            out["cap_below_incumbent"] = attr_value(r.early_stop_load)
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
