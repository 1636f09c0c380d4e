"""How much does one trial's result move when it is run again?

The same trial five times, each on a freshly started vLLM CPU server, as the study runs trials:
start the server (the tiny model, the CPU preset's vLLM defaults, 2 GiB KV cache), wait for
/health, warm up and run the load test in-process through ``optimizer.loadgen.runner.run_load``
(the function the study calls), stop the server. The load is the study's default
(conf/config.yaml: workload chat-short, closed loop at concurrency 16, 16 warm-up requests), with
``--requests`` measured requests (default 400, enough to bound the P99 from above).

Reported: the coefficient of variation (standard deviation / mean) over the restarts of output
tokens/s and of the P99 (and P50) of TTFT, ITL and E2E, the P99's own confidence interval in each
run, and the CPU other tenants of this shared machine used meanwhile.
Usage: ``python benchmarks/repeatability.py [--runs 5] [--requests 400]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from optimizer.commands.cli import compose  # noqa: E402
from optimizer.loadgen.client import Endpoint  # noqa: E402
from optimizer.loadgen.runner import run_load  # noqa: E402
from optimizer.loadgen.workload import RequestSet  # noqa: E402
from optimizer.measures.metrics import summarize  # noqa: E402
from optimizer.server.process import free_port  # noqa: E402


def _cv(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.stdev(xs) / statistics.mean(xs) * 100 if len(xs) > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400)
    a = ap.parse_args()
    cfg = compose([f"load.num_requests={a.requests}", "load.p99_sizing=off"])
    defaults = cfg.hardware.vllm_defaults
    extra = ["--max-num-seqs", str(defaults.get("max_num_seqs", 128)),
             "--max-num-batched-tokens", str(defaults.get("max_num_batched_tokens", 2048))]
    runs: list[dict[str, Any]] = []
    for k in range(a.runs):
        port = free_port()
        t0 = time.monotonic()
        with C.vllm_server(port, extra, log=Path(f"/tmp/repeat-{k}.log")) as srv:
            pids = C._group_pids(srv.pid)
            ep = Endpoint(srv.url, "tiny", cfg.workload.endpoint, None, cfg.load.request_timeout_s,
                          cfg.load.stall_timeout_s)
            rs = RequestSet.build(cfg.workload, cfg.model, C.TINY)
            w = C.CpuWatch(pids)
            with w:
                run = asyncio.run(run_load(ep, rs, cfg.load))
            s = summarize(run.results, run.duration_s, cfg.load.p99_confidence)
            ours = run.client_cpu_s / w.result["wall_s"]
            others = max(0.0, w.result["machine_busy_cores"] - w.result["ours_cores"] - ours)
        r = {"run": k + 1, "start_s": srv.start_s, "total_s": time.monotonic() - t0, "n_ok": s.n_ok,
             "errors": s.errors, "tok_s": s.output_tok_s, "req_s": s.req_s, "client_cpu_share": run.client_cpu_s /
             run.duration_s, "others_cores": others, "server_cores": w.result["ours_cores"],
             **{f"{m}_{q}": getattr(s.dist(m), q) for m in ("ttft", "itl", "e2e") for q in ("p50", "p99", "p99_low",
                                                                                          "p99_high")}}
        runs.append(r)
        print(f"run {k + 1}: started in {srv.start_s:.0f} s, {r['tok_s']:.1f} tok/s, P99 E2E {r['e2e_p99']:.1f} ms "
              f"[{r['e2e_p99_low']:.1f}, {r['e2e_p99_high']:.1f}], P99 TTFT {r['ttft_p99']:.1f} ms, others' cores "
              f"{others:.2f}", flush=True)
    keys = ["tok_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "e2e_p50", "e2e_p99"]
    rows = [[r["run"]] + [r[k] for k in keys] + [r["others_cores"]] for r in runs]
    cv = {k: _cv([r[k] for r in runs]) for k in keys}
    rows.append(["CV %"] + [cv[k] for k in keys] + [""])
    quiet = [r for r in runs if r["others_cores"] <= 0.25]
    cv_quiet = {k: _cv([r[k] for r in quiet]) for k in keys} if len(quiet) >= 3 else {}
    if cv_quiet:
        rows.append([f"CV % ({len(quiet)} quiet)"] + [cv_quiet[k] for k in keys] + [""])
    print(f"\n{a.runs} restarts, workload {cfg.workload.name}, C={cfg.load.concurrency}, {a.requests} requests")
    print(C.table(["run", "tok/s", "TTFT P50", "TTFT P99", "ITL P50", "ITL P99", "E2E P50", "E2E P99",
                   "others' cores"], rows))
    path = C.write_result("repeatability", {"runs": runs, "cv_pct": cv, "cv_pct_quiet": cv_quiet,
                                            "load": dataclasses.asdict(cfg.load),
                                            "workload": dataclasses.asdict(cfg.workload), "server_extra": extra})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
