"""The report's quality section: what the quality probe measured per trial, which configs the
gate rejected and why, the trade (what each numerics change carried against the winner, beside its
verdict), the winner's quality next to the baseline's, and speculative decoding's acceptance per trial.

:func:`quality_info` is the pure data step (trials in, :class:`QualityInfo` out, tested without
a browser); :func:`quality_figure` draws it; :func:`quality_section` writes the section's HTML.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from optimizer.record import TrialRecord
from optimizer.reporting.data import ReportData, Status
from optimizer.reporting.markup import esc as _e, fig_block as _fig, num as _n
from optimizer.settings.config import QualityConfig

__all__ = ["QualityInfo", "QualityRow", "quality_figure", "quality_info", "quality_section", "trade_lines"]

_DEFAULT = QualityConfig()


class QualityRow(NamedTuple):
    number: int
    status: Status
    baseline: bool
    numerics: str  # what differs from the baseline's numerics ("" when nothing)
    mean_kld: float  # from the reference, per position (NaN when not graded)
    p99_kld: float
    same_top1: float
    ppl_ratio: float
    task_accuracy: float
    reference_task_accuracy: float
    mcnemar_p: float
    agreement: float  # greedy prefix agreement (information)
    probe_s: float
    is_reference: bool
    gated: bool
    violation: float  # the grade (0: within the limits; NaN: not graded)
    reasons: str  # why the gate rejected it
    skipped: str
    error: str
    spec_acceptance: float  # accepted / drafted tokens in the load test (NaN: no speculation)
    self_mean_kld: float  # this server against itself (the reference's: the study's noise floor)
    self_same_top1: float
    throughput: float = math.nan  # output tok/s (at the capacity in load.mode=capacity)
    capacity: float = math.nan  # load.mode=capacity: users (or req/s) it carried under the SLO
    stopped_early: bool = False  # its capacity search stopped early: throughput and capacity are lower bounds
    why: str = ""  # why the gate rejected it, in words (record.Quality.why_rejected)

    @property
    def rejected(self) -> bool:
        """The quality gate made this trial infeasible."""
        return self.gated and math.isfinite(self.violation) and self.violation > 0


class QualityInfo(NamedTuple):
    mode: str
    max_mean_kld: float
    max_p99_kld: float
    min_same_top1: float
    floor_multiple: float
    rows: list[QualityRow]  # trials that have a quality part, by number
    notes: list[str]  # plain-language statements (not measured, and why)
    winner: Optional[QualityRow]
    baseline: Optional[QualityRow]
    rate_control: bool = False  # load.mode=capacity searched a request rate (capacities in req/s), not users

    @property
    def measured(self) -> bool:
        return any(math.isfinite(r.mean_kld) or r.is_reference for r in self.rows)

    @property
    def floor(self) -> Optional[QualityRow]:
        """The reference trial, whose self-distance is the study's noise floor."""
        return next((r for r in self.rows if r.is_reference), None)


def quality_info(d: ReportData, trials: Sequence[FrozenTrial]) -> QualityInfo:
    """The quality section's data, from the report's data and the study's trials."""
    q: dict[str, Any] = d.summary.config.get("quality") or {}

    def limit(key: str) -> float:
        return float(q.get(key, getattr(_DEFAULT, key)))

    status = {i.number: i for i in d.trials}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        rec = TrialRecord.from_trial(t)
        p = rec.quality
        if p is None or t.number not in status:
            continue
        m = rec.measurement
        rows.append(QualityRow(t.number, status[t.number].status, status[t.number].baseline, p.numerics, p.mean_kld,
                               p.p99_kld, p.same_top1, p.ppl_ratio, p.task_accuracy, p.reference_task_accuracy,
                               p.mcnemar_p, p.agreement, p.probe_s, p.is_reference, p.gated, p.violation, p.reasons,
                               p.skipped, p.error, m.telemetry.spec_acceptance if m is not None else math.nan,
                               p.self_mean_kld, p.self_same_top1, status[t.number].throughput,
                               status[t.number].capacity, status[t.number].cap_limited_by.startswith("early stop"),
                               p.why_rejected))
    notes = []
    skipped = sorted({r.skipped for r in rows if r.skipped})
    if rows and not any(math.isfinite(r.mean_kld) or r.is_reference for r in rows):
        notes.append("Quality was not measured in this study"
                     + (f" ({', '.join(skipped)})" if skipped else "") + ": the quality gate was not applied"
                     + (". Random (dummy) weights have no answers to keep; run with real weights, e.g. "
                        "model=smollm2-135m-instruct, to measure it." if "dummy weights" in skipped else "."))
    by = {r.number: r for r in rows}
    best = by.get(d.summary.best.number) if d.summary.best else None
    base = by.get(d.summary.baseline.number) if d.summary.baseline else None
    if base is None:
        base = next((r for r in rows if r.is_reference), None)
    return QualityInfo(str(q.get("mode", _DEFAULT.mode.value)), limit("max_mean_kld"), limit("max_p99_kld"),
                       limit("min_same_top1"), limit("floor_multiple"), rows, notes, best, base,
                       d.capacity is not None and d.capacity.control == "rate")


