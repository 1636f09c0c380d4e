"""The report page: one self-contained HTML file (plotly.js embedded once, nothing fetched).

Sections, top to bottom: summary, throughput against P99, history, importances, parallel
coordinates and slices, latency CDFs, server telemetry, time per phase, every trial. Each
figure is a ``<div class="plotly-graph-div">``; a figure that would be empty is replaced by a
sentence saying why (the charts and their sections: :mod:`optimizer.reporting.charts`). Every
user-controlled string is escaped with :func:`optimizer.reporting.markup.esc`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from optimizer.reporting.charts import charts_in
from optimizer.reporting.data import EngineRow, ReportData, Status, SummaryInfo, TrialInfo
from optimizer.reporting.markup import esc as _e, fig_block as _fig, num as _n, pct as _pct

__all__ = ["render_page"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212529;margin:0;background:#f8f9fa}
main{max-width:1320px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:24px;margin:8px 0 2px} h2{font-size:19px;margin:34px 0 6px;border-bottom:1px solid #dee2e6}
h3{font-size:15px;margin:14px 0 4px} .sub{color:#6c757d;margin:0 0 10px}
nav a{margin-right:14px;color:#1c7ed6;text-decoration:none}
.note{background:#fff3bf;border-left:4px solid #f08c00;padding:8px 12px;margin:8px 0}
.headline{font-size:16px;background:#fff;border-left:4px solid #2a9d3f;padding:10px 14px;margin:10px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:10px 16px;min-width:170px}
.card b{display:block;font-size:22px} .card span{color:#6c757d;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:12px}
.box{background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:8px 12px}
.box table td{padding:1px 8px 1px 0;vertical-align:top} .box table td:first-child{color:#6c757d}
pre{background:#212529;color:#f8f9fa;padding:10px 12px;border-radius:6px;overflow-x:auto;white-space:pre-wrap;
word-break:break-all;font-size:12.5px}
.fig{background:#fff;border:1px solid #dee2e6;border-radius:6px;margin:10px 0;padding:4px}
.empty{color:#6c757d;font-style:italic;background:#fff;border:1px dashed #ced4da;padding:14px;border-radius:6px}
table.trials{border-collapse:collapse;width:100%;background:#fff;font-size:12.5px}
table.trials th,table.trials td{border-bottom:1px solid #e9ecef;padding:4px 6px;text-align:left;vertical-align:top}
table.trials th{background:#f1f3f5;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.st{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:11.5px;white-space:nowrap}
tr.best td{background:#fff9db} .params{color:#495057;display:block;max-width:330px}
.fail{display:block;max-width:150px;word-break:break-word}
.detail{min-width:260px;max-width:440px;word-break:break-word}
"""
_STATUS_BG = {Status.FEASIBLE: "#2a9d3f", Status.INFEASIBLE: "#f08c00", Status.FAILED: "#868e96",
              Status.RULED_OUT: "#9775fa", Status.RUNNING: "#1c7ed6"}
