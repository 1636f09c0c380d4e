"""The report's quality section: what the quality probe measured per trial, which configs the
gate rejected and why, the winner's quality next to the baseline's, and speculative decoding's
acceptance per trial.

:func:`quality_info` is the pure data step (trials in, :class:`QualityInfo` out, tested without
a browser); :func:`quality_figure` draws it; :func:`quality_section` writes the section's HTML.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from optimizer.config import QualityConfig
from optimizer.record import TrialRecord
from optimizer.reporting.data import ReportData, Status
from optimizer.reporting.html import _e, _fig, _n

__all__ = ["QualityInfo", "QualityRow", "quality_figure", "quality_info", "quality_section"]

_DEFAULT = QualityConfig()


class QualityRow(NamedTuple):
    number: int
    status: Status
    baseline: bool
    numerics: str  # what differs from the baseline's numerics ("" when nothing)
    ppl: float
    ppl_increase: float  # relative to the reference (NaN when not graded)
    agreement: float
    exact_match_rate: float
    first_divergence: float
    probe_s: float
    is_reference: bool
    gated: bool
    violation: float  # the grade (0: within the limits; NaN: not graded)
    skipped: str
    error: str
    spec_acceptance: float  # accepted / drafted tokens in the load test (NaN: no speculation)

    @property
    def rejected(self) -> bool:
        """The quality gate made this trial infeasible."""
        return self.gated and math.isfinite(self.violation) and self.violation > 0


class QualityInfo(NamedTuple):
    mode: str
    max_ppl_increase: float
    min_agreement: float
    rows: list[QualityRow]  # trials that have a quality part, by number
    notes: list[str]  # plain-language statements (not measured, and why)
    winner: Optional[QualityRow]
    baseline: Optional[QualityRow]

    @property
    def measured(self) -> bool:
        return any(math.isfinite(r.ppl) for r in self.rows)


def _why(r: QualityRow, info_max: float, info_min: float) -> str:
    """Why the gate rejected ``r``, in words."""
    if not (math.isfinite(r.ppl_increase) and math.isfinite(r.agreement)):
        return f"quality not measured ({r.error or r.skipped or 'no probe'}): an unverified numerics change"
    out = []
    if r.ppl_increase > info_max:
        out.append(f"perplexity {r.ppl_increase:+.2%} over the baseline's (limit {info_max:+.2%})")
    if r.agreement < info_min:
        out.append(f"greedy agreement {r.agreement:.3f} below {info_min:.3f}")
    return "; ".join(out)


def quality_info(d: ReportData, trials: Sequence[FrozenTrial]) -> QualityInfo:
    """The quality section's data, from the report's data and the study's trials."""
    q: dict[str, Any] = d.summary.config.get("quality") or {}
    max_inc = float(q.get("max_ppl_increase", _DEFAULT.max_ppl_increase))
    min_agree = float(q.get("min_agreement", _DEFAULT.min_agreement))
    status = {i.number: i for i in d.trials}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        rec = TrialRecord.from_trial(t)
        p = rec.quality
        if p is None or t.number not in status:
            continue
        m = rec.measurement
        rows.append(QualityRow(t.number, status[t.number].status, status[t.number].baseline, p.numerics, p.ppl,
                               p.ppl_increase, p.agreement, p.exact_match_rate, p.first_divergence, p.probe_s,
                               p.is_reference, p.gated, p.violation, p.skipped, p.error,
                               m.telemetry.spec_acceptance if m is not None else math.nan))
    notes = []
    skipped = sorted({r.skipped for r in rows if r.skipped})
    if rows and not any(math.isfinite(r.ppl) for r in rows):
        notes.append("Quality was not measured in this study"
                     + (f" ({', '.join(skipped)})" if skipped else "") + ": the quality gate was not applied"
                     + (". Random (dummy) weights have no answers to keep; run with real weights, e.g. "
                        "model=smollm2-135m-instruct, to measure it." if "dummy weights" in skipped else "."))
    by = {r.number: r for r in rows}
    best = by.get(d.summary.best.number) if d.summary.best else None
    base = by.get(d.summary.baseline.number) if d.summary.baseline else None
    if base is None:
        base = next((r for r in rows if r.is_reference), None)
    return QualityInfo(str(q.get("mode", _DEFAULT.mode.value)), max_inc, min_agree, rows, notes, best, base)


