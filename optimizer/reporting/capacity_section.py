"""The report's capacity section (``load.mode=capacity`` studies): data, then figures.

Data (pure): per config, the latency-throughput curve of its probes (load against output tok/s
and against the P99 of the SLO metric) for the baseline, the best and a few others; the capacity
of every searched trial as a bar; and the summary line "config #X carries N concurrent users at
P99 <= L ms, the defaults carry M". Figures: two Plotly figures drawn from that data alone.
Nothing here reads a user attr: the searches come in as :class:`~optimizer.capacity.CapacityResult`.
"""

from __future__ import annotations

import html
import math
from typing import Any, NamedTuple, Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from optimizer.capacity import CapacityResult
from optimizer.capacity.curve import fitted
from optimizer.measures.metrics import LATENCY_METRICS

__all__ = ["CapacityBar", "CapacityCurve", "CapacityData", "CapacityTrial", "build_capacity_data",
           "capacity_bars_figure", "capacity_curves_figure", "capacity_line"]

_SERIES = ["#212529", "#e03131", "#1c7ed6", "#2a9d3f", "#ae3ec9"]
_MAX_CURVES = 5  # the highlighted configs, topped up with the highest capacities
_BAR = {"feasible": "#2a9d3f", "infeasible": "#f08c00"}


class CapacityTrial(NamedTuple):
    """What the report knows of one trial that ran a search."""

    number: int
    label: str  # "#3 best", "#0 baseline", ...
    baseline: bool
    result: CapacityResult


class CapacityCurve(NamedTuple):
    number: int
    label: str
    loads: list[float]  # ascending
    output_tok_s: list[float]
    p99_ms: list[float]  # of the SLO metric (NaN: not measured)
    passed: list[bool]
    value: float  # the capacity (NaN: none)
    p99_low: list[float] = []  # each probe's P99 interval (slo.metric; NaN: too few requests to bound it)
    p99_high: list[float] = []
    low: float = math.nan  # the fitted capacity's interval (high NaN: open above)
    high: float = math.nan


class CapacityBar(NamedTuple):
    number: int
    label: str
    value: float  # NaN: infeasible
    output_tok_s: float
    limited_by: str
    feasible: bool
    low: float = math.nan  # the fitted capacity's interval (optimizer.capacity.curve); high NaN: open
    high: float = math.nan


class CapacityData(NamedTuple):
    control: str  # concurrency | rate
    metric: str
    slo_ms: float
    curves: list[CapacityCurve]  # highlighted configs only
    bars: list[CapacityBar]  # every searched trial, by number
    line: str  # the summary sentence ("" without a feasible best)


def _amount(control: str, value: float, req_s: float = math.nan) -> str:
    if not value == value:
        return "nothing (it breaks the limit at the lowest load)"
    if control == "concurrency":
        return f"{value:g} concurrent users" + (f" / {req_s:.2f} req/s" if req_s == req_s else "")
    return f"{value:g} req/s"


def _fitted(r: CapacityResult) -> str:
    """" (fitted over every probe: ~12 users (95 % CI 10-14))", or ''."""
    t = r.interval_text()
    return f" (fitted over every probe: {t}{'; ' + '; '.join(r.flags) if r.flags else ''})" if t else ""


def capacity_line(best: Optional[CapacityTrial], baseline: Optional[CapacityTrial], metric: str,
                  slo_ms: float) -> str:
    """"config #X carries N concurrent users / R req/s at P99 <= L ms, the defaults carry M"."""
    if best is None or not best.result.feasible:
        return ""
    r = best.result
    text = (f"config #{best.number} carries {_amount(r.control, r.value, r.req_s)} at P99 {metric} <= {slo_ms:g} ms"
            + (" (the cap of the search: it may carry more)" if r.limited_by.value == "cap" else "")
            + _fitted(r))
    if baseline is not None and baseline.number != best.number:
        b = baseline.result
        text += f", the defaults (#{baseline.number}) carry {_amount(b.control, b.value, b.req_s)}{_fitted(b)}"
        if b.feasible and b.value > 0:
            text += f" ({r.value / b.value:.2f}x)"
    elif baseline is not None:
        text += " (that is the defaults)"
    return text


def build_capacity_data(trials: Sequence[CapacityTrial], highlight: Sequence[int], best: Optional[int],
                        metric: str, slo_ms: float) -> Optional[CapacityData]:
    """The section's data; None when no trial ran a search. ``highlight``: the trial numbers whose
    curves are drawn first (baseline, best, a few others), topped up to five with the searched
    trials of the highest capacity."""
    if not trials:
        return None
    trials = [t._replace(result=fitted(t.result)) for t in trials]  # studies recorded before the fit: from probes
    by_n = {t.number: t for t in trials}
    curves = []
    ranked = sorted(trials, key=lambda t: -t.result.value if t.result.feasible else math.inf)
    chosen = [n for n in highlight if n in by_n]
    chosen += [t.number for t in ranked if t.number not in chosen][:max(0, _MAX_CURVES - len(chosen))]
    for n in chosen:
        t = by_n.get(n)
        if t is None:
            continue
        ps = sorted(t.result.probes, key=lambda p: p.load)
        curves.append(CapacityCurve(n, t.label, [p.load for p in ps], [p.output_tok_s for p in ps],
                                    [_p99(p, metric) for p in ps], [p.passed for p in ps], t.result.value,
                                    [p.p99_low_ms for p in ps], [p.p99_high_ms for p in ps], t.result.low,
                                    t.result.high))
    bars = [CapacityBar(t.number, t.label, t.result.value, t.result.output_tok_s, t.result.limited_by.value,
                        t.result.feasible, t.result.low, t.result.high) for t in sorted(trials, key=lambda t: t.number)]
    base = next((t for t in trials if t.baseline), None)
    control = trials[0].result.control
    return CapacityData(control, metric, slo_ms, curves, bars,
                        capacity_line(by_n.get(best) if best is not None else None, base, metric, slo_ms))