SECTIONS = (("confirmation", "Confirmation"), ("summary", "Summary"), ("scatter", "Throughput vs P99"), ("history", "History"),
            ("importance", "Importance"), ("params", "Parameters"), ("latency", "Latency CDFs"),
            ("telemetry", "Telemetry"), ("time", "Time"), ("trials", "All trials"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def _setup(cfg: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    hw, model, wl, load = (cfg.get(k) or {} for k in ("hardware", "model", "workload", "load"))
    if hw.get("device") == "cpu":
        accel = f"CPU build (KV cache budget {_fmt(hw.get('cpu_kvcache_gib'))} GiB)"
    else:
        accel = f"{hw.get('gpu_count', 1)} × {hw.get('gpu_name', '?')} ({_fmt(hw.get('gpu_mem_gib'))} GiB each)"
    spread = float(wl.get("prompt_tokens_spread") or 0)
    prompt = _fmt(wl.get("prompt_tokens")) + (f" ± {spread:.0%}" if spread else "")
    if load.get("mode") == "rate":
        shape = f"open loop, {_fmt(load.get('request_rate'))} requests/s ({load.get('arrival', 'poisson')})"
    else:
        shape = f"closed loop, {_fmt(load.get('concurrency'))} concurrent requests"
    dur = float(load.get("duration_s") or 0)
    amount = f"{_fmt(dur)} s" if dur > 0 else f"{_fmt(load.get('num_requests'))} requests"
    out = {
        "Hardware": [("preset", _fmt(hw.get("name"))), ("accelerator", accel)],
        "Model": [("name", _fmt(model.get("name"))), ("path", _fmt(model.get("path")) or "(generated)"),
                  ("dtype", _fmt(model.get("dtype"))), ("max_model_len", _fmt(model.get("max_model_len")))],
        "Workload": [("name", _fmt(wl.get("name"))), ("endpoint", _fmt(wl.get("endpoint"))),
                     ("prompt tokens", prompt), ("output tokens", _fmt(wl.get("output_tokens")))]
        + ([("shared prefix tokens", _fmt(wl.get("shared_prefix_tokens")))] if wl.get("shared_prefix_tokens") else [])
        + ([("dataset", _fmt(wl.get("dataset")))] if wl.get("dataset") else []),
        "Load": [("shape", shape), ("per trial", f"{amount} after {_fmt(load.get('warmup_requests', 0))} warm-up")],
    }
    return {k: [(lbl, v) for lbl, v in rows if v] for k, rows in out.items() if cfg.get(k.lower())}


def _kv_table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _headline(s: SummaryInfo, search_pick: str = "") -> str:
    if s.best is None:
        return ""
    b, base = s.best, s.baseline
    what = ("The search's best feasible config (one measurement each, selected among many: biased upward; the "
            "recommendation is the Confirmation's, above)" if search_pick else "Best feasible config")
    text = (f"{what}: <b>trial {b.number}</b>, <b>{_n(b.throughput)} output tokens/s</b> at P99 "
            f"{_e(s.slo_metric)} {_n(b.p99, '.0f')} ms (SLO {_n(s.slo_ms, 'g')} ms, "
            f"margin {_n(s.margin * 100, '.0f')}%).")
    if base is not None and base.number == b.number:
        text += " That is the baseline (vLLM defaults): no tuned config beat it so far."
    elif base is not None and math.isfinite(s.gain):
        text += (f" That is <b>{_pct(s.gain)}</b> over the baseline (vLLM defaults, trial {base.number}: "
                 f"{_n(base.throughput)} tokens/s, P99 {_n(base.p99, '.0f')} ms).")
    if search_pick:
        text += f" Confirmation: {_e(search_pick[0].upper() + search_pick[1:])}."
    return f'<p class="headline">{text}</p>'


def _levers(s: SummaryInfo) -> str:
    """The main levers in words (:mod:`optimizer.reporting.levers`); '' before any measurement."""
    lv = s.levers
    if not lv.n_measured:
        return ""
    out = [f'<div id="levers"><h3>What drove the result ({lv.n_measured} measured trials)</h3>']
    if lv.throughput:
        out.append("<p class=sub>Output tokens/s, every measured trial, feasible or not:</p><ul>"
                   + "".join(f"<li>{_e(x.text())}</li>" for x in lv.throughput) + "</ul>")
    if lv.feasibility:
        out.append("<p class=sub>What separated the feasible trials from the infeasible ones:</p><ul>"
                   + "".join(f"<li>{_e(x.text())}</li>" for x in lv.feasibility) + "</ul>")
    if lv.reason:
        out.append(f"<p class=sub>{_e(lv.reason)}.</p>")
    out.append("<p class=sub>Each setting is compared again inside the groups of every other one, so a setting "
               "that only came along with a better one shrinks. With this few trials, read small groups as hints."
               "</p></div>")
    return "".join(out)


def _summary(s: SummaryInfo, yaml_text: str, yaml_name: str, capacity_line: str = "", search_pick: str = "") -> str:
    """``search_pick``: where a confirmation exists, its line on the search's best; every "best" here is
    then labelled as the search's (the recommendation is the confirmation's)."""
    searchs = "search's " if search_pick else ""
    out = [_headline(s, search_pick)] + ([f'<p class="headline" id="capacity-line">{_e(capacity_line)}</p>'] if capacity_line
                            else []) + [f'<p class="note">{_e(n)}</p>' for n in s.notes]
    out.append(_levers(s))
    b, base = s.best, s.baseline
    none = "none feasible" if s.counts.get("trials") else "no trials"
    cards = [(f"{searchs}best output tokens/s", _n(b.throughput) if b else none),
             (f"{searchs}best P99 {s.slo_metric} (ms)", _n(b.p99, ".0f") if b else "n/a"),
             ("gain over baseline", _pct(s.gain)), ("margin to the SLO", _n(s.margin * 100, ".0f", "%")),
             ("baseline output tokens/s", _n(base.throughput) if base else "n/a"),
             ("trials (feasible / total)", f"{s.counts.get('feasible', 0)} / {s.counts.get('trials', 0)}")]
    out.append('<div class="cards">' + "".join(f"<div class=card><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                              for k, v in cards) + "</div>")
    boxes = _setup(s.config)
    boxes["SLO"] = [("P99 " + s.slo_metric, f"≤ {_n(s.slo_ms, 'g')} ms"),
                    ("error rate", f"≤ {s.max_error_rate:.1%}")]
    if s.use_upper_bound:
        boxes["SLO"].append(("judged on", "the P99's upper confidence bound"))
    boxes["Trials"] = [(k, str(v)) for k, v in s.counts.items()]
    if s.vllm_version:
        boxes["Trials"].append(("vLLM", s.vllm_version))
    if s.engine:
        boxes["Trials"].append(("ranked on", s.engine))
    out.append('<div class="grid">' + "".join(f'<div class="box"><h3>{_e(k)}</h3>{_kv_table(v)}</div>'
                                             for k, v in boxes.items()) + "</div>")
    out.append(_engines(s))
    if b is not None:
        params = [(k, str(v)) for k, v in sorted(b.params.items())]
        extra = (" " + " ".join(s.extra_args)) if s.extra_args else ""
        title = (f"The search's best config (trial {b.number}; the recommendation is the Confirmation's)" if search_pick
                 else f"The best config (trial {b.number})")
        out.append(f"<h3>{_e(title)}</h3>" + f'<div class="grid"><div class="box">'
                   f"{_kv_table(params)}</div></div>")
        out.append(f"<h3>Serve it</h3><p class=sub>{_e(yaml_name)} is written beside this page "
                   f"(vLLM reads it with <code>--config</code>; flags given on the command line win).</p>")
        out.append(f"<pre>vllm serve --config {_e(yaml_name)}{_e(extra)}\n# or, where the `vllm` script does not work "
                   f"(vLLM's CPU build):\npython -m vllm.entrypoints.openai.api_server --config {_e(yaml_name)}"
                   f"{_e(extra)}</pre>")
        out.append(f"<h3>{_e(yaml_name)}{' (the confirmed recommendation)' if search_pick else ''}</h3>"
                   f"<pre>{_e(yaml_text)}</pre>")
        if s.trial_command:
            out.append(f"<h3>The command the trial's server ran</h3><p class=sub>python: the interpreter of the study's host; a generated model folder is shown under server.cache_dir.</p><pre>{_e(s.trial_command)}</pre>")
    return "\n".join(out)


def _engines(s: SummaryInfo) -> str:
    """The vLLM versions the study ran on, side by side, with the defaults each one's baseline resolved."""
    rows = s.engines
    if not rows or not (len(rows) > 1 or any(r.defaults or r.logged for r in rows)):
        return ""
    keys = sorted({k for r in rows for k in (*r.defaults, *r.logged)})

    def cell(r: EngineRow, k: str) -> str:
        v, logged = r.defaults.get(k), r.logged.get(k)
        text = "—" if v is None and logged is None else _fmt(v if v is not None else logged)
        if v is not None and logged is not None and logged != v:
            text += f" (server logged {_fmt(logged)})"
        return f"<td>{_e(text)}</td>"

    head = "".join(f"<th>{_e(r.label)}</th>" for r in rows)
    body = [f"<tr><td>trials (search / confirmation runs)</td>"
            + "".join(f"<td>{r.search_trials} / {r.confirmation_runs}</td>" for r in rows) + "</tr>",
            "<tr><td>baseline with recorded defaults</td>"
            + "".join(f"<td>{'—' if r.baseline is None else f'trial {r.baseline}'}</td>" for r in rows) + "</tr>"]
    body += [f"<tr><td>{_e(k)}</td>" + "".join(cell(r, k) for r in rows) + "</tr>" for k in keys]
    return ('<h3 id="engines">vLLM versions and their defaults</h3><p class=sub>vLLM\'s defaults as each installed '
            "version resolved them for the baseline's command (EngineArgs, the API server's own resolution; beside "
            "what its server logged at start-up), not a table of the hardware preset. Trials of different versions "
            "are never ranked together.</p>"
            f'<table class="trials"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _status(st: Status) -> str:
    return f'<span class="st" style="background:{_STATUS_BG[st]}">{_e(st.value)}</span>'


def _row(i: TrialInfo, best: Optional[int], capacity: bool = False) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(i.params.items()))
    kind = "baseline" if i.baseline else ("retry of #%d" % i.retry_of if i.retry_of is not None else "")
    cells = [str(i.number), _status(i.status), _e(kind), _n(i.throughput), *(_n(i.p99s[m], ".0f") for m in i.p99s),
             _n(i.error_rate * 100 if math.isfinite(i.error_rate) else math.nan, ".1f"), _n(i.wall_s, ".0f"),
             f'<span class="params">{_e(params)}</span>', f'<span class="fail">{_e(i.failure[:120])}</span>',
             f'<div class="detail">{_e(i.detail[:600])}</div>',
             _e(i.worker) + (f'<br><span class="params">GPU {_e(i.gpus)}</span>' if i.gpus else "")]
    if capacity:  # load.mode=capacity: the capacity and what limited it, after the throughput
        cells[4:4] = [_n(i.capacity, "g") + (f"<br><small>{_e(i.cap_interval)}</small>" if i.cap_interval else ""),
                      _e(i.cap_limited_by)]
    num_cols = {0, 3, 4, 6, 7, 8, 9, 10} if capacity else {0, 3, 4, 5, 6, 7, 8}
    tds = "".join(f'<td class="num">{c}</td>' if k in num_cols else f"<td>{c}</td>" for k, c in enumerate(cells))
    return f'<tr class="{"best" if i.number == best else ""}">{tds}</tr>'


def _table(d: ReportData) -> str:
    if not d.trials:
        return '<p class="empty">No trials.</p>'
    best = d.summary.best.number if d.summary.best else None
    head = ["#", "status", "kind", "output tok/s", "P99 TTFT ms", "P99 ITL ms", "P99 E2E ms", "errors %",
            "wall s", "parameters", "failure", "detail", "host / GPUs"]
    cap = d.capacity is not None
    if d.capacity is not None:
        head[4:4] = ["capacity (" + ("users" if d.capacity.control == "concurrency" else "req/s") + ")", "limited by"]
    return ('<table class="trials"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(_row(i, best, cap) for i in d.trials) + "</tbody></table>")


def render_page(d: ReportData, figs: dict[str, Optional[go.Figure]], *, yaml_text: str = "",
                yaml_name: str = "best.yaml", csv_name: str = "trials.csv", generated: str = "",
                quality_html: str = "", confirmation: str = "", search_pick: str = "") -> str:
    """The whole page. ``figs`` maps chart keys (:data:`optimizer.reporting.charts.CHARTS`, which also
    says each chart's section and what stands in for a missing one) to figures or ``None``; ``quality_html`` is the quality
    section (:mod:`optimizer.reporting.quality_section`), left out when empty; ``confirmation`` is the
    confirmation section's HTML (:mod:`optimizer.reporting.confirmation_section`), first when there is one;
    ``search_pick`` its line on the search's best (``ConfirmResult.search_pick_text``)."""
    s = d.summary

    def figs_of(section: str) -> str:  # the section's charts, in the table's order (optimizer.reporting.charts)
        return "".join(_fig(c.key, figs.get(c.key), c.empty(d)) for c in charts_in(section))

    body = [
        f"<h1>vLLM serving-config study: {_e(s.study_name)}</h1>",
        f'<p class="sub">{_e(generated)}</p>',
        "<nav>" + "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS if k != "confirmation" or confirmation)
        + "</nav>", confirmation,
        '<section id="summary"><h2>1. Summary</h2>' + _summary(s, yaml_text, yaml_name,
                                                               d.capacity.line if d.capacity else "", search_pick) + "</section>",
        *(['<section id="capacity"><h2>Capacity under the SLO</h2><p class=sub>Each config\'s capacity search on '
           "one warm server: the load doubled, then bisected, until a probe broke the P99 limit or the error limit."
           "</p>" + figs_of("capacity") + "</section>"]
          if d.capacity is not None else []),
        '<section id="scatter"><h2>2. Throughput against P99 latency</h2><p class=sub>Every trial. Up and to the '
        "left is better; right of the red line breaks the SLO. The dotted line joins the trials that no other "
        "beats on both axes. Hover a point for its parameters.</p>"
        + figs_of("scatter") + "</section>",
        '<section id="history"><h2>3. Optimization history</h2>'
        + figs_of("history") + "</section>",
        '<section id="importance"><h2>4. Parameter importance</h2><p class=sub>Optuna\'s PED-ANOVA over every '
        "measured trial: which parameter values the fastest trials share that the others do not, and which the "
        "feasible trials share that the infeasible ones do not. With few trials it also credits what the sampler "
        "happened to pair with the winners; the summary's levers are compared within groups for that reason.</p>"
        + figs_of("importance") + "</section>",
        '<section id="params"><h2>5. Parameters</h2>'
        + figs_of("params") + "</section>",
        '<section id="latency"><h2>6. Latency distributions</h2><p class=sub>Cumulative distributions of time to '
        "first token, inter-token latency and end-to-end latency, for the baseline, the best and a few others.</p>"
        + figs_of("latency") + "</section>",
        '<section id="telemetry"><h2>7. Server telemetry</h2>'
        + figs_of("telemetry") + "</section>",
        '<section id="time"><h2>8. Where the time went</h2>'
        + figs_of("time") + "</section>",
        '<section id="quality"><h2>Quality</h2>' + quality_html + "</section>" if quality_html else "",
        f'<section id="trials"><h2>9. All trials</h2><p class=sub>Also in {_e(csv_name)} beside this page, with '
        f"every recorded attribute.</p>" + _table(d) + "</section>",
    ]
    js = f'<script type="text/javascript">{get_plotlyjs()}</script>' if any(figs.values()) or confirmation else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>vLLM study report: {_e(s.study_name)}</title><style>{_CSS}</style>{js}</head>\n"
            f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")
