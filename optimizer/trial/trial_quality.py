"""The quality probe inside a study: measured by the trial, judged by the loop.

- :func:`probe_server` (the trial, on its warm server after the load test): runs the probe of
  :mod:`optimizer.quality` and returns the raw :class:`~optimizer.record.Quality` part, or one
  that says why it was skipped (``quality.mode=off``; ``dummy weights``: random weights have no
  quality to keep, one warning per study) or why the probe failed.
- :func:`judge` (the loop, which holds the study): grades that part against the study's
  reference and adds the ``quality`` constraint.

The reference is the probe scores of the first measured trial whose numerics equal the baseline
config's (the baseline trial, enqueued first; a same-numerics trial if the baseline failed),
stored once per study as the study user attr ``quality_reference`` (JSON of the scores, with the
per-position top-k compactly packed) and read by every later trial; its server's distance from
itself under another batch composition is the study's noise floor (``quality_floor``), measured by
that trial only (:func:`measures_floor`: not by any trial once the reference is stored, nor on
resume). A trial
whose numerics differ from the baseline's and that finishes while no reference exists yet waits
while the baseline trial still runs on another worker, and is graded once it stored the
reference; if none comes (the baseline failed) it is recorded as not graded (``error``: no
reference yet), with its raw scores kept, and under ``quality.mode=gate`` its constraint is
:data:`~optimizer.quality.UNMEASURED_VIOLATION`, since an unverified config must not win.

With ``quality.mode=gate`` every trial gets the ``quality`` constraint (Optuna's samplers want the
same keys on every trial): the grade for a trial whose numerics differ from the baseline's
(:func:`~optimizer.quality.numerics_changes`), 0 otherwise. ``measure`` records the grade only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional

import optuna

from optimizer.core.auth import bearer
from optimizer.settings.choices import QualityMode
from optimizer.settings.config import Config
from optimizer.core.errors import ConfigError
from optimizer.quality import (
    UNMEASURED_VIOLATION,
    DistanceSummary,
    Floor,
    ProbeError,
    QualityScores,
    compare,
    evaluate,
    load_set,
    numerics_changes,
    run_probe,
    summarize,
)
from optimizer.quality.server_probe import probe_distributions
from optimizer.record import Quality, TrialRecord
from optimizer.record.quality import scores_from_json, scores_to_json

__all__ = ["DUMMY_WEIGHTS", "FLOOR_ATTR", "REFERENCE_ATTR", "judge", "measures_floor", "probe_server", "read_floor",
           "read_reference"]

log = logging.getLogger(__name__)

REFERENCE_ATTR = "quality_reference"
FLOOR_ATTR = "quality_floor"
DUMMY_WEIGHTS = "dummy weights"
_warned: set[str] = set()  # studies already warned about dummy weights (one warning per study)


def probe_server(cfg: Config, url: str, model: str, api_key: Optional[str], floor: bool = False) -> Quality:
    """Run the quality probe on the live server at ``url`` serving ``model`` (the trial's, warm after
    its load test; ``model`` is the name the load test sent). With ``floor`` (the trial may become
    the study's reference: :func:`measures_floor`), then its passages again all at once (another
    batch composition): the server's distance from itself, the study's noise floor. Without, the
    ``self_*`` figures stay NaN: the floor is the reference's, measured once per study."""
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
    q = cfg.quality
    headers = bearer(api_key)
    try:
        qset = load_set(q.dataset)
        scores = run_probe(url, model, qset, max_tokens=q.max_tokens, top_k=q.top_k, spec_top_n=q.spec_top_n,
                           task_max_tokens=q.task_max_tokens, headers=headers)
        if not floor:
            return Quality.of(scores, None)
        t0 = time.perf_counter()
        batched = probe_distributions(url, model, qset, top_k=q.top_k, concurrency=len(qset.texts), headers=headers)
        self_distance = summarize(batched, scores.dists)
    except (ProbeError, ConfigError, ValueError) as exc:
        log.warning("quality probe failed: %s", exc)
        return Quality(error=str(exc))
    log.info("quality: noise floor probe (the passages again, all %d in flight) %.1f s after the probe's %.1f s",
             len(qset.texts), time.perf_counter() - t0, scores.seconds)
    return Quality.of(scores, None, self_mean_kld=self_distance.mean_kld, self_p99_kld=self_distance.p99_kld,
                      self_same_top1=self_distance.same_top1)


def measures_floor(study: optuna.Study, cfg: Config, params: Mapping[str, Any], baseline: Mapping[str, Any]) -> bool:
    """Whether a trial of ``params`` about to start should measure the noise floor: only one that may
    become the study's reference (the baseline's numerics, no reference stored yet). The floor is a
    property of the reference under batching, stored with it (``quality_floor``) and reused by every
    later trial and on resume; measuring it on every trial cost each its passages again (~40 s on
    the 2-core CPU host)."""
    return (cfg.quality.mode != QualityMode.off and not numerics_changes(params, baseline, cfg.quality.numerics_params)
            and read_reference(study) is None)


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


