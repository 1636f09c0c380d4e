"""``python -m optimizer.loadtest endpoint=URL [overrides]``: the study's load test, against a
server that is already running. A thin CLI: the server is probed through :mod:`optimizer.commands.live_server`,
the load is :mod:`optimizer.loadgen`'s, the table and the JSON are :mod:`optimizer.commands.loadtest_output`'s.

The same request set, warm-up, load and summaries as a trial of ``optimizer.run`` (same
``workload``/``load`` config keys and groups), without starting or stopping anything. Prints a
metrics table; ``out=FILE.json`` also writes every number, the config it ran with, the P99
confidence intervals, the client's own CPU use and a token count cross-check against the
server's ``/metrics`` counters.

Examples::

    python -m optimizer.loadtest endpoint=http://127.0.0.1:8000
    python -m optimizer.loadtest endpoint=http://127.0.0.1:8000 workload=chat-short load.concurrency=32 out=r.json
    python -m optimizer.loadtest endpoint=http://127.0.0.1:8000 load.mode=rate load.request_rate=20 \\
        load.duration_s=60 load.p99_sizing=auto
    python -m optimizer.loadtest endpoint=http://127.0.0.1:8000 load.mode=capacity slo.metric=e2e \\
        slo.p99_ms=2000 out=cap.json
    python -m optimizer.loadtest endpoint=http://gpu-box:8000 model_name=meta-llama/Llama-3.1-8B-Instruct
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from optimizer.commands.cli import compose, show_config
from optimizer.commands.live_server import counters, reset_prefix_cache, served_model, token_check
from optimizer.commands.loadtest_capacity import run_capacity
from optimizer.commands.loadtest_output import request_record, summary_table, to_json
from optimizer.core.auth import bearer
from optimizer.core.entry import main_wrapper, setup_logging
from optimizer.core.errors import ConfigError
from optimizer.core.stats import min_samples_for_upper_bound
from optimizer.loadgen.client import Endpoint
from optimizer.loadgen.runner import LoadRun, run_load
from optimizer.loadgen.workload import RequestSet
from optimizer.measures.metrics import LoadSummary, summarize
from optimizer.record import summary_to_attrs
from optimizer.settings.config import Config

__all__ = ["main"]

log = logging.getLogger("optimizer")

USAGE = __doc__ + """
Keys of this command (besides the study's config):
  endpoint=URL       the server's base URL (required), e.g. http://127.0.0.1:8000
  out=FILE.json      write the results as JSON (default: print only)
  model_name=NAME    the model name to send (default: the config's model if the server serves it,
                     else the one model GET /v1/models lists)
  records=true       also write every request's record (timings, tokens, error) into out
  uvloop=true        run the client on uvloop (default: asyncio's loop, as the study does)
Workload and load keys (see conf/config.yaml, conf/workload/*.yaml, optimizer/settings/config.py):
  workload=<file in conf/workload>, workload.{endpoint,prompt_tokens,output_tokens,*_spread,
  shared_prefix_tokens,num_prefixes,dataset,tokenizer,seed}, load.{mode,concurrency,request_rate,
  arrival,num_requests,duration_s,warmup_requests,request_timeout_s,stall_timeout_s,max_inflight,
  p99_confidence,p99_sizing,abort_after_failures}. server.api_key_env names an env var holding a key.
Exit codes: 0 measured (request errors are results, listed), 1 nothing succeeded or the endpoint
is unreachable, 2 bad input, 130 Ctrl-C.
"""

_OWN_KEYS = ("endpoint", "out", "model_name", "records", "uvloop")


def _split_own(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    own: dict[str, str] = {}
    rest: list[str] = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+") in _OWN_KEYS:
            own[key.lstrip("+")] = value
        else:
            rest.append(o)
    return own, rest


def _bool(own: dict[str, str], key: str) -> bool:
    v = own.get(key, "false").lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={own[key]!r}: use true or false")
    return v in ("true", "1", "yes")


def _tokenizer_for(cfg: Config, model: str) -> Optional[Path]:
    """A local tokenizer for exact chat prompt lengths, when the served model is the config's."""
    if cfg.workload.tokenizer or model not in (cfg.model.served_name, cfg.model.name):
        return None
    from optimizer.model.tiny import generated_dir

    for d in ([Path(cfg.model.path).expanduser()] if cfg.model.path else []) + (
            [generated_dir(cfg.server.cache_dir, cfg.model.name)] if cfg.model.generate else []):
        if (d / "tokenizer.json").is_file():
            return d
    return None


def _body(overrides: list[str], debug: bool) -> int:
    own, rest = _split_own(overrides)
    setup_logging(None, debug)
    if not own.get("endpoint"):
        raise ConfigError("endpoint=URL is required, e.g. endpoint=http://127.0.0.1:8000 (see --help)")
    cfg = compose(rest)
    if cfg.load.mode == "capacity" and cfg.slo.is_auto:
        raise ConfigError("slo.p99_ms=auto: a study calibrates it from its baseline trial, and a load test of one "
                          "endpoint has none: give load.mode=capacity a limit in ms, e.g. slo.p99_ms=2000")
    base = own["endpoint"].rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint={base!r}: give a URL such as http://127.0.0.1:8000")
    records, use_uvloop = _bool(own, "records"), _bool(own, "uvloop")
    out = Path(own["out"]) if own.get("out") else None
    api_key = os.environ.get(cfg.server.api_key_env) if cfg.server.api_key_env else None
    headers = bearer(api_key)
    model = own.get("model_name") or served_model(base, cfg.model.served_name or cfg.model.name, headers)
    ep = Endpoint(base, model, cfg.workload.endpoint, api_key, cfg.load.request_timeout_s, cfg.load.stall_timeout_s)
    rs = RequestSet.build(cfg.workload, cfg.model, _tokenizer_for(cfg, model))
    if cfg.load.mode == "capacity":  # the search (optimizer/commands/loadtest_capacity.py)
        if records:
            raise ConfigError("records=true: not available with load.mode=capacity (each probe's summary is in "
                              "out's capacity.probes); drop records=true or run one load level")
        try:
            return run_capacity(cfg, ep, rs, headers, out, _loop_runner(use_uvloop))
        except KeyboardInterrupt:
            print("interrupted: nothing was written", file=sys.stderr)
            return 130
    try:
        m = _measure(cfg, ep, rs, headers, use_uvloop)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    summary = summarize(m.run.results, m.run.duration_s, cfg.load.p99_confidence)
    tokens = token_check(m.run, m.before, m.after)
    _print_results(cfg, m.run, summary, tokens)
    if out is not None:
        _write_json(out, cfg, ep, rs, m, summary, tokens, records=records, use_uvloop=use_uvloop)
    return 0 if summary.n_ok > 0 else 1


def _loop_runner(use_uvloop: bool) -> Any:
    """``asyncio.run``, or ``uvloop.run`` with uvloop=true."""
    if not use_uvloop:
        return asyncio.run
    import uvloop

    return uvloop.run


@dataclasses.dataclass(frozen=True)
class _Measured:
    """One load run against the endpoint, with the server's counters around it."""

    run: LoadRun
    before: dict[str, float]  # the server's /metrics counters before the load
    after: dict[str, float]  # ... and after it
    cache_reset: bool  # the server's prefix cache was emptied first
    t_wall: float  # when the load began (epoch s)


def _measure(cfg: Config, ep: Endpoint, rs: RequestSet, headers: dict[str, str], use_uvloop: bool) -> _Measured:
    """Warm-up and load at the configured level, logging progress every 10 s."""
    log.info("load test of %s (model %s): workload %s on /v1/%s, %s", ep.base_url, ep.model, cfg.workload.name,
             "chat/completions" if ep.kind == "chat" else "completions",
             f"concurrency {cfg.load.concurrency}" if cfg.load.mode == "concurrency"
             else f"{cfg.load.arrival} rate {cfg.load.request_rate:g}/s")
    last = [time.monotonic()]

    def tick(phase: str, k: int) -> None:
        if time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            log.info("%s: %d requests done", phase, k)

    cache_reset = reset_prefix_cache(ep.base_url, headers)
    before = counters(ep.base_url, headers)
    t_wall = time.time()
    run = _loop_runner(use_uvloop)(run_load(ep, rs, cfg.load, tick))
    return _Measured(run, before, counters(ep.base_url, headers), cache_reset, t_wall)


def _client_share(run: LoadRun) -> float:
    """The client's CPU time over the run's duration (one core = 1)."""
    return run.client_cpu_s / run.duration_s if run.duration_s > 0 else math.nan


def _print_results(cfg: Config, run: LoadRun, summary: LoadSummary, tokens: dict[str, Any]) -> None:
    """The metrics table, the client's own cost, the token cross-check and the run's notes."""
    print(summary_table(summary, cfg.load.p99_confidence))
    print(f"client: {run.client_workers} process(es), {run.client_cpu_s:.2f} s CPU ({_client_share(run):.0%} of one "
          f"core)"
          + ("" if not math.isfinite(run.client_wait_s) else
             f", waited {run.client_wait_s:.2f} s for a CPU ({run.client_wait_max_share:.0%} of the run)")
          + ("" if not run.dispatch_lag_ms[0] == run.dispatch_lag_ms[0] else
             f", dispatch lag p50/p99/max {run.dispatch_lag_ms[0]:.2f}/{run.dispatch_lag_ms[1]:.2f}/"
             f"{run.dispatch_lag_ms[2]:.2f} ms"))
    if "match" in tokens:
        print(f"tokens: client {tokens['client_prompt_tokens']} prompt + {tokens['client_output_tokens']} output; "
              f"server /metrics {tokens['server_prompt_tokens']:.0f} + {tokens['server_output_tokens']:.0f}"
              + ("" if tokens["match"] else "  (differ" + ("" if tokens["all_requests_ok"] else
                                                           ": failed requests carry no usage") + ")"))
    deltas = tokens.get("server_counters", {})
    if deltas.get("prefix_cache_queries") and not cfg.workload.shared_prefix_tokens and not cfg.workload.dataset:
        hits = deltas.get("prefix_cache_hits", 0.0) / deltas["prefix_cache_queries"]
        if hits > 0.05:
            run.notes.append(f"{hits:.0%} of the prompt tokens were prefix-cache hits although this workload shares "
                             f"no prefix: the server has seen this seeded request set before. For a cold cache "
                             f"restart it, change workload.seed, or run vLLM with VLLM_SERVER_DEV_MODE=1 (the load "
                             f"test then empties the cache first)")
    for note in run.notes:
        print("note: " + note)


def _write_json(path: Path, cfg: Config, ep: Endpoint, rs: RequestSet, m: _Measured, summary: LoadSummary,
                tokens: dict[str, Any], *, records: bool, use_uvloop: bool) -> None:
    """out=FILE.json: every number, the config it ran with, the client's cost (records=true: every request)."""
    run = m.run
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(m.t_wall)),
        "endpoint": ep.base_url, "model": ep.model,
        "workload": dataclasses.asdict(cfg.workload), "load": dataclasses.asdict(cfg.load),
        "num_requests": run.num_requests, "exact_prompt_lengths": rs.exact_prompt_lengths,
        "summary": dataclasses.asdict(summary), "flat": summary_to_attrs(summary),
        "p99_upper_bound_needs": min_samples_for_upper_bound(0.99, cfg.load.p99_confidence),
        "notes": run.notes, "aborted": run.aborted,
        "client": {"cpu_s": run.client_cpu_s, "cpu_share": _client_share(run),
                   "loop": "uvloop" if use_uvloop else "asyncio",
                   "dispatch_lag_ms": dict(zip(("p50", "p99", "max"), run.dispatch_lag_ms)),
                   "workers": run.client_workers, "cpu_s_by_process": run.client_cpu_by_process,
                   "cpu_max_share": run.client_cpu_max_share, "wait_s": run.client_wait_s,
                   "wait_s_by_process": run.client_wait_by_process,
                   "wait_max_share": run.client_wait_max_share, **_from_send(run)},
        "warmup": {"requests": len(run.warmup), "errors": sum(1 for r in run.warmup if not r.ok),
                   "duration_s": run.warmup_s},
        "tokens": tokens, "prefix_cache_reset": m.cache_reset,
    }
    if records:
        doc["records"] = [request_record(r) for r in run.results]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(doc))
    print(f"wrote {path}")


def _from_send(run: LoadRun) -> dict[str, Any]:
    """TTFT and E2E counted from when each request was sent (``vllm bench serve``'s origin), beside
    the summary's, which count from when it was due (open loop); and how long requests queued."""
    import numpy as np

    ok = [r for r in run.results if r.ok]

    def q(xs: list[float]) -> dict[str, float]:
        a = np.asarray([x * 1000.0 for x in xs], dtype=float)
        return {"n": int(a.size), "p50": float(np.percentile(a, 50)) if a.size else math.nan,
                "p99": float(np.percentile(a, 99)) if a.size else math.nan}

    return {"ttft_from_send_ms": q([r.ttft_from_send for r in ok]),
            "e2e_from_send_ms": q([r.latency - r.queued_s for r in ok]),
            "queued_ms": q([r.queued_s for r in ok])}


def main(argv: Optional[list[str]] = None) -> int:
    return main_wrapper(_body, USAGE, argv, show=lambda o: show_config(_split_own(o)[1]))


if __name__ == "__main__":
    sys.exit(main())
