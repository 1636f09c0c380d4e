"""Capacity under the SLO (``load.mode=capacity``): the highest load a warm server carries while
the P99 stays under the limit, found by doubling then bisecting, with every probe kept.

Pure core: :mod:`~optimizer.capacity.search` (the bracketing and bisection state machine),
:mod:`~optimizer.capacity.judge` (a probe judged like a trial), :mod:`~optimizer.capacity.sizing`
(probe size, warm-up, seeds, default cap), :mod:`~optimizer.capacity.result` (typed records and
their JSON). I/O shell: :mod:`~optimizer.capacity.load_probe` (a probe through the load generator).

Usage against a running server::

    plan = SearchPlan.of(cfg.load.capacity, default_cap(cfg.load, max_num_seqs))
    probe = LoadProbe(ep, rs, cfg.load, cfg.slo, telemetry=lambda: TelemetrySampler(url))
    result = await find_capacity(probe, CapacitySearch(plan, cfg.slo), on_probe=print)
    json.dumps({"capacity": result.to_json()})
"""

from __future__ import annotations

from optimizer.capacity.judge import judge
from optimizer.capacity.load_probe import LoadProbe, ProbeRun, Telemetry
from optimizer.capacity.result import CapacityResult, LimitedBy, ProbeResult
from optimizer.capacity.search import CapacitySearch, SearchPlan, Step, find_capacity
from optimizer.capacity.sizing import default_cap, probe_load_config, probe_workload

__all__ = [
    "CapacityResult",
    "CapacitySearch",
    "LimitedBy",
    "LoadProbe",
    "ProbeResult",
    "ProbeRun",
    "SearchPlan",
    "Step",
    "Telemetry",
    "default_cap",
    "find_capacity",
    "judge",
    "probe_load_config",
    "probe_workload",
]
