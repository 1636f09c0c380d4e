"""The report's charts: one table (:data:`CHARTS`) read by the writer, which draws every chart
(:func:`draw`), and by the page, which places each in its section with the sentence that stands in
for a chart with nothing to show (:func:`charts_in`).

A new chart is a function from the report's pure inputs to a Plotly figure, or ``None`` when there is
nothing to draw (in :mod:`optimizer.reporting.figures`, or the module of its section), and one row
here; a new section also needs its place on the page (:mod:`optimizer.reporting.html`). The quality
section draws its own chart into its own HTML (:mod:`optimizer.reporting.quality_section`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import optuna
import plotly.graph_objects as go

from optimizer.reporting import figures as F
from optimizer.reporting.capacity_section import capacity_bars_figure, capacity_curves_figure
from optimizer.reporting.data import ReportData
from optimizer.reporting.quality_section import QualityInfo, quality_figure

__all__ = ["CHARTS", "Chart", "ChartInputs", "charts_in", "draw"]


@dataclass(frozen=True)
class ChartInputs:
    """What the charts are drawn from."""

    data: ReportData
    study: optuna.Study  # the search's view of the study (Optuna's own plots read its trials)
    quality: QualityInfo


@dataclass(frozen=True)
class Chart:
    key: str  # the figure's id on the page: fig-<key>, or fig-<key>-empty for the sentence
    section: str  # the page section it is drawn in
    build: Callable[[ChartInputs], Optional[go.Figure]]
    empty: Callable[[ReportData], str]  # the sentence shown when ``build`` has nothing to draw


def _says(text: str) -> Callable[[ReportData], str]:
    return lambda d: text


def _importance_missing(d: ReportData) -> str:
    why = "; ".join(f"{imp.target}: {imp.reason}" for imp in d.importances if imp.reason) or "no importances"
    return f"Not computed: {why}."


_FEW = _says("Needs at least two completed trials.")

# in the page's order within each section
CHARTS: tuple[Chart, ...] = (
    Chart("capacity_curves", "capacity", lambda c: capacity_curves_figure(c.data.capacity),
          _says("No probes recorded.")),
    Chart("capacity_bars", "capacity", lambda c: capacity_bars_figure(c.data.capacity), _says("No capacity recorded.")),
    Chart("scatter", "scatter", lambda c: F.scatter_figure(c.data), _says("No trials to plot.")),
    Chart("history", "history", lambda c: F.history_figure(c.study, c.data), _says("No completed trials yet.")),
    Chart("importance", "importance", lambda c: F.importance_figure(c.data), _importance_missing),
    Chart("parallel", "params", lambda c: F.parallel_figure(c.study, c.data), _FEW),
    Chart("slice", "params", lambda c: F.slice_figure(c.study, c.data), _FEW),
    Chart("cdf", "latency", lambda c: F.cdf_figure(c.data),
          _says("No latency samples recorded (no trial was measured).")),
    Chart("telemetry", "telemetry", lambda c: F.telemetry_figure(c.data),
          _says("No server telemetry recorded (no trial was measured).")),
    Chart("timeline", "telemetry", lambda c: F.timeline_figure(c.data), _says("No gauge timeline recorded.")),
    Chart("phases", "time", lambda c: F.phases_figure(c.data), _says("No trials.")),
    Chart("quality", "quality", lambda c: quality_figure(c.quality), _says("No quality measured.")),
)


def charts_in(section: str) -> tuple[Chart, ...]:
    """The charts of one page section, in the table's order."""
    return tuple(c for c in CHARTS if c.section == section)


def draw(inputs: ChartInputs) -> dict[str, Optional[go.Figure]]:
    """Every chart of the table: key -> figure, or None where it has nothing to draw."""
    return {c.key: c.build(inputs) for c in CHARTS}
