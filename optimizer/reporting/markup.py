"""The report page's HTML primitives, shared by the page (:mod:`optimizer.reporting.html`) and the
sections that render their own HTML (:mod:`optimizer.reporting.quality_section`): escaping, numbers,
and a figure as a ``<div>`` of the page or the sentence that says why it is missing.

Every user-controlled string goes through :func:`esc` (:func:`html.escape`). plotly.js is embedded
once per page, by the page, never per figure.
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["PLOT_CONFIG", "esc", "fig_block", "figure_div", "num", "pct"]

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png"}}


def esc(text: Any) -> str:
    """``text`` escaped for HTML (quotes included)."""
    return html.escape(str(text), quote=True)


def num(v: float, fmt: str = ".1f", unit: str = "") -> str:
    """A finite number formatted (with ``unit``); ``n/a`` for NaN, infinities and non-numbers."""
    return format(v, fmt) + unit if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def pct(v: float) -> str:
    """A share as a signed percentage (``+4.2%``); ``n/a`` when not finite."""
    return f"{v * 100:+.1f}%" if math.isfinite(v) else "n/a"


def fig_block(key: str, fig: Optional[go.Figure], why: str) -> str:
    """The figure as ``<div id="fig-<key>">``; without one, ``why`` in a ``<p id="fig-<key>-empty">``."""
    if fig is None:
        return f'<p class="empty" id="fig-{key}-empty">{esc(why)}</p>'
    div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}", config=PLOT_CONFIG)
    return f'<div class="fig">{div}</div>'


def figure_div(key: str, fig: go.Figure) -> str:
    """A figure as a ``<div id="fig-<key>">`` of the page (plotly.js is embedded once, by the page)."""
    return fig_block(key, fig, "")
