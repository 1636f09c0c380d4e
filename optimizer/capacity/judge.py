"""One probe's measurements -> a judged :class:`ProbeResult`. Pure.

A probe is judged exactly as a trial is (:func:`optimizer.measures.objective.score`): the P99 of
``slo.metric`` (its upper confidence bound when ``slo.use_upper_bound``) against ``slo.p99_ms``,
and the error rate against ``slo.max_error_rate``. A run that stopped issuing requests because the
server could not be reached is ``aborted``: not a measurement of the config, so never a pass and
never the failure that bounds the capacity.
"""

from __future__ import annotations

import math
from typing import Mapping

from optimizer.settings.config import SloConfig
from optimizer.measures.metrics import LoadSummary
from optimizer.measures.objective import score
from optimizer.capacity.result import ProbeResult

__all__ = ["judge"]


def judge(load: float, summary: LoadSummary, slo: SloConfig, *, seed: int = 0, lengthened: bool = False,
          aborted: str = "", telemetry: Mapping[str, float] | None = None) -> ProbeResult:
    """Judge one probe at ``load`` from its load summary (and server telemetry, if scraped:
    ``srv_kv_usage_peak``, ``srv_preemptions`` as in :func:`optimizer.server.telemetry.server_stats`)."""
    outcome = score(summary, slo)
    d = summary.dist(slo.metric)
    judged = d.p99_high if slo.use_upper_bound else d.p99
    if slo.use_upper_bound and not judged == judged:
        judged = d.max  # as objective.score: too few samples for a bound, the maximum stands in
    constraints = {k: outcome.constraints[k] for k in ("slo", "errors")}
    if aborted:
        failed_on = "aborted"
    elif constraints["errors"] > 0:
        failed_on = "errors"
    elif constraints["slo"] > 0:
        failed_on = "slo"
    else:
        failed_on = ""
    tel = telemetry or {}
    return ProbeResult(
        load=float(load), passed=failed_on == "", failed_on=failed_on,
        output_tok_s=summary.output_tok_s, req_s=summary.req_s,
        p99_ms=d.p99, p99_low_ms=d.p99_low, p99_high_ms=d.p99_high, judged_p99_ms=judged,
        max_ms=d.max,
        ttft_p50_ms=summary.ttft.p50, ttft_p99_ms=summary.ttft.p99, itl_p50_ms=summary.itl.p50,
        itl_p99_ms=summary.itl.p99, e2e_p50_ms=summary.e2e.p50, e2e_p99_ms=summary.e2e.p99,
        n_requests=summary.n_requests, n_ok=summary.n_ok, error_rate=summary.error_rate,
        errors=dict(summary.errors), constraints=constraints,
        kv_usage_peak=float(tel.get("srv_kv_usage_peak", math.nan)),
        preemptions=float(tel.get("srv_preemptions", math.nan)),
        duration_s=summary.duration_s, seed=seed, lengthened=lengthened, aborted=aborted,
    )
