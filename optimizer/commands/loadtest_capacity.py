"""``python -m optimizer.loadtest endpoint=URL load.mode=capacity ...``: the capacity search
(:mod:`optimizer.capacity`) against a server that is already running.

Probes double from ``load.capacity.start`` then bisect (the same search as a ``load.mode=capacity``
trial), each judged on ``slo.metric``'s P99 against ``slo.p99_ms`` and the error limit. Each probe
is printed as it finishes, then the answer; ``out=FILE.json`` gets the top-level object
``capacity`` (``control``, ``value``, ``output_tok_s``, ``req_s``, ``p99_ms``, ``limited_by``,
``probes``, ...: :meth:`optimizer.capacity.CapacityResult.to_json`), with the capacity fitted over
every probe and its confidence interval (``estimate``, ``low``, ``high``, ``confidence``; ``high``
null: open above; ``flags``: a non-monotone curve or a cliff; :mod:`optimizer.capacity.curve`). The cap is
``load.capacity.max``, or, when 0, ``load.max_inflight`` (a running server's max-num-seqs is not
known from outside).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

from optimizer.capacity import CapacityResult, CapacitySearch, LoadProbe, ProbeResult, SearchPlan, default_cap
from optimizer.capacity import find_capacity
from optimizer.commands.loadtest_output import to_json
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.workload import RequestSet
from optimizer.server.telemetry import TelemetrySampler
from optimizer.settings.config import Config

__all__ = ["capacity_answer", "probe_line", "run_capacity"]


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if not x == x else f"{x:,.{digits}f}"


def _load(control: str, x: float) -> str:
    return f"{x:g} users" if control == "concurrency" else f"{x:g} req/s"


def probe_line(p: ProbeResult, control: str, metric: str) -> str:
    """One finished probe, for people."""
    verdict = "pass" if p.passed else f"FAIL ({p.failed_on})"
    return (f"probe {_load(control, p.load):>12}: {verdict:<14} P99 {metric.upper()} {_fmt(p.p99_ms)} ms "
            f"(judged {_fmt(p.judged_p99_ms)}), {_fmt(p.output_tok_s)} output tok/s, {_fmt(p.req_s, 2)} req/s, "
            f"{p.n_ok}/{p.n_requests} ok" + (", lengthened" if p.lengthened else "")
            + (f", aborted: {p.aborted}" if p.aborted else ""))


def capacity_answer(r: CapacityResult) -> str:
    """The search's answer in one or two lines."""
    if not r.feasible:
        return (f"capacity: none: even {_load(r.control, min((p.load for p in r.probes), default=0.0))} breaks the "
                f"limit (P99 {r.slo_metric.upper()} <= {r.slo_p99_ms:g} ms) [{r.limited_by.value}: {r.stop_reason}]")
    return (f"capacity: {_load(r.control, r.value)} at P99 {r.slo_metric.upper()} {_fmt(r.p99_ms)} ms <= "
            f"{r.slo_p99_ms:g} ms: {_fmt(r.output_tok_s)} output tok/s, {_fmt(r.req_s, 2)} req/s; limited by "
            f"{r.limited_by.value} ({r.stop_reason}); {len(r.probes)} probes in {_fmt(r.duration_s)} s"
            + (f"\nfitted over every probe: {r.interval_text()}" if r.interval_text() else "")
            + "".join(f"\nflag: {f}" for f in r.flags))


def run_capacity(cfg: Config, ep: Endpoint, rs: RequestSet, headers: Optional[dict[str, str]],
                 out: Optional[Path], runner: Callable = asyncio.run,
                 progress: Optional[Callable[[str, int], None]] = None) -> int:
    """Search, print, write ``out``; the exit code (0: a load passed, 1: none did or nothing was measured)."""
    c = cfg.load.capacity
    plan = SearchPlan.of(c, default_cap(cfg.load, None))
    print(f"capacity search on {ep.base_url} (model {ep.model}): from {_load(plan.control, plan.start)} up to "
          f"{_load(plan.control, plan.cap)}, P99 {cfg.slo.metric.upper()} <= {cfg.slo.limit_ms:g} ms, "
          f"errors <= {cfg.slo.max_error_rate:.1%}, resolution {plan.resolution:.0%}, at most {plan.max_probes} "
          f"probes" + (f" / {plan.max_s:g} s" if plan.max_s else ""), flush=True)
    probe = LoadProbe(ep, rs, cfg.load, cfg.slo, progress=progress,
                      telemetry=lambda: TelemetrySampler(ep.base_url, 1.0, headers))
    t_wall = time.time()
    result = runner(find_capacity(probe, CapacitySearch(plan, cfg.slo),
                                  on_probe=lambda p: print(probe_line(p, plan.control, cfg.slo.metric), flush=True)))
    print(capacity_answer(result))
    if out is not None:
        doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_wall)), "endpoint": ep.base_url,
               "model": ep.model, "workload": dataclasses.asdict(cfg.workload), "load": dataclasses.asdict(cfg.load),
               "slo": dataclasses.asdict(cfg.slo), "capacity": result.to_json()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(doc))
        print(f"wrote {out}")
    return 0 if result.feasible else 1