def quality_figure(info: QualityInfo) -> Optional[go.Figure]:
    """Perplexity change and greedy agreement per trial (limits drawn), and speculative acceptance
    where any trial drafted; None when nothing was measured."""
    graded = [r for r in info.rows if math.isfinite(r.ppl_increase) or math.isfinite(r.agreement)]
    if not graded:
        return None
    spec = [r for r in info.rows if math.isfinite(r.spec_acceptance)]
    n = 3 if spec else 2
    titles = ["perplexity change vs the baseline (%)", "greedy agreement with the baseline"]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles + (["speculative acceptance"] if spec else []))
    x = [f"#{r.number}" for r in graded]
    colors = ["#e03131" if r.rejected else "#2a9d3f" if r.gated else "#868e96" for r in graded]
    hover = [_e(r.numerics or "baseline numerics") + (" (rejected)" if r.rejected else "") for r in graded]
    fig.add_trace(go.Bar(x=x, y=[100 * r.ppl_increase for r in graded], marker_color=colors, hovertext=hover,
                         name="perplexity change"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=[r.agreement for r in graded], marker_color=colors, hovertext=hover,
                         name="agreement"), row=1, col=2)
    fig.add_hline(y=100 * info.max_ppl_increase, line_dash="dash", line_color="#e03131", row=1, col=1)
    fig.add_hline(y=info.min_agreement, line_dash="dash", line_color="#e03131", row=1, col=2)
    if spec:
        fig.add_trace(go.Bar(x=[f"#{r.number}" for r in spec], y=[r.spec_acceptance for r in spec],
                             marker_color="#1c7ed6", name="acceptance"), row=1, col=3)
    fig.update_layout(template="plotly_white", height=340, showlegend=False, margin={"t": 40, "b": 40})
    return fig


def _cells(r: Optional[QualityRow]) -> list[str]:
    if r is None:
        return ["n/a"] * 4
    return [_n(r.ppl, ".3f"), _n(100 * r.ppl_increase, "+.2f", " %"), _n(r.agreement, ".3f"),
            _n(100 * r.exact_match_rate, ".0f", " %")]


def quality_section(info: QualityInfo, fig: Optional[go.Figure]) -> str:
    """The section's HTML (figures and tables; every string escaped)."""
    out = [f'<p class="sub">quality.mode={_e(info.mode)}: a trial whose numerics differ from the baseline\'s '
           f"may raise perplexity by at most {info.max_ppl_increase:.1%} and must keep a greedy agreement of at "
           f"least {info.min_agreement:.2f} (red bars: rejected by the gate; grey: baseline numerics).</p>"]
    out += [f'<p class="note">{_e(n)}</p>' for n in info.notes]
    if not info.rows:
        return "".join(out) + '<p class="empty">No trial recorded a quality probe.</p>'
    out.append(_fig("quality", fig, "No trial's quality was graded against a reference."))
    head = "<tr><th></th><th>perplexity</th><th>change</th><th>agreement</th><th>exact match</th></tr>"
    rows = [("the winner" + (f" (trial {info.winner.number})" if info.winner else ""), info.winner),
            ("the baseline" + (f" (trial {info.baseline.number})" if info.baseline else ""), info.baseline)]
    out.append('<h3>The winner next to the baseline</h3><table class="trials"><thead>' + head + "</thead><tbody>"
               + "".join(f"<tr><td>{_e(k)}</td>" + "".join(f'<td class="num">{c}</td>' for c in _cells(r))
                         + "</tr>" for k, r in rows) + "</tbody></table>")
    rejected = [r for r in info.rows if r.rejected]
    out.append("<h3>Rejected by the quality gate</h3>" + (
        "<p class=sub>None.</p>" if not rejected else "<ul>" + "".join(
            f"<li>trial {r.number} ({_e(r.numerics)}): {_e(_why(r, info.max_ppl_increase, info.min_agreement))}"
            f"</li>" for r in rejected) + "</ul>"))
    head = ("<tr><th>#</th><th>status</th><th>numerics vs baseline</th><th>perplexity</th><th>change</th>"
            "<th>agreement</th><th>exact</th><th>first divergence</th><th>probe s</th><th>spec acceptance</th>"
            "<th>gate</th></tr>")
    body = []
    for r in info.rows:
        gate = ("reference" if r.is_reference else "rejected" if r.rejected else "passed" if r.gated
                else "not gated") + (f": {r.skipped or r.error}" if r.skipped or r.error else "")
        cells = [str(r.number), _e(r.status.value), _e(r.numerics or "-"), *_cells(r)[:3],
                 _n(100 * r.exact_match_rate, ".0f", " %"), _n(r.first_divergence, ".1f"), _n(r.probe_s, ".1f"),
                 _n(r.spec_acceptance, ".2f"), _e(gate)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append('<h3>Every probed trial</h3><table class="trials"><thead>' + head + "</thead><tbody>"
               + "".join(body) + "</tbody></table>")
    return "\n".join(out)
