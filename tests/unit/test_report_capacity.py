"""The report's capacity section: curves, bars, the summary line, the table and CSV columns, from
studies whose trials carry a capacity search (load.mode=capacity)."""

from __future__ import annotations

import json
import math

import optuna

from optimizer.capacity import CapacityResult, LimitedBy, ProbeResult
from optimizer.record import Capacity
from optimizer.reporting import write_study_report
from optimizer.reporting.capacity_section import capacity_bars_figure, capacity_curves_figure
from optimizer.reporting.data import build_report_data
from optimizer.reporting.html import render_page
from tests.support.report_fixtures import SLO_MS, make_study, make_trial, study_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
P = {"kv_cache_gib": 2.0, "max_num_seqs": 64, "max_num_batched_tokens": 2048,
     "enable_chunked_prefill": True, "enable_prefix_caching": False}


def search(capacity: float, limited_by: LimitedBy = LimitedBy.SLO) -> CapacityResult:
    """Probes at 1, 2, 4, ... up to 2x ``capacity`` (NaN: only the first, failing); P99 = load / capacity x 0.9 SLO."""
    feasible = capacity == capacity
    loads = [1.0] if not feasible else sorted({2.0 ** k for k in range(8) if 2 ** k <= capacity} | {capacity,
                                                                                                    capacity + 1})
    probes = tuple(ProbeResult(load=x, passed=feasible and x <= capacity, failed_on="" if feasible and x <= capacity
                               else "slo", output_tok_s=100.0 * x, req_s=x / 2,
                               p99_ms=(x / capacity if feasible else 2.0) * 0.9 * SLO_MS,
                               e2e_p99_ms=(x / capacity if feasible else 2.0) * 0.9 * SLO_MS, n_requests=32, n_ok=32)
                   for x in loads)
    at = next((p for p in probes if p.load == capacity), None)
    return CapacityResult("concurrency", capacity, at.output_tok_s if at else math.nan, at.req_s if at else math.nan,
                          at.p99_ms if at else math.nan, limited_by, feasible,
                          {"slo": -0.1 if feasible else 1.0, "errors": -0.01}, probes, cap=64.0,
                          slo_metric="e2e", slo_p99_ms=SLO_MS)


def trial(n: int, capacity: float, kind: str = ""):
    r = search(capacity)
    return make_trial(n, P, kind=kind, throughput=r.output_tok_s if r.feasible else 500,
                      e2e_center=0.5 * SLO_MS if r.feasible else 3 * SLO_MS, extra=Capacity(r).to_attrs())


def study_trials():
    return [trial(0, 6, "baseline"), trial(1, 11), trial(2, math.nan), trial(3, 3)]


def test_the_data_holds_curves_bars_and_the_summary_line():
    d = build_report_data("cap", study_trials(), {"config": study_config()})
    c = d.capacity
    assert c is not None and c.control == "concurrency" and c.slo_ms == SLO_MS
    assert d.summary.best.number == 1
    assert c.line.startswith("config #1 carries 11 concurrent users / 5.50 req/s at P99 e2e <= ")
    assert "the defaults (#0) carry 6 concurrent users" in c.line and "(1.83x)" in c.line
    # every capacity shown with its interval: the line, the bars, the trials table
    assert c.line.count("fitted over every probe: ~") == 2 and c.line.count("95% CI") == 2
    assert all(b.low == b.low for b in c.bars if b.feasible)
    assert "95% CI" in d.trials[0].cap_interval
    assert [b.number for b in c.bars] == [0, 1, 2, 3]
    assert math.isnan(c.bars[2].value) and not c.bars[2].feasible and c.bars[1].limited_by == "slo"
    curves = {cur.number: cur for cur in c.curves}
    assert {0, 1} <= set(curves)  # baseline and best always
    assert curves[1].loads == [1, 2, 4, 8, 11, 12] and curves[1].passed == [True] * 5 + [False]
    assert [i.capacity for i in d.trials][:2] == [6, 11] and d.trials[0].cap_limited_by == "slo"


def test_a_study_without_searches_has_no_capacity_section():
    d = build_report_data("plain", [make_trial(0, P, throughput=2000, e2e_center=500)], {"config": study_config()})
    assert d.capacity is None and capacity_curves_figure(d.capacity) is None
    page = render_page(d, {})
    assert 'id="capacity"' not in page and "limited by" not in page


def test_figures_draw_the_curves_the_slo_line_and_the_bars():
    d = build_report_data("cap", study_trials(), {"config": study_config()})
    curves = capacity_curves_figure(d.capacity).to_plotly_json()
    xs = [t["x"] for t in curves["data"] if t.get("mode") == "lines+markers"]
    assert list(xs[0]) and any(list(x) == [1, 2, 4, 8, 11, 12] for x in xs)
    assert any(s.get("y0") == SLO_MS for s in curves["layout"]["shapes"])  # the SLO line
    rings = [t for t in curves["data"] if t.get("mode") == "markers"]
    assert rings and all("error_x" in t for t in rings)  # each capacity with its interval
    bars = capacity_bars_figure(d.capacity).to_plotly_json()["data"][0]
    assert list(bars["y"]) == [6, 11, 0.0, 3] and "infeasible" in list(bars["text"])


def test_page_table_and_csv_gain_the_capacity(tmp_path):
    index = write_study_report(make_study(study_trials(), name="cap"), tmp_path / "cap")
    page = index.read_text()
    assert 'id="capacity-line"' in page and "config #1 carries 11 concurrent users" in page
    assert 'id="capacity"' in page and "capacity (users)" in page and "limited by" in page
    assert 'id="fig-capacity_curves"' in page and 'id="fig-capacity_bars"' in page
    import pandas as pd

    df = pd.read_csv(tmp_path / "cap" / "trials.csv")
    assert list(df["cap_value"].fillna(-1)) == [6, 11, -1, 3]
    assert {"cap_limited_by", "cap_n_probes", "cap_p99_ms", "cap_control"} <= set(df.columns)
    assert "capacity_json" not in df.columns
    back = json.loads(json.dumps(list(df["cap_n_probes"])))
    assert back == [5, 6, 1, 4]
