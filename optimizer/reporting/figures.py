"""The report's figure step: :class:`~optimizer.reporting.data.ReportData` in, Plotly figures out.

Optuna's own plots are reused where they answer the question (history, parallel coordinates,
slices: all three read ``trial.constraints`` and grey out infeasible trials); the domain plots
(throughput against P99, latency CDFs, server telemetry, time per phase) are drawn here. A
function returns ``None`` when its figure would be empty; the page then says why in words.
Every user-controlled string that reaches a figure is HTML-escaped (Plotly renders a subset
of HTML in text and hover labels).
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from optimizer.reporting.data import METRICS, CompileCacheInfo, ReportData, Status, TrialInfo

__all__ = ["COLORS", "cdf_figure", "compile_cache_line", "history_figure", "importance_figure", "parallel_figure", "phases_figure",
           "scatter_figure", "slice_figure", "telemetry_figure", "timeline_figure"]

COLORS = {Status.FEASIBLE: "#2a9d3f", Status.INFEASIBLE: "#f08c00", Status.FAILED: "#868e96",
          Status.RULED_OUT: "#b197fc", Status.RUNNING: "#1c7ed6"}
_PHASE_COLOR = {"wait for GPU": "#adb5bd", "start: process start + imports": "#364fc7", "start: model load": "#5c7cfa",
                "start: torch.compile": "#e8590c", "start: CUDA graphs": "#ffa94d", "start: engine init rest": "#91a7ff",
                "server start": "#4263eb", "warm-up": "#74c0fc", "load test": "#2a9d3f", "server stop": "#f08c00",
                "other": "#dee2e6"}
_SERIES = ["#212529", "#e03131", "#1c7ed6", "#2a9d3f", "#ae3ec9"]
_TEMPLATE = "plotly_white"
_OBJECTIVE = "output tokens/s"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=False)


def _n(v: float, fmt: str = ".1f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _hover(i: TrialInfo, metric: str) -> str:
    role = " (baseline)" if i.baseline else ""
    lines = [f"<b>trial {i.number}</b>{role}: {i.status.value}",
             f"{_n(i.throughput)} output tok/s, P99 {metric} {_n(i.p99, '.0f')} ms",
             f"error rate {_n(i.error_rate * 100 if math.isfinite(i.error_rate) else math.nan)}%"]
    if i.failure:
        lines.append(f"failure: {_e(i.failure)}")
    if i.worker:
        lines.append(f"ran on {_e(i.worker)}" + (f", GPU {_e(i.gpus)}" if i.gpus else ""))
    lines += [f"{_e(k)} = {_e(v)}" for k, v in sorted(i.params.items())]
    return "<br>".join(lines)


def _layout(fig: go.Figure, title: str, height: int = 420, bottom: int = 120, **kw: Any) -> go.Figure:
    fig.update_layout(template=_TEMPLATE, title=dict(text=title, x=0.01), height=height, width=None,
                      autosize=True, margin=dict(l=60, r=30, t=70, b=bottom),
                      legend=dict(orientation="h", yanchor="top", y=-0.16 * 500 / height - 0.08, x=0), **kw)
    return fig


def scatter_figure(d: ReportData) -> Optional[go.Figure]:
    s = d.summary
    if not d.trials:
        return None
    fig = go.Figure()
    measured = [i for i in d.trials if i.measured]
    front = {n: i for i, n in enumerate(d.pareto)}
    xmax = max([i.p99 for i in measured] + [s.slo_ms if math.isfinite(s.slo_ms) else 0.0, 1.0])
    edge = xmax * 1.08
    for status in Status:
        pts = [i for i in measured if i.status == status]
        if pts:
            fig.add_trace(go.Scatter(
                x=[i.p99 for i in pts], y=[i.throughput for i in pts], mode="markers", name=status.value,
                marker=dict(color=COLORS[status], size=11, symbol="circle" if status == Status.FEASIBLE else "x",
                            line=dict(width=1, color="white")),
                hovertext=[_hover(i, s.slo_metric) for i in pts], hovertemplate="%{hovertext}<extra></extra>"))
    unmeasured = [i for i in d.trials if not i.measured and i.status != Status.RUNNING]
    if unmeasured:
        fig.add_trace(go.Scatter(
            x=[edge * (1 + 0.012 * k) for k in range(len(unmeasured))], y=[0.0] * len(unmeasured), mode="markers",
            name="failed / ruled out (no measurement, drawn at 0)",
            marker=dict(color=[COLORS[i.status] for i in unmeasured], size=11, symbol="triangle-down"),
            hovertext=[_hover(i, s.slo_metric) for i in unmeasured], hovertemplate="%{hovertext}<extra></extra>"))
    if len(d.pareto) > 1:
        pts = sorted((i for i in measured if i.number in front), key=lambda i: i.p99)
        fig.add_trace(go.Scatter(x=[i.p99 for i in pts], y=[i.throughput for i in pts], mode="lines",
                                 line=dict(color="#495057", width=1.5, dash="dot", shape="hv"),
                                 name="Pareto front (throughput vs P99)", hoverinfo="skip"))
    same = s.best is not None and s.baseline is not None and s.best.number == s.baseline.number
    for info, label, symbol, pos in ((s.baseline, "baseline", "diamond-open", "bottom center"),
                                     (s.best, "best", "star", "top center")):
        if info is not None and info.measured:
            text = "baseline = best" if same else label
            fig.add_trace(go.Scatter(x=[info.p99], y=[info.throughput], mode="markers+text", name=label,
                                     text=[f"{text} #{info.number}" if label == "best" or not same else ""],
                                     textposition=pos,
                                     marker=dict(symbol=symbol, size=22, color="#212529" if label == "baseline"
                                                 else "#ffd43b", line=dict(width=2, color="#212529")),
                                     hovertext=[_hover(info, s.slo_metric)],
                                     hovertemplate="%{hovertext}<extra></extra>"))
    if math.isfinite(s.slo_ms):
        fig.add_vline(x=s.slo_ms, line=dict(color="#e03131", dash="dash", width=2),
                      annotation_text=f"SLO: P99 {_e(s.slo_metric)} ≤ {s.slo_ms:g} ms",
                      annotation_position="bottom right")
    fig.update_xaxes(title=f"P99 {s.slo_metric} latency (ms)", rangemode="tozero")
    ymax = max([i.throughput for i in measured] + [1.0])
    fig.update_yaxes(title=_OBJECTIVE, range=[-0.06 * ymax, 1.12 * ymax])
    return _layout(fig, "Throughput against P99 latency, every trial", 540)


def history_figure(study: optuna.Study, d: ReportData) -> Optional[go.Figure]:
    if not any(i.state == "COMPLETE" for i in d.trials):
        return None
    fig = optuna.visualization.plot_optimization_history(study, target_name=_OBJECTIVE)
    b = d.summary.baseline
    if b is not None and math.isfinite(b.throughput):
        fig.add_hline(y=b.throughput, line=dict(color="#495057", dash="dot"),
                      annotation_text=f"baseline #{b.number}: {b.throughput:.0f}", annotation_position="bottom right")
    return _layout(fig, "Optimization history (the line: best feasible so far)", 420)


def importance_figure(d: ReportData) -> Optional[go.Figure]:
    shown = [imp for imp in d.importances if imp.values]
    if not shown:
        return None
    fig = make_subplots(rows=1, cols=len(shown), horizontal_spacing=0.2,
                        subplot_titles=[f"{_e(imp.target)} ({imp.n_trials} trials)" for imp in shown])
    for col, imp in enumerate(shown, start=1):
        items = sorted(imp.values.items(), key=lambda kv: kv[1])
        fig.add_trace(go.Bar(x=[v for _, v in items], y=[_e(k) for k, _ in items], orientation="h",
                             marker_color="#4263eb", showlegend=False,
                             hovertemplate="%{y}: %{x:.2f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title="importance (PED-ANOVA)", range=[0, 1], row=1, col=col)
    return _layout(fig, "Parameter importance (PED-ANOVA), every measured trial", 360)


def parallel_figure(study: optuna.Study, d: ReportData) -> Optional[go.Figure]:
    if sum(1 for i in d.trials if i.state == "COMPLETE") < 2:
        return None
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=_OBJECTIVE)
    return _layout(fig, "Parallel coordinates (infeasible trials in grey)", 440)


def slice_figure(study: optuna.Study, d: ReportData) -> Optional[go.Figure]:
    if sum(1 for i in d.trials if i.state == "COMPLETE") < 2:
        return None
    fig = optuna.visualization.plot_slice(study, target_name=_OBJECTIVE)
    return _layout(fig, "Slices: throughput against each parameter (infeasible in grey)", 400)


def cdf_figure(d: ReportData) -> Optional[go.Figure]:
    if not d.cdfs:
        return None
    s = d.summary
    fig = make_subplots(rows=1, cols=3, subplot_titles=["TTFT", "ITL", "E2E latency"], horizontal_spacing=0.06)
    for k, series in enumerate(d.cdfs):
        color = _SERIES[k % len(_SERIES)]
        for col, metric in enumerate(METRICS, start=1):
            xs, ys = series.curves.get(metric, ([], []))
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=_e(series.label), legendgroup=series.label,
                                         showlegend=col == 1, line=dict(color=color, width=2),
                                         hovertemplate=f"{_e(series.label)}<br>%{{x:.1f}} ms: %{{y:.1%}}"
                                                       f"<extra>{metric}</extra>"), row=1, col=col)
        fig.update_xaxes(type="log", title="ms (log scale)")
    if s.slo_metric in METRICS and math.isfinite(s.slo_ms):
        col = METRICS.index(s.slo_metric) + 1
        fig.add_vline(x=s.slo_ms, row=1, col=col, line=dict(color="#e03131", dash="dash"))
        fig.add_hline(y=0.99, row=1, col=col, line=dict(color="#e03131", dash="dot", width=1))
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _layout(fig, "Latency distributions (the red lines: SLO and the 99th percentile)", 420)


def telemetry_figure(d: ReportData) -> Optional[go.Figure]:
    rows = d.telemetry
    if not rows:
        return None
    fig = make_subplots(rows=1, cols=4, horizontal_spacing=0.06,
                        subplot_titles=["KV-cache usage peak (%)", "preemptions", "running requests (peak)",
                                        "waiting requests (peak)"])
    x = [f"#{r.number}" for r in rows]
    colors = [COLORS[r.status] for r in rows]
    for col, (vals, label) in enumerate(((([r.kv_peak_pct for r in rows]), "KV peak %"),
                                         ([r.preemptions for r in rows], "preemptions"),
                                         ([r.running_peak for r in rows], "running peak"),
                                         ([r.waiting_peak for r in rows], "waiting peak")), start=1):
        hover = [f"trial {r.number} ({r.status.value})<br>{label}: {_n(v, '.2f')}<br>KV capacity "
                 f"{_n(r.kv_tokens, ',.0f')} tokens (estimated {_n(r.pred_kv_tokens, ',.0f')})"
                 for r, v in zip(rows, vals)]
        fig.add_trace(go.Bar(x=x, y=[v if math.isfinite(v) else None for v in vals], marker_color=colors,
                             showlegend=False, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"),
                      row=1, col=col)
    fig.update_xaxes(type="category", tickangle=-60)
    return _layout(fig, "Server telemetry per measured trial (colour: feasible / infeasible)", 320, bottom=60)


def timeline_figure(d: ReportData) -> Optional[go.Figure]:
    if not d.timelines:
        return None
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.06,
                        subplot_titles=["KV-cache usage (%)", "running requests", "waiting requests"])
    for k, tl in enumerate(d.timelines):
        color = _SERIES[k % len(_SERIES)]
        for col, key in enumerate(("kv", "running", "waiting"), start=1):
            fig.add_trace(go.Scatter(x=tl.t_s, y=[v if math.isfinite(v) else None for v in tl.gauges[key]],
                                     mode="lines", name=_e(tl.label), legendgroup=tl.label, showlegend=col == 1,
                                     line=dict(color=color, width=2)), row=1, col=col)
    fig.update_xaxes(title="s since the warm-up began")
    return _layout(fig, "Server gauges during warm-up and load test, highlighted trials", 360)


def phases_figure(d: ReportData) -> Optional[go.Figure]:
    if not d.phases:
        return None
    fig = go.Figure()
    x = [f"#{p.number}" for p in d.phases]
    # a phase no trial spent time in (CUDA graphs on the CPU build, a split every start had) is left out
    labels = [label for label in d.phases[0].seconds if any(p.seconds[label] > 0 for p in d.phases)]
    cache = ["loaded from the compile cache" if p.compile_cache_hit else "compiled" if p.compile_cache_hit is False
             else "compile cache: not known" for p in d.phases]
    for label in labels:
        fig.add_trace(go.Bar(x=x, y=[p.seconds[label] for p in d.phases], name=label, customdata=cache,
                             marker_color=_PHASE_COLOR.get(label, "#dee2e6"),
                             hovertemplate=f"%{{x}} {label}: %{{y:.1f}} s (%{{customdata}})<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(type="category", title="trial", tickangle=-60)
    fig.update_yaxes(title="seconds")
    title = (f"Time per trial by phase: {d.total_s / 60:.1f} min of trials, {d.span_s / 60:.1f} min "
             f"from the first start to the last finish<br><sup>{_e(compile_cache_line(d.compile_cache))}</sup>")
    return _layout(fig, title, 400)


def compile_cache_line(c: CompileCacheInfo) -> str:
    """The study's compile-cache hit rate in words."""
    known = c.hits + c.misses
    if not known:
        return "Compile cache: no server start said whether it compiled (no log, or eager mode)."
    unknown = f"; {c.unknown} other start(s) did not say" if c.unknown else ""
    return (f"Compile cache: {c.hits} of {known} server starts loaded the compiled model ({c.rate:.0%} hit rate), "
            f"{c.misses} compiled; {c.keys} distinct compile key(s){unknown}.")
