"""The quality probe inside a study: measured by the trial, judged by the loop.

- :func:`probe_server` (the trial, on its warm server after the load test): runs the probe of
  :mod:`optimizer.quality` and returns the raw :class:`~optimizer.record.Quality` part, or one
  that says why it was skipped (``quality.mode=off``; ``dummy weights``: random weights have no
  quality to keep, one warning per study) or why the probe failed.
- :func:`judge` (the loop, which holds the study): grades that part against the study's
  reference and adds the ``quality`` constraint.

The reference is the probe scores of the first measured trial whose numerics equal the baseline
config's (the baseline trial, enqueued first; a same-numerics trial if the baseline failed),
stored once per study as the study user attr ``quality_reference`` (JSON of the scores) and read
by every later trial. A trial whose numerics differ from the baseline's and that finishes while
no reference exists yet (another worker still runs the baseline) is recorded as not graded
(``error``: no reference yet), with its raw scores kept so it can be graded later; under
``quality.mode=gate`` its constraint is :data:`~optimizer.quality.UNMEASURED_VIOLATION`, since an
unverified config must not win.

With ``quality.mode=gate`` every trial gets the ``quality`` constraint (Optuna's samplers want the
same keys on every trial): the grade for a trial whose numerics differ from the baseline's
(:func:`~optimizer.quality.numerics_changes`), 0 otherwise. ``measure`` records the grade only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Mapping, Optional

import optuna

from optimizer.auth import bearer
from optimizer.choices import QualityMode
from optimizer.config import Config
from optimizer.errors import ConfigError
from optimizer.quality import (
    UNMEASURED_VIOLATION,
    ProbeError,
    QualityScores,
    compare,
    grade,
    load_set,
    numerics_changes,
    run_probe,
)
from optimizer.record import Quality, TrialRecord
from optimizer.record.quality import scores_from_json, scores_to_json

__all__ = ["DUMMY_WEIGHTS", "REFERENCE_ATTR", "judge", "probe_server", "read_reference"]

log = logging.getLogger(__name__)

REFERENCE_ATTR = "quality_reference"
DUMMY_WEIGHTS = "dummy weights"
_warned: set[str] = set()  # studies already warned about dummy weights (one warning per study)


def probe_server(cfg: Config, url: str, model: str, api_key: Optional[str]) -> Quality:
    """Run the quality probe on the live server at ``url`` serving ``model`` (the trial's, warm after
    its load test; ``model`` is the name the load test sent)."""
    if cfg.quality.mode == QualityMode.off:
        return Quality(skipped="quality.mode=off")
    random = "model.load_format=dummy" if cfg.model.load_format == "dummy" else \
        "model.generate=tiny" if cfg.model.generate == "tiny" else ""
    if random:
        if cfg.study.name not in _warned:
            _warned.add(cfg.study.name)
            log.warning("quality probe skipped in study %s: " + random + " serves random weights, which "
                        "have no answers to keep; the quality constraint is not applied and the report says quality "
                        "was not measured. Use real weights (e.g. model=smollm2-135m-instruct) to measure it, or set "
                        "quality.mode=off to silence this.", cfg.study.name)
        return Quality(skipped=DUMMY_WEIGHTS)
    try:
        qset = load_set(cfg.quality.dataset)
        scores = run_probe(url, model, qset, max_tokens=cfg.quality.max_tokens,
                           headers=bearer(api_key))
    except (ProbeError, ConfigError) as exc:
        log.warning("quality probe failed: %s", exc)
        return Quality(error=str(exc))
    return Quality.of(scores, None)


def read_reference(study: optuna.Study) -> Optional[QualityScores]:
    """The study's reference scores; None when none is stored (or it is unreadable)."""
    raw = study.user_attrs.get(REFERENCE_ATTR)
    if not isinstance(raw, str):
        return None
    try:
        return scores_from_json(raw)
    except (ValueError, KeyError, TypeError):
        log.warning("the study's %s attr is unreadable; the next baseline-numerics trial measures it again",
                    REFERENCE_ATTR)
        return None


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changes.items()))


def judge(study: optuna.Study, cfg: Config, rec: TrialRecord, params: Mapping[str, Any],
          baseline: Mapping[str, Any]) -> TrialRecord:
    """``rec`` with its quality part graded and, under ``quality.mode=gate``, the ``quality``
    constraint in its outcome. Stores the study's reference when this trial sets it."""
    q = rec.quality
    changes = numerics_changes(params, baseline, cfg.quality.numerics_params)
    gate = cfg.quality.mode == QualityMode.gate
    constraint = 0.0
    if q is not None and not q.skipped:
        q = replace(q, numerics=_describe(changes), gated=gate and bool(changes))
        reference, scores = read_reference(study), q.scores
        if scores is not None and reference is None and not changes:
            study.set_user_attr(REFERENCE_ATTR, scores_to_json(scores))
            reference = scores
            q = replace(q, is_reference=True)
            log.info("quality reference stored: perplexity %.3f over %d tokens, probe %.1f s", scores.ppl,
                     scores.n_tokens, scores.seconds)
        violation = UNMEASURED_VIOLATION
        if scores is not None and reference is None:
            q = replace(q, error="no quality reference yet (the baseline config was not measured before this trial)")
        elif scores is not None and reference is not None:
            try:
                verdict = compare(scores, reference)
            except ValueError as exc:
                q = replace(q, error=str(exc))
            else:
                q = Quality.of(scores, verdict, is_reference=q.is_reference, numerics=q.numerics, gated=q.gated)
                violation = grade(verdict, cfg.quality)
        q = replace(q, violation=violation)
        if q.gated:
            constraint = violation
        _log(q, cfg)
    out = replace(rec, quality=q)
    if gate and rec.outcome is not None:
        c = dict(rec.outcome.constraints) | {"quality": constraint}
        out = replace(out, outcome=replace(rec.outcome, constraints=c, feasible=all(v <= 0 for v in c.values())))
    return out


def _log(q: Quality, cfg: Config) -> None:
    if q.error:
        log.warning("quality not graded: %s", q.error)
    elif math.isfinite(q.agreement):
        log.info("quality: perplexity %.3f (%+.2f%% vs the reference), greedy agreement %.3f, exact %.0f%%, "
                 "probe %.1f s%s", q.ppl, 100 * q.ppl_increase, q.agreement, 100 * q.exact_match_rate, q.probe_s,
                 "" if not q.gated else
                 (" -> within the gate" if q.violation <= 0 else
                  f" -> REJECTED by the quality gate (max_ppl_increase {cfg.quality.max_ppl_increase}, "
                  f"min_agreement {cfg.quality.min_agreement}; violation {q.violation:.3f})"))
