"""The report's confirmation section: what the fresh-server repeats say, and best.yaml from them.

Data (:func:`confirmation_view`, pure over FrozenTrials), figure (:func:`confirmation_figure`:
each confirmed config's repeats as dots, its median, the t-interval of its mean), HTML
(:func:`confirmation_html`) and the recommended ``best.yaml`` (:func:`confirmed_yaml`). The
recommendation itself is :func:`optimizer.confirmation.uplift.recommend`'s; nothing here re-decides it.
"""

from __future__ import annotations

import html
import math
from typing import Any, NamedTuple, Optional, Sequence

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from optimizer.record import TrialRecord
from optimizer.reporting.serving import serving_yaml
from optimizer.reporting.data import engine_label
from optimizer.confirmation.plan import confirmation_trials, confirmed, run_gpus
from optimizer.confirmation.confirm_result import ConfirmResult, of_engine, summarize_confirmation
from optimizer.confirmation.revalidation_result import Revalidation, revalidation
from optimizer.confirmation.uplift import DEFAULT_MARGIN, ConfigRuns, mean_interval

__all__ = ["ConfirmationView", "confirmation_figure", "confirmation_html", "confirmation_view", "confirmed_yaml"]


class ConfirmationView(NamedTuple):
    result: ConfirmResult
    confidence: float
    intervals: dict[str, tuple[float, float]]  # label -> t-interval of the mean of its repeats
    serve_config: dict[str, Any]  # the recommended config's `vllm serve --config` content ({} without one)
    extra_args: list[str]
    slo_metric: str
    slo_ms: float
    model: dict[str, Any] = {}  # the study's model config section (best.yaml names the model from it)
    engine_params: dict[str, Any] = {}  # the recommended config's engine parameters
    gpus: dict[str, tuple[str, ...]] = {}  # label -> the GPUs of each repeat ({} where none were pinned)
    engine: str = ""  # the vLLM (and torch build) of the runs, in words ("" unknown)
    revalidation: Optional[Revalidation] = None  # the runs are of another vLLM than the study's: the comparison


def confirmation_view(trials: Sequence[FrozenTrial], cfg: dict[str, Any]) -> Optional[ConfirmationView]:
    """None when the study has no confirmation runs. ``cfg`` is the study's stored config."""
    cc = (cfg.get("study") or {}).get("confirm") or {}
    conf = float(cc.get("confidence") or 0.95)
    margin = cc.get("margin")  # absent in studies from before the setting: its default
    res = summarize_confirmation(list(trials), conf, DEFAULT_MARGIN if margin is None else float(margin))
    if res is None:
        return None
    reval = revalidation(trials, conf)
    trials = of_engine(trials)  # the runs summarize_confirmation took: the newest run's vLLM version
    runs = [TrialRecord.from_trial(t) for t in confirmation_trials(trials)]
    version = next((r.vllm_version for r in reversed(runs) if r.vllm_version), "")
    serve: dict[str, Any] = {}
    params: dict[str, Any] = {}
    chosen = res.recommendation.chosen
    for t in confirmation_trials(trials):
        rec = TrialRecord.from_trial(t)
        if chosen is not None and t.state == TrialState.COMPLETE and rec.launch is not None \
                and rec.confirmation is not None and rec.confirmation.of == chosen.of:
            serve = dict(rec.launch.serve_config)
            params = dict(rec.setup.engine_params or {})
    hw, server, slo = (cfg.get(k) or {} for k in ("hardware", "server", "slo"))
    cands, rounds = confirmed(trials)  # the candidates res.runs was built from, in its order
    gpus = {r.label: g for r, g in zip(res.runs, run_gpus(cands, trials, rounds))}
    return ConfirmationView(res, conf, {r.label: mean_interval(r.values, conf) for r in res.runs}, serve,
                            [str(a) for a in list(hw.get("fixed_args") or []) + list(server.get("extra_args") or [])],
                            str(slo.get("metric", "e2e")), float(slo.get("p99_ms") or math.nan),
                            dict(cfg.get("model") or {}), params, gpus if any(any(g) for g in gpus.values()) else {},
                            engine_label(runs, version), reval)


def _n(v: float, fmt: str = ".1f") -> str:
    return format(v, fmt) if math.isfinite(v) else "n/a"


