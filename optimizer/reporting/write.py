"""Write a study's report folder: ``index.html``, ``best.yaml`` and ``trials.csv``.

``reports/<study>/best.yaml`` is the best feasible trial's config in the form vLLM's ``--config``
reads, for the host that will serve it (:mod:`optimizer.reporting.serving`).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Container, Optional, Sequence

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from optimizer.settings.config import Config
from optimizer.core.errors import StudyError
from optimizer.record import BLOB_KEYS
from optimizer.reporting.charts import ChartInputs, draw
from optimizer.reporting.data import ReportData, build_report_data, classify, study_config
from optimizer.reporting.html import render_page
from optimizer.reporting.markup import figure_div
from optimizer.reporting.serving import portable_attrs, serve_yaml_dict, serving_yaml
from optimizer.reporting.quality_section import quality_info, quality_section
from optimizer.reporting.confirmation_section import (confirmation_figure, confirmation_html,
                                                      confirmation_view, confirmed_yaml)
from optimizer.confirmation.plan import confirmation_trials, search_trials
from optimizer.study.results import params_as_set
from optimizer.study.storage import load_study

__all__ = ["best_yaml", "serve_yaml_dict", "trials_frame", "write_report", "write_study_report"]


def best_yaml(d: ReportData) -> str:
    """The text of best.yaml ('' without a feasible trial)."""
    s = d.summary
    if s.best is None or not s.serve_config:
        return ""
    head = [f"vLLM server config found by study {s.study_name}: trial {s.best.number}, "
            f"{s.best.throughput:.1f} output tokens/s at P99 {s.slo_metric} {s.best.p99:.0f} ms (SLO {s.slo_ms:g} ms)",
            "run: vllm serve --config best.yaml   (or: python -m vllm.entrypoints.openai.api_server --config best.yaml)"]
    if s.engine:
        head.insert(1, f"measured on {s.engine}; a tuned config holds for the vLLM it was measured on: "
                       f"`python -m optimizer.revalidate study.name={s.study_name}` re-measures it on another")
    if s.extra_args:
        head.append(f"every trial's server also got: {' '.join(s.extra_args)}")
    return serving_yaml(head, s.serve_config, s.config.get("model") or {}, s.engine_params)


def _cell(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trials_frame(trials: Sequence[FrozenTrial], config: Optional[dict[str, Any]] = None) -> pd.DataFrame:
    """One row per trial: state, status, value, params_*, constraint_*, then every user attr
    except the large JSON blobs; with the study's ``config``, the server command, serve config and
    log path without this machine's paths (:func:`~optimizer.reporting.serving.portable_attrs`)."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "status": classify(t).value, "value": t.value,
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
            "duration_s": t.duration.total_seconds() if t.duration else None}
        row |= {f"params_{k}": _cell(v) for k, v in sorted(params_as_set(t).items())}
        row |= {f"constraint_{k}": v for k, v in sorted((t.constraints or {}).items())}
        attrs = portable_attrs(t.user_attrs, config) if config else t.user_attrs
        row |= {k: _cell(v) for k, v in sorted(attrs.items()) if k not in BLOB_KEYS}
        rows.append(row)
    return pd.DataFrame(rows)


def write_study_report(study: optuna.Study, out_dir: Path, fallback_config: Optional[dict[str, Any]] = None) -> Path:
    """Write the report of ``study`` into ``out_dir``; returns the path of ``index.html``."""
    trials = study.get_trials(deepcopy=False)
    d = build_report_data(study.study_name, trials, study.user_attrs, fallback_config)
    cv = confirmation_view(trials, study_config(study.user_attrs, fallback_config))  # auto SLO: calibrated
    study = search_view(study)  # Optuna's own plots: the search's trials only
    qinfo = quality_info(d, trials)
    figs = draw(ChartInputs(d, study, qinfo))
    out_dir.mkdir(parents=True, exist_ok=True)
    yaml_text = confirmed_yaml(cv) if cv is not None else best_yaml(d)
    best_path = out_dir / "best.yaml"
    if yaml_text:
        best_path.write_text(yaml_text)
    elif best_path.exists():
        best_path.unlink()  # a stale recommendation would outlive the study that made it
    trials_frame(trials, d.summary.config).to_csv(out_dir / "trials.csv", index=False)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = render_page(d, figs, yaml_text=yaml_text, generated=f"Report generated {stamp}; "
                       f"{len(trials)} trial(s) in the study.",
                       quality_html=quality_section(qinfo, figs["quality"]) if qinfo.rows else "",
                       confirmation=confirmation_html(cv, figure_div("confirmation", confirmation_figure(cv)))
                       if cv else "", search_pick=(cv.result.search_pick_text() or "(no feasible search trial)")
                       if cv else "")
    index = out_dir / "index.html"
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index


class _SearchView(optuna.Study):
    """The same study as Optuna's plots read it (they read trials through ``get_trials`` only),
    without its confirmation runs and with each parameter as the server got it
    (:func:`~optimizer.study.results.params_as_set`). A view, not a copy: a copy through
    ``add_trials`` would refuse the baseline, whose vLLM-default params may lie outside a
    narrowed search range."""

    def get_trials(self, deepcopy: bool = True, states: Optional[Container[TrialState]] = None
                   ) -> list[FrozenTrial]:
        out = []
        for t in search_trials(super().get_trials(deepcopy=deepcopy, states=states)):
            shown = copy.copy(t)  # never the storage's cached trial
            shown.params = params_as_set(t)
            out.append(shown)
        return out


def search_view(study: optuna.Study) -> optuna.Study:
    """A view of ``study`` for Optuna's plots: no confirmation runs, parameters as set."""
    return _SearchView(study_name=study.study_name, storage=study._storage)


def write_report(cfg: Config) -> Path:
    """Write ``<cfg.reports_dir>/<study.name>/index.html`` (and best.yaml, trials.csv)."""
    study = load_study(cfg.study.storage, cfg.study.name)
    fallback = json.loads(json.dumps(asdict(cfg), default=str))
    return write_study_report(study, Path(cfg.reports_dir) / cfg.study.name, fallback)
