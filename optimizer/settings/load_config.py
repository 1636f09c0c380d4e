"""``workload`` and ``load``: the request set of every trial, and how it is sent; their checks.

Part of the one typed configuration (:mod:`optimizer.settings.config` assembles it); Hydra composes the
YAML against these schemas, and :func:`validate_workload` / :func:`validate_load` check what the
types cannot say. Each default is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from optimizer.core.errors import ConfigError
from optimizer.settings.choices import Arrival, CapacityControl, CapacityValue, Endpoint, LoadMode, P99Sizing
from optimizer.settings.knobs import Frozen

__all__ = ["CapacityConfig", "LoadConfig", "WorkloadConfig", "validate_load", "validate_workload"]


@dataclass
class WorkloadConfig(Frozen):
    """The fixed, seeded request set of every trial."""

    name: str = MISSING
    endpoint: Endpoint = Endpoint.completions
    prompt_tokens: int = 256
    prompt_tokens_spread: float = 0.0  # uniform +-fraction around prompt_tokens
    output_tokens: int = 64
    output_tokens_spread: float = 0.0
    shared_prefix_tokens: int = 0  # tokens every prompt starts with (prefix caching)
    num_prefixes: int = 1
    dataset: str = ""  # JSONL file: {"prompt": ..., "max_tokens": ...} per line, or ShareGPT JSON
    seed: int = 0
    # tokenizer.json (or a folder holding one) for exact-length chat prompts and ShareGPT reply
    # lengths; empty: model.path's, if it has one; none: chat prompt lengths are approximate
    tokenizer: str = ""
    # sampling, sent in every request body exactly as given (and passed to `vllm bench serve` by the
    # fidelity benchmark): greedy by default, the one deterministic choice (docs/load-generator.md)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k (vLLM's neutral value; not sent)
    sampling_seed: Optional[int] = None  # per-request sampling seed; None: not sent
    ignore_eos: bool = True  # exact output lengths: generate max_tokens whatever the model says


@dataclass
class CapacityConfig(Frozen):
    """``load.mode=capacity``: the highest load that meets the SLO (optimizer/capacity/).

    Probes double from ``start`` until one breaks the SLO or the error limit (or reaches ``max``),
    then bisect between the last pass and the first failure until they are ``resolution`` apart
    (concurrency: max(1, resolution x the passing load) users; rate: resolution x the passing rate)."""

    control: CapacityControl = CapacityControl.concurrency  # closed loop (users) | rate (open loop, requests/s)
    start: float = 1.0  # the first (lowest) probed load; failing there: infeasible
    max: float = 0.0  # highest load probed; 0: max_num_seqs x max_factor (study), load.max_inflight (loadtest)
    max_factor: float = 2.0  # the derived cap, in units of the server's max_num_seqs
    resolution: float = 0.05  # bisection stops when pass and failure are this close (relative)
    max_probes: int = 16  # probe runs per search (a lengthened probe counts twice)
    max_s: float = 0.0  # no new probe once the search has run this long; 0: no limit
    min_windows: int = 4  # measured requests per probe >= this x the concurrency
    lengthen: float = 2.0  # a probe whose P99 interval straddles the limit: this many times its requests
    value: CapacityValue = CapacityValue.output_tok_s  # the trial's value at the capacity
    # stop a trial's search once its upper confidence bound on its value is below the incumbent's lower
    # bound (optimizer/capacity/search.py, rule 6); its value is then what it carried so far, a lower bound
    early_stop: bool = True
    # after the bisection: probe on, one load at a time where the pass/fail verdict is least certain, until
    # the fitted capacity's interval is at most this share of the capacity wide (or max_probes / max_s);
    # 0: off (the bisection's bracket ends the search)
    precision: float = 0.0


@dataclass
class LoadConfig(Frozen):
    """How the request set is sent."""

    mode: LoadMode = LoadMode.concurrency  # capacity: search the highest load that meets the SLO (load.capacity)
    concurrency: int = 8
    request_rate: float = 4.0  # requests/s, open loop
    arrival: Arrival = Arrival.poisson
    num_requests: int = 64
    duration_s: float = 0.0  # >0: stop issuing after this many seconds instead of a count
    warmup_requests: int = 8
    request_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0  # no byte for this long in a stream: the request fails
    max_inflight: int = 512  # open loop: cap on concurrently open requests
    p99_confidence: float = 0.95
    # too few requests to bound the P99 from above at p99_confidence: warn (and report the CI),
    # auto (raise num_requests to the minimum), or off
    p99_sizing: P99Sizing = P99Sizing.warn
    # stop issuing after this many consecutive connect/stall failures (the server is gone or hung);
    # unsent requests are recorded as `aborted`. 0: max(8, 2 x concurrency)
    abort_after_failures: int = 0
    # load-generator processes, each with its own event loop and connections, sharing one seeded
    # schedule; 0: sized from the load and this host's cores (optimizer/loadgen/pool.py)
    client_workers: int = 0
    # warn when the busiest client process uses more than this share of one core during the run
    client_cpu_warn: float = 0.8
    # warn when a client process waited for a CPU (run queue) more than this share of the run: it
    # read the streams late (optimizer/loadgen/schedwait.py)
    client_wait_warn: float = 0.1
    capacity: CapacityConfig = field(default_factory=CapacityConfig)


def _fail(key: str, value: object, what: str) -> None:
    raise ConfigError(f"{key}={value!r}: {what}")


def validate_workload(w: WorkloadConfig) -> None:
    """Ranges of ``workload`` the types cannot express. Raises ConfigError naming the key."""
    if w.prompt_tokens < 1 or w.output_tokens < 1:
        _fail("workload.prompt_tokens/output_tokens", (w.prompt_tokens, w.output_tokens), "must be >= 1")
    if not 0 <= w.prompt_tokens_spread < 1 or not 0 <= w.output_tokens_spread < 1:
        _fail("workload.*_spread", (w.prompt_tokens_spread, w.output_tokens_spread), "must be in [0, 1)")
    if not w.temperature >= 0:
        _fail("workload.temperature", w.temperature, "must be >= 0 (0: greedy)")
    if not 0 < w.top_p <= 1:
        _fail("workload.top_p", w.top_p, "must be in (0, 1] (1: no nucleus cut)")
    if w.top_k == 0 or w.top_k < -1:
        _fail("workload.top_k", w.top_k, "must be >= 1, or -1 for no top-k")


def validate_load(ld: LoadConfig) -> None:
    """Ranges of ``load`` the types cannot express. Raises ConfigError naming the key."""
    _validate_capacity(ld.capacity)
    if ld.concurrency < 1:
        _fail("load.concurrency", ld.concurrency, "must be >= 1")
    if not ld.request_rate > 0:
        _fail("load.request_rate", ld.request_rate, "must be > 0 requests/s")
    if ld.num_requests < 1 and ld.duration_s <= 0:
        _fail("load.num_requests", ld.num_requests, "must be >= 1 (or set load.duration_s)")
    if ld.warmup_requests < 0:
        _fail("load.warmup_requests", ld.warmup_requests, "must be >= 0")
    if ld.request_timeout_s <= 0 or ld.stall_timeout_s <= 0:
        _fail("load.request_timeout_s", ld.request_timeout_s, "timeouts must be > 0 s")
    if not 0 < ld.p99_confidence < 1:
        _fail("load.p99_confidence", ld.p99_confidence, "must be in (0, 1)")
    if ld.abort_after_failures < 0:
        _fail("load.abort_after_failures", ld.abort_after_failures, "must be >= 0 (0: automatic)")
    if ld.max_inflight < 1:
        _fail("load.max_inflight", ld.max_inflight, "must be >= 1")
    if ld.client_workers < 0:
        _fail("load.client_workers", ld.client_workers, "must be >= 1 (client processes), or 0 for automatic")
    if not ld.client_cpu_warn > 0:
        _fail("load.client_cpu_warn", ld.client_cpu_warn, "a share of one core, > 0 (default 0.8)")
    if not ld.client_wait_warn > 0:
        _fail("load.client_wait_warn", ld.client_wait_warn, "a share of the run's wall time, > 0 (default 0.1)")


def _validate_capacity(c: CapacityConfig) -> None:
    if not c.start > 0 or (c.control == "concurrency" and c.start != int(c.start)):
        _fail("load.capacity.start", c.start, "must be > 0 (a whole number of users with control=concurrency)")
    if c.max < 0 or (c.max and c.max < c.start):
        _fail("load.capacity.max", c.max, f"must be >= load.capacity.start={c.start:g}, or 0 (derived)")
    if not c.max_factor > 0:
        _fail("load.capacity.max_factor", c.max_factor, "must be > 0")
    if not 0 < c.resolution < 1:
        _fail("load.capacity.resolution", c.resolution, "must be in (0, 1), e.g. 0.05 for 5 %")
    if c.precision < 0:
        _fail("load.capacity.precision", c.precision, "must be >= 0 (0: off), e.g. 0.2 for an interval 20 % wide")
    if c.max_probes < 1:
        _fail("load.capacity.max_probes", c.max_probes, "must be >= 1")
    if c.max_s < 0:
        _fail("load.capacity.max_s", c.max_s, "must be >= 0 s (0: no limit)")
    if c.min_windows < 1:
        _fail("load.capacity.min_windows", c.min_windows, "must be >= 1")
    if not c.lengthen >= 1:
        _fail("load.capacity.lengthen", c.lengthen, "must be >= 1 (1: never lengthen)")
