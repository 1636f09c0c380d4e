"""How big each probe is, which prompts it sends, and the default cap. Pure.

- Requests: at least ``load.num_requests``, and at least ``load.capacity.min_windows`` windows
  of the load (concurrency C: that many x C requests; rate R: that many seconds of arrivals), so
  that the measured phase is mostly steady state; ``load.p99_sizing`` then applies to each probe
  as to a trial (``auto`` raises the count to the fewest that bound the P99 from above).
- Warm-up: one concurrency window at every new level (C requests at concurrency C; with rate
  control about one second of arrivals, closed loop); the search's first probe also carries the
  server's warm-up (``load.warmup_requests``, if larger).
- Prompts: each probe run draws its prompts with its own workload seed (``workload.seed`` + run +
  1), so no probe finds the previous one's prompts in the prefix cache. A workload with shared
  prefixes keeps its seed: its prefixes are meant to be cached (and are drawn from the seed).
  A dataset workload sends its rows in file order whatever the seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from optimizer.settings.choices import LoadMode
from optimizer.settings.config import LoadConfig, WorkloadConfig

__all__ = ["default_cap", "probe_load_config", "probe_workload"]


def probe_load_config(load: LoadConfig, control: str, level: float, *, first: bool) -> LoadConfig:
    """The plain concurrency or rate load test that measures one probe at ``level``."""
    c = load.capacity
    if control == "concurrency":
        conc = max(1, int(level))
        n = max(load.num_requests, c.min_windows * conc)
        warm = max(conc, load.warmup_requests if first else 0)
        return dataclasses.replace(load, mode=LoadMode.concurrency, concurrency=conc, num_requests=n,
                                   warmup_requests=warm)
    per_s = max(1, math.ceil(level))
    n = max(load.num_requests, math.ceil(c.min_windows * level))
    warm = max(per_s, load.warmup_requests if first else 0)
    return dataclasses.replace(load, mode=LoadMode.rate, request_rate=float(level), num_requests=n, warmup_requests=warm,
                               concurrency=min(load.max_inflight, per_s))


def probe_workload(workload: WorkloadConfig, run: int) -> WorkloadConfig:
    """The workload of probe run ``run`` (0-based): its own seed unless prefixes are shared."""
    if workload.shared_prefix_tokens > 0:
        return workload
    return dataclasses.replace(workload, seed=workload.seed + run + 1)


def default_cap(load: LoadConfig, max_num_seqs: Optional[int] = None) -> float:
    """The highest load probed when ``load.capacity.max`` is 0: concurrency ``max_num_seqs x
    load.capacity.max_factor`` (beyond that the server only queues), else ``load.max_inflight``
    users or requests/s (what the client keeps open at most)."""
    c = load.capacity
    if c.max > 0:
        return c.max
    if c.control == "concurrency" and max_num_seqs:
        return float(max(c.start, min(load.max_inflight, math.floor(max_num_seqs * c.max_factor))))
    return float(max(c.start, load.max_inflight))
