"""The report's charts are one table (optimizer/reporting/charts.py): the writer draws every row and the
page places each in its section, with the row's sentence where there is nothing to draw. A chart added
to the table alone is drawn and placed; every row's section is one the page has."""

from __future__ import annotations

import re

import optuna
import plotly.graph_objects as go

from optimizer.reporting import charts
from optimizer.reporting.data import build_report_data
from optimizer.reporting.html import SECTIONS, render_page
from optimizer.reporting.quality_section import quality_info
from tests.support.report_fixtures import make_study, study_config, synthetic_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m[1]


def test_a_chart_added_to_the_table_alone_is_drawn_and_placed_in_its_section(monkeypatch):
    trials = synthetic_trials(6)
    d = build_report_data("s", trials, {"config": study_config()})
    extra = charts.Chart("extra", "history", lambda c: go.Figure(go.Bar(x=[1], y=[len(c.data.trials)])),
                         lambda d: "nothing extra")
    monkeypatch.setattr(charts, "CHARTS", charts.CHARTS + (extra,))
    figs = charts.draw(charts.ChartInputs(d, make_study(trials), quality_info(d, trials)))
    assert isinstance(figs["extra"], go.Figure)
    page = render_page(d, figs)
    assert 'id="fig-extra"' in _section(page, "history") and 'id="fig-extra"' not in _section(page, "scatter")
    # nothing to draw: the row's own sentence, in its section
    empty = render_page(d, {k: v for k, v in figs.items() if k != "extra"})
    assert 'id="fig-extra-empty">nothing extra<' in _section(empty, "history")


def test_every_chart_sits_in_a_section_the_page_draws_and_says_why_when_empty():
    drawn = {sid for sid, _ in SECTIONS} | {"capacity", "quality"}  # capacity and quality: when measured
    assert {c.section for c in charts.CHARTS} <= drawn
    assert len({c.key for c in charts.CHARTS}) == len(charts.CHARTS)
    d = build_report_data("s", synthetic_trials(3), {"config": study_config()})
    page = render_page(d, {})
    for c in charts.CHARTS:
        if c.section not in ("capacity", "quality"):
            assert f'id="fig-{c.key}-empty">' in page, c.key