def confirmation_figure(v: ConfirmationView) -> go.Figure:
    fig = go.Figure()
    runs = v.result.runs
    labels = [r.label for r in runs]
    for ok, name, color, symbol in ((True, "repeat (feasible)", "#2a9d3f", "circle"),
                                    (False, "repeat (broke the SLO)", "#f08c00", "x")):
        xs, ys, text = [], [], []
        for r in runs:
            for k, (val, f) in enumerate(zip(r.values, r.feasible)):
                if f is ok and math.isfinite(val):
                    xs.append(r.label)
                    ys.append(val)
                    text.append(f"{r.label}, round {k + 1}: {val:.1f}")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=name, hovertext=text,
                                     hovertemplate="%{hovertext}<extra></extra>",
                                     marker=dict(color=color, size=11, symbol=symbol, opacity=0.8)))
    lows = [v.intervals[r.label][0] for r in runs]
    highs = [v.intervals[r.label][1] for r in runs]
    means = [(lo + hi) / 2 for lo, hi in zip(lows, highs)]
    fig.add_trace(go.Scatter(
        x=labels, y=means, mode="markers", name=f"{v.confidence:.0%} interval of the mean",
        marker=dict(color="rgba(0,0,0,0)", size=1),
        error_y=dict(type="data", symmetric=False,
                     array=[h - m if math.isfinite(h) else 0 for h, m in zip(highs, means)],
                     arrayminus=[m - lo if math.isfinite(lo) else 0 for lo, m in zip(lows, means)],
                     color="#495057", thickness=2, width=14), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=labels, y=[r.median for r in runs], mode="markers", name="median",
                             marker=dict(symbol="line-ew-open", size=34, line=dict(width=3, color="#e03131"))))
    fig.update_yaxes(title="value (output tokens/s)", rangemode="tozero")
    fig.update_layout(template="plotly_white", height=420, autosize=True,
                      title=dict(text="Confirmation: each config on fresh servers, held-out prompts", x=0.01),
                      legend=dict(orientation="h", yanchor="top", y=-0.15, x=0), margin=dict(l=60, r=30, t=70, b=110))
    return fig


def _row(r: ConfigRuns, v: ConfirmationView) -> str:
    lo, hi = v.intervals[r.label]
    where = v.gpus.get(r.label) or ("",) * len(r.values)
    reps = ", ".join("—" if f is None else f"{x:.1f}" + ("" if f else " ✗") + (f" (GPU {g})" if g else "")
                     for x, f, g in zip(r.values, r.feasible, where))
    chosen = v.result.recommendation.chosen
    mark = ' style="background:#fff9db"' if chosen is not None and chosen.label == r.label else ""
    if r.all_feasible:
        verdict_cell = "yes"
    elif r.n_infeasible:
        verdict_cell = f"no ({r.n_infeasible} of {len(r.feasible)} broke it)"
    else:
        verdict_cell = "not every repeat measured"
    return (f"<tr{mark}><td>{html.escape(r.label)}</td><td>{r.flags_changed}</td><td>{html.escape(reps)}</td>"
            f'<td class="num">{_n(r.median)}</td><td class="num">{_n(lo)}–{_n(hi)}</td>'
            f"<td>{verdict_cell}</td></tr>")


def verdict(v: ConfirmationView) -> str:
    """The section's headline, in words."""
    rec, res = v.result.recommendation, v.result
    if rec.chosen is None:
        return f"No config can be recommended: {rec.reason}"
    if not rec.beats_baseline:
        return (f"No config was shown to beat vLLM's defaults on fresh servers (which does not show them equivalent); "
                f"the recommendation is vLLM's defaults (best.yaml holds them). {rec.reason}")
    survived = {True: f"The study's pick (trial {res.study_pick}) survived the confirmation.",
                False: f"The study's pick (trial {res.study_pick}) did not survive the confirmation.",
                None: ""}[res.pick_survived]
    return (f"Recommended: {rec.chosen.label}, median {rec.chosen.median:.1f} over {len(rec.chosen.values)} fresh "
            f"servers, uplift over vLLM's defaults {rec.uplift.text()}. {survived} {rec.reason}")


def revalidation_html(r: Revalidation) -> str:
    """The study's version and the installed one side by side, config by config."""
    rows = []
    for c in r.changes:
        lo_t, hi_t = c.interval(c.then)
        lo_n, hi_n = c.interval(c.now.values)
        then = (f"{_n(_median(c.then))} ({_n(lo_t)}–{_n(hi_t)})" if c.then_source == "confirmation"
                else f"{_n(c.then[0])} (search, one run)")
        rows.append(f"<tr><td>{html.escape(c.label)}{' (defaults)' if c.baseline else ''}</td>"
                    f'<td class="num">{html.escape(then)}</td>'
                    f'<td class="num">{_n(c.now.median)} ({_n(lo_n)}–{_n(hi_n)})</td>'
                    f"<td>{html.escape(c.change.text())}</td></tr>")
    verdict_text = ("the study had no recommendation" if r.holds is None else
                    f"{r.pick_words} still holds on vLLM {r.now_version}"
                    if r.holds else f"{r.pick_words} does not hold on vLLM {r.now_version}; best.yaml is the new "
                    f"winner, marked as such")
    return (f'<h3 id="revalidation">Revalidated: vLLM {html.escape(r.then_version)} → vLLM '
            f"{html.escape(r.now_version)}</h3><p class=sub>Each config's median output tokens/s on each version "
            "(the interval of its mean in brackets) and its change, now over then, paired by round (a round's "
            "held-out prompts are the same on both). The baseline is each version's own defaults.</p>"
            f'<p class="headline">{html.escape(verdict_text)}.</p>'
            f'<table class="trials"><thead><tr><th>config</th><th>vLLM {html.escape(r.then_version)}</th>'
            f"<th>vLLM {html.escape(r.now_version)}</th><th>change</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>")