def read_floor(study: optuna.Study) -> Floor:
    """The study's noise floor (the reference server against itself); an empty one if none is stored."""
    raw = study.user_attrs.get(FLOOR_ATTR)
    if not isinstance(raw, dict):
        return Floor()
    try:
        return Floor(float(raw["mean_kld"]), float(raw["p99_kld"]), float(raw["same_top1"]), int(raw["views"]))
    except (KeyError, TypeError, ValueError):
        return Floor()


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changes.items()))


def _await_reference(study: optuna.Study, baseline_running: Callable[[], bool], timeout_s: float,
                     poll_s: float = 5.0) -> Optional[QualityScores]:
    """The reference, waiting while a baseline trial runs on another worker (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ref = read_reference(study)
        if ref is not None or not baseline_running() or time.monotonic() >= deadline:
            return ref
        time.sleep(poll_s)


def judge(study: optuna.Study, cfg: Config, rec: TrialRecord, params: Mapping[str, Any],
          baseline: Mapping[str, Any], baseline_running: Optional[Callable[[], bool]] = None,
          wait_s: float = 3600.0, poll_s: float = 5.0) -> TrialRecord:
    """``rec`` with its quality part graded and, under ``quality.mode=gate``, the ``quality``
    constraint in its outcome. Stores the study's reference (and its noise floor) when this trial
    sets it. A trial whose numerics differ and that finds no reference yet waits, at most ``wait_s``,
    while ``baseline_running()`` says a baseline trial is still measuring it on another worker, and
    is graded once the reference exists."""
    q = rec.quality
    changes = numerics_changes(params, baseline, cfg.quality.numerics_params)
    gate = cfg.quality.mode == QualityMode.gate
    constraint = 0.0
    if q is not None and not q.skipped:
        q = replace(q, numerics=_describe(changes), gated=gate and bool(changes))
        reference, scores = read_reference(study), q.scores
        if scores is not None and reference is None and not changes:
            study.set_user_attr(REFERENCE_ATTR, scores_to_json(scores))
            floor = Floor.of([DistanceSummary(0, q.self_mean_kld, q.self_p99_kld, q.self_p99_kld, q.self_same_top1,
                                              1.0, math.nan, 0)])
            study.set_user_attr(FLOOR_ATTR, floor.as_dict())
            reference = scores
            q = replace(q, is_reference=True)
            log.info("quality reference stored: perplexity %.3f over %d tokens, task accuracy %.3f, noise floor "
                     "(another batch composition) mean KLD %.2g, P99 %.2g, same top-1 %.2f%%; probe %.1f s",
                     scores.ppl, scores.n_tokens, scores.task_accuracy, floor.mean_kld, floor.p99_kld,
                     100 * floor.same_top1, scores.seconds)
        if scores is not None and reference is None and changes and baseline_running is not None:
            log.info("quality: waiting for the baseline trial (another worker) to measure the reference")
            reference = _await_reference(study, baseline_running, wait_s, poll_s)
        violation = UNMEASURED_VIOLATION
        if scores is not None and reference is None:
            q = replace(q, error="no quality reference yet (the baseline config was not measured before this trial)")
        elif scores is not None and reference is not None:
            try:
                graded = evaluate(compare(scores, reference), cfg.quality, read_floor(study),
                                  speculative=_speculative(params))
            except ValueError as exc:
                q = replace(q, error=str(exc))
            else:
                q = Quality.of(scores, graded, is_reference=q.is_reference, numerics=q.numerics, gated=q.gated,
                               self_mean_kld=q.self_mean_kld, self_p99_kld=q.self_p99_kld,
                               self_same_top1=q.self_same_top1)
                violation = graded.violation
        q = replace(q, violation=violation)
        if q.gated:
            constraint = violation
        _log(q)
    out = replace(rec, quality=q)
    if gate and rec.outcome is not None:
        c = dict(rec.outcome.constraints) | {"quality": constraint}
        out = replace(out, outcome=replace(rec.outcome, constraints=c, feasible=all(v <= 0 for v in c.values())))
    return out


def _speculative(params: Mapping[str, Any]) -> bool:
    return params.get("speculative") not in (None, "off")


def _log(q: Quality) -> None:
    if q.error:
        log.warning("quality not graded: %s", q.error)
    elif math.isfinite(q.mean_kld):
        log.info("quality: mean KLD %.3g, P99 KLD %.3g, same top-1 %.2f%%, perplexity ratio %.4f, tasks %.3f "
                 "(reference %.3f, McNemar p %.3g), probe %.1f s%s", q.mean_kld, q.p99_kld, 100 * q.same_top1,
                 q.ppl_ratio, q.task_accuracy, q.reference_task_accuracy, q.mcnemar_p, q.probe_s,
                 "" if not q.gated else
                 (" -> within the gate" if q.violation <= 0 else
                  f" -> REJECTED by the quality gate ({q.reasons}; violation {q.violation:.3f})"))
