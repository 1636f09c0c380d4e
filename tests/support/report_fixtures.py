"""Synthetic studies shaped like the ones ``optimizer.study.loop`` writes, for the report's tests.

Every trial is a :class:`optimizer.record.TrialRecord` encoded by its own ``to_attrs`` (the
same code the study loop stores with), plus the four constraint keys of
``optimizer/measures/objective.py``; renaming a stored key therefore changes the fixtures too, and the
committed H100 study (tests/unit/test_record.py) pins the keys themselves. No server, no vLLM:
numbers come from a seeded toy model of throughput and latency, so the tests and the
screenshots are reproducible.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import replace
from typing import Any, Optional

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from optimizer.core.errors import FailureReason
from optimizer.measures.metrics import Dist, LoadSummary
from optimizer.measures.objective import Outcome
from optimizer.record import Failure, LaunchInfo, Lineage, Measurement, MemoryPrediction, Setup, Timings, TrialRecord
from optimizer.server.startlog import StartLog
from optimizer.server.telemetry import ServerStats

__all__ = ["DISTRIBUTIONS", "SLO_MS", "make_study", "make_trial", "study_config", "synthetic_trials"]

SLO_MS = 2500.0
DISTRIBUTIONS = {
    "kv_cache_gib": FloatDistribution(1.0, 4.0, step=0.5),
    "max_num_seqs": IntDistribution(4, 256, log=True),
    "max_num_batched_tokens": IntDistribution(256, 8192, log=True),
    "enable_chunked_prefill": CategoricalDistribution([True, False]),
    "enable_prefix_caching": CategoricalDistribution([True, False]),
}
_T0 = dt.datetime(2025, 1, 1, 12, 0, 0)


def study_config(name: str = "synthetic", slo_ms: float = SLO_MS, metric: str = "e2e") -> dict[str, Any]:
    """The ``config`` study user_attr (a subset of ``asdict(Config)``)."""
    return {
        "hardware": {"name": "cpu", "device": "cpu", "gpu_name": "cpu", "gpu_mem_gib": 0.0, "gpu_count": 1,
                     "fixed_args": [], "cpu_kvcache_gib": 2.0},
        "model": {"name": "tiny", "path": "", "dtype": "bfloat16", "max_model_len": 2048, "num_params_b": 0.0046},
        "workload": {"name": "chat-short", "endpoint": "completions", "prompt_tokens": 256,
                     "prompt_tokens_spread": 0.25, "output_tokens": 64, "output_tokens_spread": 0.0,
                     "shared_prefix_tokens": 0, "dataset": ""},
        "load": {"mode": "concurrency", "concurrency": 16, "request_rate": 8.0, "num_requests": 96,
                 "duration_s": 0.0, "warmup_requests": 16},
        "slo": {"metric": metric, "p99_ms": slo_ms, "max_error_rate": 0.0, "use_upper_bound": False},
        "study": {"name": name, "storage": f"sqlite:///studies/{name}.db", "n_trials": 12},
        "server": {"extra_args": []},
    }


def _dist(rng: random.Random, center: float, n: int, spread: float = 0.35) -> list[float]:
    return sorted(round(max(0.1, rng.lognormvariate(math.log(center), spread)), 3) for _ in range(n))


def _dist_of(xs: list[float]) -> Dist:
    k = len(xs)
    return Dist(k, round(sum(xs) / k, 4), xs[k // 2], xs[int(k * 0.9)], xs[min(k - 1, int(k * 0.99))], xs[-1],
                xs[int(k * 0.97)], math.nan)


def _measurement(rng: random.Random, e2e_center: float, n: int, throughput: float, t_load: float,
                 params: dict[str, Any], kv_tokens: int) -> Measurement:
    samples = {"ttft": _dist(rng, e2e_center * 0.25, n), "e2e": _dist(rng, e2e_center, n),
               "itl": _dist(rng, e2e_center / 80, n * 8, 0.6)}
    summary = LoadSummary(n_requests=n, n_ok=n, error_rate=0.0, duration_s=t_load, output_tok_s=throughput,
                          total_tok_s=throughput * 5, req_s=throughput / 64, output_tokens=6144, prompt_tokens=24636,
                          tpot_mean_ms=6.0, **{m: _dist_of(xs) for m, xs in samples.items()})
    seqs = params.get("max_num_seqs", 16)
    peak = min(1.0, seqs / 200)
    stats = ServerStats(prompt_tokens=28814.0, generation_tokens=7168.0, requests_ok=112.0,
                        preemptions=float(max(0, seqs - 120) // 10), prefix_cache_hit_rate=math.nan,
                        spec_acceptance=math.nan, spec_drafts=0.0, kv_usage_peak=peak,
                        running_peak=float(min(16, seqs)), waiting_peak=float(max(0, 16 - seqs)),
                        kv_cache_tokens=float(kv_tokens), num_gpu_blocks=8192.0, block_size=128.0)
    timeline = [(float(i), {"vllm:kv_cache_usage_perc": round(peak * min(1, i / 3), 4),
                            "vllm:num_requests_running": float(min(16, i * 5)), "vllm:num_requests_waiting": 0.0})
                for i in range(int(t_load) + 3)]
    return Measurement(summary, stats, client_cpu_s=0.4, client_cpu_share=0.02, latency_samples=samples,
                       kv_timeline=timeline)


def make_trial(number: int, params: dict[str, Any], *, kind: str = "", outcome: str = "measured",
               throughput: float = 0.0, e2e_center: float = 500.0, slo_ms: float = SLO_MS,
               state: TrialState = TrialState.COMPLETE, extra: Optional[dict[str, Any]] = None,
               seed: int = 0, worker: str = "vm", gpus: str = "", attempt: Optional[int] = None,
               start_log: Optional[StartLog] = None) -> FrozenTrial:
    """One trial as the study loop records it.

    ``outcome``: ``measured`` (load test ran), ``startup`` (server could not start),
    ``ruled_out`` (memory estimate, no server), ``env`` (FAIL: environment fault before measuring).
    ``extra`` overwrites stored attrs after encoding: data as an older or damaged study may hold it.
    """
    rng = random.Random(seed * 1000 + number)
    serve = {"model": "/models/tiny", "served_model_name": "tiny"}
    for k, v in params.items():
        serve["kv_cache_memory_bytes" if k == "kv_cache_gib" else k] = (
            int(v * 1024**3) if k == "kv_cache_gib" else v)
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny", "--port", str(40000 + number)]
    for k, v in sorted(serve.items()):
        if k == "model":
            continue
        argv += ([f"--{k.replace('_', '-')}"] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False
                 else [f"--{k.replace('_', '-')}", str(v)])
    kv_tokens = int(params.get("kv_cache_gib", 2.0) * 524288)
    rec = TrialRecord(Setup("cpu", "tiny", "chat-short", dict(params), worker, gpus),
                      lineage=Lineage(kind == "baseline", attempt or 0, number - 1 if attempt else None,
                                      "interrupted" if attempt else ""),
                      memory=MemoryPrediction(params.get("kv_cache_gib", 2.0), 0.009, 0.05, 2.0, kv_tokens, 256.0))
    constraints = {"slo": 1.0, "errors": 1.0, "startup": 0.0, "memory": 0.0}
    value: Optional[float] = 0.0
    wall = 2.0
    if outcome == "ruled_out":
        rec = replace(rec, failure=Failure(FailureReason.RULED_OUT,
                                           "KV cache of 0.1 GiB holds fewer tokens than one request of 2048"))
        constraints["memory"] = 1.0
    else:
        rec = replace(rec, launch=LaunchInfo(tuple(argv), "python " + " ".join(argv), serve,
                                             f"/runs/synthetic/trial-{number:04d}/server.log"))
        t_start = round(rng.uniform(40, 60), 2)
        wall = t_start + 3
        if outcome == "startup":
            rec = replace(rec, failure=Failure(FailureReason.OUT_OF_MEMORY,
                                               "torch.OutOfMemoryError: <CUDA> out of memory & more"),
                          timings=Timings(0.0, t_start, stop_s=0.5, total_s=wall))
            constraints["startup"] = 1.0
        elif outcome == "env":
            rec = replace(rec, failure=Failure(FailureReason.START_TIMEOUT, "server not healthy after 600 s"),
                          timings=Timings(0.0, t_start, stop_s=2.0, total_s=wall))
            value = None
        else:
            t_load = round(96 * 64 / max(throughput, 1.0), 2)
            wall += 0.9 + t_load + 0.3
            m = _measurement(rng, e2e_center, 96, throughput, t_load, params, kv_tokens)
            rec = replace(rec, launch=replace(rec.launch, vllm_version="0.32.0"), measurement=m,
                          timings=Timings(0.0, t_start, 0.9, t_load, 0.3, round(wall, 2)), start_log=start_log)
            value = throughput
            constraints.update({"slo": m.summary.e2e.p99 / slo_ms - 1.0, "errors": 0.0})
    if state == TrialState.COMPLETE:
        rec = replace(rec, outcome=Outcome(value or 0.0, constraints, all(v <= 0 for v in constraints.values())))
    attrs = rec.to_attrs() | (extra or {})
    start = _T0 + dt.timedelta(seconds=number * 90)
    end = None if state == TrialState.RUNNING else start + dt.timedelta(seconds=wall)
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None, params=params,
                     distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=attrs,
                     constraints=constraints if state == TrialState.COMPLETE else None)
    return _with_times(t, number, start, end)


def _with_times(t: FrozenTrial, number: int, start: dt.datetime, end: Optional[dt.datetime]) -> FrozenTrial:
    t.number = number
    t.datetime_start = start
    t.datetime_complete = end
    return t


def _params(rng: random.Random) -> dict[str, Any]:
    return {"kv_cache_gib": rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
            "max_num_seqs": int(math.exp(rng.uniform(math.log(4), math.log(256)))),
            "max_num_batched_tokens": int(math.exp(rng.uniform(math.log(256), math.log(8192)))),
            "enable_chunked_prefill": rng.choice([True, False]),
            "enable_prefix_caching": rng.choice([True, False])}


def synthetic_trials(n: int = 14, seed: int = 0, slo_ms: float = SLO_MS, feasible: bool = True,
                     failures: bool = True) -> list[FrozenTrial]:
    """A mixed study: baseline first, then measured trials (feasible and not), and failures.

    ``feasible=False`` moves every latency above the SLO.
    """
    rng = random.Random(seed)
    out: list[FrozenTrial] = []
    base = {"kv_cache_gib": 2.0, "max_num_seqs": 128, "max_num_batched_tokens": 2048,
            "enable_chunked_prefill": True, "enable_prefix_caching": True}
    scale = 1.0 if feasible else 6.0
    seen: set[str] = set()
    out.append(make_trial(0, base, kind="baseline", throughput=1500.0, e2e_center=800 * scale, slo_ms=slo_ms,
                          seed=seed))
    for i in range(1, n):
        p = _params(rng)
        if failures and i == 3:
            out.append(make_trial(i, p | {"kv_cache_gib": 1.0}, outcome="ruled_out", slo_ms=slo_ms, seed=seed))
            continue
        if failures and i == 5:
            out.append(make_trial(i, p, outcome="startup", slo_ms=slo_ms, seed=seed))
            continue
        if failures and i == 7:
            out.append(make_trial(i, p, outcome="env", state=TrialState.FAIL, slo_ms=slo_ms, seed=seed,
                                  attempt=0))
            continue
        seqs, tokens = p["max_num_seqs"], p["max_num_batched_tokens"]
        thr = 900 + 260 * math.log2(seqs) + 80 * math.log2(tokens / 256) + rng.uniform(-120, 120)
        e2e = (250 + 5 * seqs + (0 if p["enable_chunked_prefill"] else 300)) * scale
        out.append(make_trial(i, p, throughput=round(thr, 4), e2e_center=e2e, slo_ms=slo_ms, seed=seed,
                              start_log=_start_log(seqs, tokens, seen)))
    return out


def _start_log(seqs: int, tokens: int, seen: set[str]) -> StartLog:
    """A CPU-build start log: the first start with a compile key compiles, later ones load it."""
    key = f"{seqs:04x}{tokens:08x}"
    hit = key in seen
    seen.add(key)
    return StartLog(kv_tokens=524288, model_load_s=0.3, compile_s=3.0 if hit else 25.0,
                    engine_init_s=5.0 if hit else 28.0, compile_cache_hit=hit, compile_key=key)


def make_study(trials: list[FrozenTrial], name: str = "synthetic", storage: Optional[str] = None,
               config: Optional[dict[str, Any]] = None) -> optuna.Study:
    """A maximizing study holding ``trials``, with the study attrs the optimizer writes."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    cfg = config or study_config(name)
    study.set_user_attr("config", cfg)
    study.set_user_attr("fingerprint", {"digest": "0123456789abcdef", "model": cfg["model"]["name"],
                                        "hardware": cfg["hardware"]["name"]})
    for t in trials:
        study.add_trial(t)
    return study