def trade_lines(info: QualityInfo) -> list[str]:
    """The trade, one line per trial whose numerics differ from the baseline's: what it carried against
    the winner and what the gate said of its quality, so a faster config that the gate rejected is seen
    with its price."""
    w = info.winner
    out = []
    for r in info.rows:
        if not r.numerics or not math.isfinite(r.throughput):
            continue
        amount = f"{r.capacity:.3g} req/s" if info.rate_control else f"{r.capacity:,.0f} users"
        cap = (f" at {amount}" if math.isfinite(r.capacity) else "") + (
            " (its search stopped early: lower bounds)" if r.stopped_early else "")
        gain = r.throughput / w.throughput - 1 if w is not None and w.throughput > 0 else math.nan
        vs = (" (the winner)" if w is not None and w.number == r.number else
              f", {100 * gain:+.1f} % against the winner (trial {w.number})" if w is not None and gain == gain else "")
        if r.rejected:
            verdict = f"rejected by the quality gate: {r.why}"
            if gain > 0:
                verdict += f"; the gate gave up {100 * gain:.1f} % for quality"
        elif r.gated and math.isfinite(r.violation):
            verdict = "within the quality gate" + (f" (mean KLD {r.mean_kld:.2g}, same top-1 "
                                                   f"{100 * r.same_top1:.2f} %)" if math.isfinite(r.mean_kld) else "")
        else:
            verdict = f"quality not graded ({r.skipped or r.error or 'not gated'})"
        out.append(f"trial {r.number} ({r.numerics}): {r.throughput:,.0f} output tok/s{cap}{vs}; {verdict}")
    return out


def quality_figure(info: QualityInfo) -> Optional[go.Figure]:
    """Mean KLD and same-top-1 per graded trial (configured limits drawn), and speculative acceptance
    where any trial drafted; None when nothing was graded."""
    graded = [r for r in info.rows if math.isfinite(r.mean_kld)]
    if not graded:
        return None
    spec = [r for r in info.rows if math.isfinite(r.spec_acceptance)]
    n = 3 if spec else 2
    titles = ["mean KLD from the baseline (nats)", "same top-1 token as the baseline (%)"]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles + (["speculative acceptance"] if spec else []))
    x = [f"#{r.number}" for r in graded]
    colors = ["#e03131" if r.rejected else "#2a9d3f" if r.gated else "#868e96" for r in graded]
    hover = [_e(r.numerics or "baseline numerics") + (" (rejected)" if r.rejected else "") for r in graded]
    fig.add_trace(go.Bar(x=x, y=[r.mean_kld for r in graded], marker_color=colors, hovertext=hover,
                         name="mean KLD"), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=[100 * r.same_top1 for r in graded], marker_color=colors, hovertext=hover,
                         name="same top-1"), row=1, col=2)
    fig.add_hline(y=info.max_mean_kld, line_dash="dash", line_color="#e03131", row=1, col=1)
    fig.add_hline(y=100 * info.min_same_top1, line_dash="dash", line_color="#e03131", row=1, col=2)
    if spec:
        fig.add_trace(go.Bar(x=[f"#{r.number}" for r in spec], y=[r.spec_acceptance for r in spec],
                             marker_color="#1c7ed6", name="acceptance"), row=1, col=3)
    fig.update_layout(template="plotly_white", height=340, showlegend=False, margin={"t": 40, "b": 40})
    return fig


def _cells(r: Optional[QualityRow]) -> list[str]:
    if r is None:
        return ["n/a"] * 5
    return [_n(r.mean_kld, ".4f"), _n(r.p99_kld, ".3f"), _n(100 * r.same_top1, ".2f", " %"), _n(r.ppl_ratio, ".4f"),
            _n(100 * r.task_accuracy, ".0f", " %")]


