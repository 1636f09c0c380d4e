"""The capacity search of a ``load.mode=capacity`` trial as a record part.

:class:`Capacity` wraps the whole :class:`~optimizer.capacity.result.CapacityResult`: its JSON
(every probe: the latency-throughput curve) under one key, ``capacity_json``, so the curve is
reproducible from the study database alone, plus flat ``cap_*`` columns for tables and queries
(the capacity, its control, what limited it, the P99 there, how many probes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.capacity.result import CapacityResult
from optimizer.record._attrs import Attrs, attr_value

__all__ = ["Capacity"]

JSON_KEY = "capacity_json"


@dataclass(frozen=True)
class Capacity:
    """The trial's capacity search: the answer and every probe."""

    result: CapacityResult

    def to_attrs(self) -> dict[str, Any]:
        r = self.result
        return {JSON_KEY: json.dumps(r.to_json(), sort_keys=True),
                "cap_value": attr_value(r.value), "cap_control": r.control,
                "cap_limited_by": r.limited_by.value, "cap_feasible": r.feasible,
                "cap_p99_ms": attr_value(r.p99_ms, 2), "cap_output_tok_s": attr_value(r.output_tok_s, 3),
                "cap_req_s": attr_value(r.req_s, 4), "cap_n_probes": len(r.probes)}

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Capacity]:
        """The part, or None when the trial ran no search (or its JSON is unreadable)."""
        raw = a.get(JSON_KEY)
        if not isinstance(raw, str):
            return None
        try:
            return cls(CapacityResult.from_json(json.loads(raw)))
        except (ValueError, TypeError, KeyError):
            return None
