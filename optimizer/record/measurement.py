"""What a load test measured, as a record part: the client's summary, the server's telemetry,
the samples the report draws. Owns its user attrs (the summary's keys included)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from optimizer.measures.metrics import LATENCY_METRICS, Dist, LoadSummary
from optimizer.record._attrs import Attrs, attr_value, integer, json_value, num, text
from optimizer.server.telemetry import ServerStats

__all__ = ["Measurement", "summary_from_attrs", "summary_to_attrs"]

_DIST_METRICS = LATENCY_METRICS


def summary_to_attrs(s: LoadSummary) -> dict[str, Any]:
    """A load summary as flat attrs: totals, ``<metric>_<stat>`` of each distribution,
    ``errors_<kind>`` counts."""
    out: dict[str, Any] = {
        "n_requests": s.n_requests, "n_ok": s.n_ok, "error_rate": s.error_rate, "duration_s": s.duration_s,
        "output_tok_s": s.output_tok_s, "total_tok_s": s.total_tok_s, "req_s": s.req_s,
        "output_tokens": s.output_tokens, "prompt_tokens": s.prompt_tokens, "tpot_mean_ms": s.tpot_mean_ms}
    for metric in _DIST_METRICS:
        for k, v in dataclasses.asdict(s.dist(metric)).items():
            out[f"{metric}_{k}"] = v
    for kind, count in s.errors.items():
        out[f"errors_{kind}"] = count
    return {k: attr_value(v, 4) for k, v in out.items()}


def summary_from_attrs(a: Attrs) -> LoadSummary:
    dists = {m: Dist(integer(a, f"{m}_n"), *(num(a, f"{m}_{f.name}") for f in dataclasses.fields(Dist)[1:]))
             for m in _DIST_METRICS}
    return LoadSummary(
        n_requests=integer(a, "n_requests"), n_ok=integer(a, "n_ok"), error_rate=num(a, "error_rate"),
        errors={k[len("errors_"):]: integer(a, k) for k in a if k.startswith("errors_")},
        duration_s=num(a, "duration_s"), output_tok_s=num(a, "output_tok_s"),
        total_tok_s=num(a, "total_tok_s"), req_s=num(a, "req_s"), output_tokens=integer(a, "output_tokens"),
        prompt_tokens=integer(a, "prompt_tokens"), tpot_mean_ms=num(a, "tpot_mean_ms"), **dists)


_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(ServerStats))


@dataclass(frozen=True)
class Measurement:
    """What the load test measured: the client's summary, the server's telemetry, the samples
    the report draws (latency CDFs in ms, the gauges over time)."""

    summary: LoadSummary
    telemetry: ServerStats
    client_cpu_s: float = math.nan
    client_cpu_share: float = math.nan  # of the load test's wall time
    warmup_errors: int = 0
    first_error: str = ""
    latency_samples: dict[str, list[float]] = field(default_factory=dict)  # metric -> ms (a sample of them)
    kv_timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (s, gauge -> value)
    # the client's run-queue wait for a CPU (all processes) and its busiest process's share of the run
    client_wait_s: float = math.nan
    client_wait_share: float = math.nan

    def to_attrs(self) -> dict[str, Any]:
        out = summary_to_attrs(self.summary)
        out.update({f"srv_{n}": attr_value(getattr(self.telemetry, n), 4) for n in _STATS_FIELDS})
        out.update({"client_cpu_s": attr_value(self.client_cpu_s, 2),
                    "client_cpu_share": attr_value(self.client_cpu_share, 3),
                    "warmup_errors": self.warmup_errors, "kv_timeline": json.dumps(self.kv_timeline)})
        if math.isfinite(self.client_wait_s):  # absent when not measured (and in studies older than it)
            out.update({"client_wait_s": attr_value(self.client_wait_s, 3),
                        "client_wait_share": attr_value(self.client_wait_share, 3)})
        if self.first_error:
            out["first_error"] = self.first_error[:300]
        if self.latency_samples:
            out["latency_samples"] = json.dumps(self.latency_samples)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Measurement]:
        if "n_requests" not in a:
            return None
        samples = {m: [float(x) for x in v if isinstance(x, (int, float))]
                   for m, v in json_value(a, "latency_samples", {}).items() if isinstance(v, list)}
        timeline = [(float(r[0]), {str(k): float(v) for k, v in r[1].items() if isinstance(v, (int, float))})
                    for r in json_value(a, "kv_timeline", [])
                    if isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float))
                    and isinstance(r[1], dict)]
        return cls(summary_from_attrs(a), ServerStats(**{n: num(a, f"srv_{n}") for n in _STATS_FIELDS}),
                   num(a, "client_cpu_s"), num(a, "client_cpu_share"), integer(a, "warmup_errors"),
                   text(a, "first_error"), samples, timeline, num(a, "client_wait_s"), num(a, "client_wait_share"))