def quality_section(info: QualityInfo, fig: Optional[go.Figure]) -> str:
    """The section's HTML (figures and tables; every string escaped)."""
    ref = info.floor
    floor = ("" if ref is None or not math.isfinite(ref.self_mean_kld) else
             f" The noise floor (the baseline's server against itself, another batch composition): mean KLD "
             f"{ref.self_mean_kld:.2g}, same top-1 {100 * ref.self_same_top1:.2f} %; each limit is at least "
             f"{info.floor_multiple:g}x the floor.")
    out = [f'<p class="sub">quality.mode={_e(info.mode)}: a trial whose numerics differ from the baseline\'s is '
           f"compared with it position by position over the quality set's passages (teacher-forced): mean KL "
           f"divergence at most {info.max_mean_kld:g} nats, its 99th percentile at most {info.max_p99_kld:g}, the "
           f"same most likely next token at {100 * info.min_same_top1:.0f} % of positions or more, and no task "
           f"accuracy lost beyond chance (McNemar).{_e(floor)} Red bars: rejected by the gate; grey: baseline "
           f"numerics.</p>"]
    out += [f'<p class="note">{_e(n)}</p>' for n in info.notes]
    if not info.rows:
        return "".join(out) + '<p class="empty">No trial recorded a quality probe.</p>'
    out.append(_fig("quality", fig, "No trial's quality was graded against a reference."))
    head = ("<tr><th></th><th>mean KLD</th><th>P99 KLD</th><th>same top-1</th><th>perplexity ratio</th>"
            "<th>task accuracy</th></tr>")
    rows = [("the winner" + (f" (trial {info.winner.number})" if info.winner else ""), info.winner),
            ("the baseline" + (f" (trial {info.baseline.number})" if info.baseline else ""), info.baseline)]
    out.append('<h3>The winner next to the baseline</h3><table class="trials"><thead>' + head + "</thead><tbody>"
               + "".join(f"<tr><td>{_e(k)}</td>" + "".join(f'<td class="num">{c}</td>' for c in _cells(r))
                         + "</tr>" for k, r in rows) + "</tbody></table>")
    trade = trade_lines(info)
    if trade:
        out.append("<h3>The trade: what each numerics change carried, and its quality</h3><ul>"
                   + "".join(f"<li>{_e(x)}</li>" for x in trade) + "</ul>")
    rejected = [r for r in info.rows if r.rejected]
    out.append("<h3>Rejected by the quality gate</h3>" + (
        "<p class=sub>None.</p>" if not rejected else "<ul>" + "".join(
            f"<li>trial {r.number} ({_e(r.numerics)}): {_e(r.why)}</li>" for r in rejected) + "</ul>"))
    head = ("<tr><th>#</th><th>status</th><th>numerics vs baseline</th><th>mean KLD</th><th>P99 KLD</th>"
            "<th>mean KLD / floor</th><th>same top-1</th><th>perplexity ratio</th><th>tasks</th><th>McNemar p</th><th>greedy agreement</th>"
            "<th>probe s</th><th>spec acceptance</th><th>gate</th></tr>")
    body = []
    floor_kld = ref.self_mean_kld if ref is not None and math.isfinite(ref.self_mean_kld) else math.nan
    for r in info.rows:
        gate = ("reference" if r.is_reference else "rejected" if r.rejected else "passed" if r.gated
                else "not gated") + (f": {r.skipped or r.error}" if r.skipped or r.error else "")
        cells = [str(r.number), _e(r.status.value), _e(r.numerics or "-"), *_cells(r)[:2],
                 _n(r.mean_kld / floor_kld if floor_kld > 0 else math.nan, ".1f", "x"), *_cells(r)[2:4],
                 _n(100 * r.task_accuracy, ".0f", " %") + (f" (baseline {100 * r.reference_task_accuracy:.0f} %)"
                                                           if math.isfinite(r.reference_task_accuracy) else ""),
                 _n(r.mcnemar_p, ".3f"), _n(r.agreement, ".3f"), _n(r.probe_s, ".1f"), _n(r.spec_acceptance, ".2f"),
                 _e(gate)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append('<h3>Every probed trial</h3><table class="trials"><thead>' + head + "</thead><tbody>"
               + "".join(body) + "</tbody></table>")
    return "\n".join(out)
