"""What ``python -m optimizer.loadtest`` shows and writes: the metrics table and the JSON
document. Pure (the caller prints and writes)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from optimizer.measures.metrics import LATENCY_METRICS, Dist, LoadSummary

__all__ = ["json_safe", "request_record", "summary_table", "to_json"]


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if not x == x else f"{x:,.{digits}f}"


def summary_table(s: LoadSummary, confidence: float) -> str:
    """The human-readable table: latency distributions, then throughput and errors."""
    rows = [f"{'ms':<6}{'n':>8}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}   "
            f"{'p99 ' + format(confidence, '.0%') + ' CI':<22}{'max':>10}"]
    for name in LATENCY_METRICS:
        d: Dist = s.dist(name)
        ci = f"[{_fmt(d.p99_low)}, {_fmt(d.p99_high)}]"
        rows.append(f"{name.upper():<6}{d.n:>8}{_fmt(d.mean):>10}{_fmt(d.p50):>10}{_fmt(d.p90):>10}"
                    f"{_fmt(d.p99):>10}   {ci:<22}{_fmt(d.max):>10}")
    rows.append("")
    rows.append(f"requests {s.n_ok}/{s.n_requests} ok in {_fmt(s.duration_s, 2)} s: {_fmt(s.req_s, 2)} req/s, "
                f"{_fmt(s.output_tok_s)} output tok/s, {_fmt(s.total_tok_s)} total tok/s "
                f"({s.prompt_tokens} prompt + {s.output_tokens} output tokens), TPOT mean {_fmt(s.tpot_mean_ms, 2)} ms")
    if s.errors:
        rows.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())))
    return "\n".join(rows)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def request_record(r: Any) -> dict[str, Any]:
    """One request's record with its times in ms."""
    d = dataclasses.asdict(r)
    d["itl"] = [round(x * 1000.0, 3) for x in r.itl]
    for k in ("ttft", "latency"):
        d[k + "_ms"] = d.pop(k) * 1000.0
    return d


def to_json(doc: dict[str, Any]) -> str:
    """The result document as the text of ``out=FILE.json``."""
    return json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n"