def _p99(p: Any, metric: str) -> float:
    return float(getattr(p, f"{metric}_p99_ms")) if metric in LATENCY_METRICS else float(p.p99_ms)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=False)


def _unit(control: str) -> str:
    return "concurrent users" if control == "concurrency" else "requests/s"


def capacity_curves_figure(c: Optional[CapacityData]) -> Optional[go.Figure]:
    """Load against output tok/s and against P99 (the SLO line), one curve per config; failed
    probes as crosses, each P99 with its interval, the capacity as a ring with its interval."""
    if c is None or not c.curves:
        return None
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["output tokens/s", f"P99 {c.metric} latency (ms)"])
    for k, cur in enumerate(c.curves):
        color = _SERIES[k % len(_SERIES)]
        symbols = ["circle" if ok else "x" for ok in cur.passed]
        for col, ys in ((1, cur.output_tok_s), (2, cur.p99_ms)):
            err = None
            if col == 2 and cur.p99_low and any(v == v for v in cur.p99_high):
                err = dict(type="data", symmetric=False, color=color, thickness=1,
                           array=[h - y if h == h and y == y else 0.0 for h, y in zip(cur.p99_high, ys)],
                           arrayminus=[y - lo if lo == lo and y == y else 0.0 for lo, y in zip(cur.p99_low, ys)])
            fig.add_trace(go.Scatter(
                x=cur.loads, y=ys, mode="lines+markers", name=_e(cur.label), legendgroup=cur.label,
                showlegend=col == 1, line=dict(color=color, width=2), marker=dict(symbol=symbols, size=9),
                error_y=err,
                hovertemplate=f"{_e(cur.label)}<br>load %{{x:g}}: %{{y:.1f}}<extra></extra>"), row=1, col=col)
        if cur.value == cur.value:
            i = cur.loads.index(cur.value) if cur.value in cur.loads else None
            if i is not None:
                band = None
                if cur.low == cur.low:
                    top = cur.high if cur.high == cur.high else max(cur.loads)
                    band = dict(type="data", symmetric=False, color=color, thickness=3, width=8,
                                array=[max(0.0, top - cur.value)], arrayminus=[max(0.0, cur.value - cur.low)])
                fig.add_trace(go.Scatter(x=[cur.value], y=[cur.output_tok_s[i]], mode="markers", showlegend=False,
                                         error_x=band,
                                         marker=dict(symbol="circle-open", size=18, color=color, line=dict(width=2)),
                                         hovertemplate=f"{_e(cur.label)}: capacity %{{x:g}}<extra></extra>"),
                              row=1, col=1)
    if math.isfinite(c.slo_ms):
        fig.add_hline(y=c.slo_ms, row=1, col=2, line=dict(color="#e03131", dash="dash"),
                      annotation_text=f"SLO {c.slo_ms:g} ms", annotation_position="top left")
    fig.update_xaxes(title=_unit(c.control))
    fig.update_layout(template="plotly_white", height=440, margin=dict(l=60, r=30, t=70, b=110),
                      title=dict(text="Latency-throughput curves of the capacity search (x: a probe that broke "
                                      "the limit; ring: the capacity, its bar the 95 % interval)", font=dict(size=15)),
                      legend=dict(orientation="h", y=-0.22))
    return fig


def capacity_bars_figure(c: Optional[CapacityData]) -> Optional[go.Figure]:
    """The capacity of every searched config (infeasible: an empty bar, labelled)."""
    if c is None or not c.bars:
        return None
    xs = [b.label for b in c.bars]
    ys = [b.value if b.value == b.value else 0.0 for b in c.bars]
    text = [f"{b.value:g} ({b.limited_by})" + (f", CI {b.low:g}-{b.high:g}" if b.low == b.low and b.high == b.high
                                                else f", CI {b.low:g}-open" if b.low == b.low else "")
            if b.feasible else "infeasible" for b in c.bars]
    colors = [_BAR["feasible" if b.feasible else "infeasible"] for b in c.bars]
    fig = go.Figure(go.Bar(x=[_e(x) for x in xs], y=ys, text=text, textposition="outside", marker_color=colors,
                           customdata=[b.output_tok_s for b in c.bars],
                           hovertemplate="%{x}: %{y:g}, %{customdata:.1f} output tok/s there<extra></extra>"))
    fig.update_layout(template="plotly_white", height=380, margin=dict(l=60, r=30, t=60, b=80),
                      title=dict(text=f"Capacity per config ({_unit(c.control)} at P99 {c.metric} <= {c.slo_ms:g} "
                                      f"ms; in brackets what limited it)", font=dict(size=15)),
                      yaxis_title=_unit(c.control), xaxis_title="trial")
    return fig