def _median(values: Sequence[float]) -> float:
    x = sorted(v for v in values if math.isfinite(v))
    return (x[(len(x) - 1) // 2] + x[len(x) // 2]) / 2 if x else math.nan


def confirmation_html(v: ConfirmationView, fig_div: str) -> str:
    res = v.result
    rows = "".join(_row(r, v) for r in res.runs)
    pick = "" if res.pick_survived is None else (
        f"<p>The study's pick (trial {res.study_pick}) {'survived' if res.pick_survived else 'did not survive'} "
        f"the confirmation.</p>")
    return ('<section id="confirmation"><h2>Confirmation on fresh servers</h2><p class=sub>The baseline and the top '
            f"configs, each started again {res.rounds} times on a fresh server, once per round in an order drawn at "
            "random per round, measured with the study's own load on held-out prompts (the same shape, another "
            "seed). The recommendation comes from these runs only, among the configs feasible in every repeat: a "
            "config beats vLLM's defaults when its uplift's interval lies above 1; of those, the largest uplift "
            "wins, unless one with fewer flags changed from the defaults is shown non-inferior to it within "
            f"{res.recommendation.margin:.0%} (study.confirm.margin); none: the defaults. The uplift is the "
            "geometric mean of the per-round ratios over the baseline; its interval comes from the block design "
            "(rounds x configs, log scale) and is simultaneous over every config compared with the defaults "
            f"(Bonferroni, {v.confidence:.0%} together), so picking the best does not shrink its coverage."
            + (" A repeat's GPUs (its server's CUDA_VISIBLE_DEVICES) follow its value; with several GPU groups the "
               "runs went to them at once, each config to another group every round." if v.gpus else "")
            + (f" These runs ran on {html.escape(v.engine)}." if v.engine else "") + "</p>"
            f'<p class="headline">{html.escape(verdict(v))}</p>{pick}'
            '<table class="trials"><thead><tr><th>config</th><th>flags changed</th><th>repeats (✗: broke the SLO)</th>'
            f"<th>median</th><th>{v.confidence:.0%} interval of the mean</th><th>feasible in every repeat</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>{fig_div}"
            + (revalidation_html(v.revalidation) if v.revalidation is not None else "") + "</section>")


def confirmed_yaml(v: ConfirmationView) -> str:
    """best.yaml from the confirmation ('' when nothing can be recommended), for the serving host
    (:func:`optimizer.reporting.serving.serving_yaml`)."""
    rec, res = v.result.recommendation, v.result
    if rec.chosen is None or not v.serve_config:
        return ""
    c = rec.chosen
    if rec.beats_baseline:
        head = [f"vLLM server config confirmed on {len(c.values)} fresh servers (held-out prompts): {c.label}, "
                f"median {c.median:.1f} output tokens/s, all repeats within the SLO (P99 {v.slo_metric} <= "
                f"{v.slo_ms:g} ms)", f"uplift over vLLM's defaults: {rec.uplift.text()}"]
    else:
        head = ["vLLM's defaults: no config was shown to beat them on fresh servers"
                + (f" (closest: {rec.top.label}, {rec.uplift.text()} over the defaults)"
                   if rec.top is not None and rec.top is not c else "")]
    if v.engine:
        head.append(f"measured on {v.engine}")
    if (r := v.revalidation) is not None and r.holds is not None:
        then = r.pick_words
        head.append(f"revalidated on vLLM {r.now_version}: {then} still holds" if r.holds else
                    f"NEW WINNER on vLLM {r.now_version}, not the study's recommendation: {then} does not hold "
                    f"on vLLM {r.now_version}")
    if res.pick_survived is False:
        head.append(f"the study's pick (trial {res.study_pick}) did not survive the confirmation")
    head.append("run: vllm serve --config best.yaml   (or: python -m vllm.entrypoints.openai.api_server --config "
                "best.yaml)")
    if v.extra_args:
        head.append(f"every server also got: {' '.join(v.extra_args)}")
    return serving_yaml(head, v.serve_config, v.model, v.engine_params)
