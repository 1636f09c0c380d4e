"""Does the capacity found agree with ``vllm bench serve``? And what does a search cost?

On one real vLLM CPU server (the tiny model, vLLM's CPU defaults, ``--enforce-eager`` for a loaded
host, 2 GiB KV cache), completions of 128 prompt / 32 output tokens, ignore_eos:

1. Calibrate the limit: the P99 E2E at one user (our load generator), times ``--slo-factor``
   (default 3): a limit the server meets at light load and breaks somewhere under heavy load.
2. Search: ``load.mode=capacity`` as the study runs it (from 1 user, doubling, bisecting to 5 %,
   cap 128 = the CPU default max_num_seqs, probes of max(100, 4 x C) requests).
3. Agreement: ``vllm bench serve`` (closed loop: ``--max-concurrency``, ``--request-rate inf``,
   its random dataset with a new seed per run, the prefix cache emptied first) at the capacity
   found and at ceil(1.25 x) it, ``--reps`` times each, alternating; its P99 E2E (recomputed from
   its per-request latencies) against the limit. Expected: meets it at C, breaks it at 1.25 C.
   Beside each bench run, our own load test at the same concurrency and size (``ours``): when the
   two clients agree with each other but not with the search, the host changed speed between the
   search and the check (on a shared host it does; the search's probes and the checks are minutes
   apart).
4. Cost: probes and seconds of the search; the time share of the server start in a trial before
   (start + the default fixed-load test: 16 users, 200 requests, 16 warm-up) and after (start +
   the search).

Usage: ``python benchmarks/capacity_search_agreement.py [--reps 3] [--slo-factor 3]``; writes
benchmarks/results/capacity_search_agreement.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from optimizer.capacity import CapacitySearch, LoadProbe, SearchPlan, find_capacity  # noqa: E402
from optimizer.commands.cli import compose  # noqa: E402
from optimizer.loadgen.client import Endpoint  # noqa: E402
from optimizer.loadgen.runner import run_load  # noqa: E402
from optimizer.loadgen.workload import RequestSet  # noqa: E402
from optimizer.measures.metrics import summarize  # noqa: E402
from optimizer.server.process import free_port  # noqa: E402
from optimizer.server.telemetry import TelemetrySampler  # noqa: E402
from optimizer.settings.config import CapacityConfig, LoadConfig, SloConfig, WorkloadConfig  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="capacity-agreement-"))
PROMPT, OUTPUT = 128, 32


def bench(url: str, concurrency: int, seed: int, n: int) -> dict[str, Any]:
    C.reset_prefix_cache(url)
    out = TMP / f"bench-{concurrency}-{seed}.json"
    args = ["--backend", "openai", "--endpoint", "/v1/completions", "--dataset-name", "random",
            "--random-input-len", str(PROMPT), "--random-output-len", str(OUTPUT), "--num-prompts", str(n),
            "--ignore-eos", "--num-warmups", str(concurrency), "--temperature", "0", "--seed", str(seed),
            "--max-concurrency", str(concurrency), "--request-rate", "inf"]
    doc = C.vllm_bench(url, "tiny", args, out)
    d = C.bench_dists(doc)
    return {"concurrency": concurrency, "seed": seed, "n_ok": doc["completed"], "e2e_p99_ms": d["e2e"]["p99"],
            "e2e_p50_ms": d["e2e"]["p50"], "output_tok_s": doc["output_throughput"],
            "others_cores": doc["_watch"]["others_cores"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slo-factor", type=float, default=3.0)
    ap.add_argument("--bench-requests", type=int, default=200)
    a = ap.parse_args()
    cfg = compose([f"model.path={C.TINY}"])
    rs = RequestSet.build(WorkloadConfig(name="agree", prompt_tokens=PROMPT, output_tokens=OUTPUT), cfg.model)
    out: dict[str, Any] = {"workload": {"prompt": PROMPT, "output": OUTPUT}, "slo_factor": a.slo_factor}
    with C.vllm_server(free_port(), extra=["--enforce-eager"], dev_mode=True, start_timeout_s=900) as srv:
        out["server_start_s"] = srv.start_s
        ep = Endpoint(srv.url, "tiny")
        t = time.monotonic()
        fixed = asyncio.run(run_load(ep, rs, LoadConfig(concurrency=16, num_requests=200, warmup_requests=16,
                                                        p99_sizing="off")))
        out["fixed_load_test_s"] = time.monotonic() - t  # the trial's load phase before: one load point
        C.reset_prefix_cache(srv.url)
        calib = asyncio.run(run_load(ep, dataclass_seed(rs, 99), LoadConfig(concurrency=1, num_requests=50,
                                                                            warmup_requests=4, p99_sizing="off")))
        p99_1 = summarize(calib.results, calib.duration_s).e2e.p99
        slo = SloConfig(metric="e2e", p99_ms=round(a.slo_factor * p99_1, 1))
        out["p99_e2e_at_1_ms"], out["slo_p99_ms"] = p99_1, slo.p99_ms
        print(f"server start {srv.start_s:.0f} s; P99 E2E at 1 user {p99_1:.0f} ms; limit {slo.p99_ms:.0f} ms",
              flush=True)
        load = LoadConfig(num_requests=100, warmup_requests=16, p99_sizing="off", capacity=CapacityConfig(max=128))
        probe = LoadProbe(ep, rs, load, slo, telemetry=lambda: TelemetrySampler(srv.url, 0.5))
        t = time.monotonic()
        r = asyncio.run(find_capacity(
            probe, CapacitySearch(SearchPlan.of(load.capacity, 128), slo),
            on_probe=lambda p: print(f"  probe {p.load:g} users: {'pass' if p.passed else 'FAIL'} P99 E2E "
                                     f"{p.p99_ms:.0f} ms, {p.output_tok_s:.0f} tok/s, {p.n_requests} requests"
                                     f"{' (lengthened)' if p.lengthened else ''}, KV peak {p.kv_usage_peak:.2f}",
                                     flush=True)))
        out["search_s"] = time.monotonic() - t
        out["capacity"] = r.to_json()
        print(f"capacity {r.value:g} users ({r.limited_by.value}: {r.stop_reason}) in {out['search_s']:.0f} s",
              flush=True)
        if not r.feasible:
            print("infeasible at 1 user: nothing to compare (raise --slo-factor)")
            C.write_result("capacity_search_agreement", out)
            return 1
        cap = int(r.value)
        above = math.ceil(1.25 * cap)
        runs = []
        for rep in range(a.reps):
            for conc in ((cap, above) if rep % 2 == 0 else (above, cap)):
                n = max(a.bench_requests, 4 * conc)
                for client in (("bench", "ours") if rep % 2 == 0 else ("ours", "bench")):
                    b = bench(srv.url, conc, 1000 + rep, n) if client == "bench" else ours(ep, rs, conc, 2000 + rep, n)
                    b["client"] = client
                    b["meets_slo"] = b["e2e_p99_ms"] <= slo.p99_ms
                    b["loadavg1"] = C.machine()["loadavg"][0]
                    runs.append(b)
                    print(f"  {client} at {conc} users: P99 E2E {b['e2e_p99_ms']:.0f} ms ({'meets' if b['meets_slo'] else 'breaks'} "
                          f"{slo.p99_ms:.0f}), {b['output_tok_s']:.0f} tok/s, load {b['loadavg1']:.1f}", flush=True)
        out["bench"] = runs
    out["agreement"] = {}
    for client in ("bench", "ours"):
        at_cap = [b for b in runs if b["concurrency"] == cap and b["client"] == client]
        at_above = [b for b in runs if b["concurrency"] == above and b["client"] == client]
        out["agreement"][client] = {"at_capacity_meets": sum(b["meets_slo"] for b in at_cap),
                                    "at_capacity_runs": len(at_cap),
                                    "at_1_25x_breaks": sum(not b["meets_slo"] for b in at_above),
                                    "at_1_25x_runs": len(at_above)}
    start, fixed_s, search_s = out["server_start_s"], out["fixed_load_test_s"], out["search_s"]
    out["cost"] = {"probes": len(r.probes), "probe_runs": len(r.probes) + sum(p.lengthened for p in r.probes),
                   "search_s": search_s, "server_start_share_before": start / (start + fixed_s),
                   "server_start_share_after": start / (start + search_s)}
    print(C.table(["client", "concurrency", "seed", "P99 E2E ms", "limit ms", "meets", "tok/s", "load"],
                  [[b["client"], b["concurrency"], b["seed"], b["e2e_p99_ms"], slo.p99_ms, b["meets_slo"],
                    b["output_tok_s"], b["loadavg1"]] for b in runs]))
    print(f"agreement: {out['agreement']}; cost: {out['cost']}")
    print(f"wrote {C.write_result('capacity_search_agreement', out)}")
    return 0


def ours(ep: Endpoint, rs: RequestSet, concurrency: int, seed: int, n: int) -> dict[str, Any]:
    run = asyncio.run(run_load(ep, dataclass_seed(rs, seed), LoadConfig(
        concurrency=concurrency, num_requests=n, warmup_requests=concurrency, p99_sizing="off")))
    s = summarize(run.results, run.duration_s)
    return {"concurrency": concurrency, "seed": seed, "n_ok": s.n_ok, "e2e_p99_ms": s.e2e.p99,
            "e2e_p50_ms": s.e2e.p50, "output_tok_s": s.output_tok_s}


def dataclass_seed(rs: RequestSet, seed: int) -> RequestSet:
    import dataclasses

    return dataclasses.replace(rs, workload=dataclasses.replace(rs.workload, seed=seed))


if __name__ == "__main__":
    sys.exit(main())
