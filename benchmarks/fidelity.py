"""Does this generator measure what ``vllm bench serve`` measures?

Two parts, each with both clients on the same server and workload, in alternation (ours, bench,
bench, ours, ...) so that drift of this shared machine hits both alike:

1. ``fake``: the fake vLLM server (optimizer/testing/fake_server.py) pinned to core 0, the client to
   core 1. The server is deterministic (first token 20 ms after the request, then one every
   10 ms) and reports its own TTFT/E2E, so any difference is the clients'.
2. ``vllm``: one real vLLM CPU server (the tiny model, vLLM's defaults, 2 GiB KV cache).
   Prompts of 256 tokens (ours: token ids; bench: its ``random`` dataset, text re-tokenized to
   the length it drew), 64 output tokens with ``ignore_eos``, greedy sampling, 16 warm-up
   requests, the prefix cache emptied before every run (the request sets are seeded: without it a
   second run would hit the cache that the first one filled). Cases: constant arrivals below capacity (bench: gamma arrivals with burstiness
   1000, i.e. within 3 % of constant), where both clients send the same schedule; and a closed
   loop at concurrency 8 with lengths uniform within +-50 % (the same distribution, drawn by each
   client's own RNG; fixed lengths lock a closed loop into waves or not, at random). The chat case
   goes through the chat template on both sides (ours: exact lengths with the model's tokenizer,
   the template's 17 tokens included).

Compared: output tokens/s and P50/P99 of TTFT, ITL and E2E (bench's recomputed with numpy from
its per-request arrays, as ours are). Usage: ``python benchmarks/fidelity.py [--part fake|vllm]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from optimizer.server.process import free_port  # noqa: E402
from optimizer.testing.fake_server import spawn_fake_server  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="fidelity-"))
CHAT_TEMPLATE_TOKENS = 17  # what the tiny model's chat template adds to one user message (measured)

# name -> (server, endpoint, load: ("closed", C) | ("constant", rate), length spread, requests, reps)
CASES: dict[str, tuple[str, str, tuple[str, float], float, int, int]] = {
    "fake: completions, closed loop C=16": ("fake", "completions", ("closed", 16), 0.0, 400, 2),
    "fake: completions, closed loop C=64": ("fake", "completions", ("closed", 64), 0.0, 1600, 2),
    "vllm: completions, constant 6 req/s": ("vllm", "completions", ("constant", 6.0), 0.0, 300, 2),
    "vllm: chat, constant 6 req/s": ("vllm", "chat", ("constant", 6.0), 0.0, 300, 2),
    "vllm: completions, closed loop C=8, lengths +-50%": ("vllm", "completions", ("closed", 8), 0.5, 400, 3),
}


def run_ours(url: str, endpoint: str, load: tuple[str, float], spread: float, n: int, pids: list[int],
             cpu: int | None) -> dict[str, Any]:
    out = TMP / f"ours-{time.monotonic_ns()}.json"
    extra = CHAT_TEMPLATE_TOKENS if endpoint == "chat" else 0
    ov = ["workload=fixed-256-64", f"workload.endpoint={endpoint}", f"workload.prompt_tokens={256 + extra}",
          f"workload.prompt_tokens_spread={spread * 256 / (256 + extra)}", f"workload.output_tokens_spread={spread}",
          f"load.num_requests={n}", "load.warmup_requests=16", "load.p99_sizing=off", "model_name=tiny",
          f"workload.tokenizer={C.TINY}"]
    if load[0] == "closed":
        ov += ["load.mode=concurrency", f"load.concurrency={int(load[1])}"]
    else:
        ov += ["load.mode=rate", f"load.request_rate={load[1]}", "load.arrival=constant", "load.concurrency=8"]
    doc = C.loadtest(url, ov, out, cpu=cpu, watch_pids=pids)
    s = doc["summary"]
    return {"tok_s": s["output_tok_s"], "req_s": s["req_s"], "n_ok": s["n_ok"], "dists": C.our_dists(doc),
            "mean_prompt": s["prompt_tokens"] / max(1, s["n_ok"]), "mean_output": s["output_tokens"] / max(1, s["n_ok"]),
            "others_cores": doc["_watch"]["others_cores"], "client_cpu": doc["client"]["cpu_share"],
            "tokens_match": doc["tokens"].get("match")}


def run_bench(url: str, endpoint: str, load: tuple[str, float], spread: float, n: int, pids: list[int],
              cpu: int | None) -> dict[str, Any]:
    out = TMP / f"bench-{time.monotonic_ns()}.json"
    backend = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"] if endpoint == "chat" else [
        "--backend", "openai", "--endpoint", "/v1/completions"]
    args = [*backend, "--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64",
            "--random-range-ratio", str(spread), "--num-prompts", str(n), "--ignore-eos", "--num-warmups", "16",
            "--temperature", "0", "--seed", "0"]
    if load[0] == "closed":
        args += ["--max-concurrency", str(int(load[1])), "--request-rate", "inf"]
    else:
        args += ["--request-rate", str(load[1]), "--burstiness", "1000"]
    doc = C.vllm_bench(url, "tiny", args, out, cpu=cpu, watch_pids=pids)
    ok = [i for i, e in enumerate(doc["errors"]) if not e]
    return {"tok_s": doc["output_throughput"], "req_s": doc["request_throughput"], "n_ok": doc["completed"],
            "dists": C.bench_dists(doc), "mean_prompt": doc["total_input_tokens"] / max(1, doc["completed"]),
            "mean_output": sum(doc["output_lens"][i] for i in ok) / max(1, len(ok)),
            "others_cores": doc["_watch"]["others_cores"]}


def _pct(a: float, b: float) -> float:
    return (a - b) / b * 100.0 if b else float("nan")


def _cases(url: str, names: list[str], pids: list[int], cpu: int | None, results: dict[str, Any],
           fake_url: str = "") -> None:
    for name in names:
        _, endpoint, load, spread, n, reps = CASES[name]
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bench": []}
        for rep in range(reps):
            for client in (("ours", "bench") if rep % 2 == 0 else ("bench", "ours")):
                print(f"{name}: {client} run {rep + 1}", flush=True)
                if fake_url:
                    httpx.post(fake_url + "/fake/reset", timeout=5)
                else:
                    C.reset_prefix_cache(url)  # every run starts cold, as a trial on a fresh server does
                fn = run_ours if client == "ours" else run_bench
                r = fn(url, endpoint, load, spread, n, pids, cpu)
                if fake_url:
                    st = httpx.get(fake_url + "/fake/stats", timeout=5).json()
                    r["server"] = {"ttft": st["ttft_ms"], "e2e": st["e2e_ms"]}
                print(f"   {r['tok_s']:.1f} tok/s, P50/P99 E2E {r['dists']['e2e']['p50']:.1f}/"
                      f"{r['dists']['e2e']['p99']:.1f} ms, mean prompt {r['mean_prompt']:.1f}, mean output "
                      f"{r['mean_output']:.1f}, others' cores {r['others_cores']:.2f}", flush=True)
                runs[client].append(r)
        results["cases"][name] = runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["fake", "vllm", "both"], default="both")
    a = ap.parse_args()
    results: dict[str, Any] = {"cases": {}}
    fake = [n for n, c in CASES.items() if c[0] == "fake"]
    real = [n for n, c in CASES.items() if c[0] == "vllm"]
    if a.part in ("fake", "both"):
        with spawn_fake_server(model="tiny", cpu=0, python=C.PY, tokens_per_s=100, delay_ms=20) as srv:
            _cases(srv.url, fake, [srv.proc.pid], 1, results, fake_url=srv.url)
    if a.part in ("vllm", "both"):
        with C.vllm_server(free_port(), dev_mode=True) as srv:
            results["server_start_s"] = srv.start_s
            _cases(srv.url, real, C._group_pids(srv.pid), None, results)
    rows = []
    summary: dict[str, Any] = {}
    for name, runs in results["cases"].items():
        med: dict[str, dict[str, float]] = {}
        spread: dict[str, dict[str, float]] = {}
        for client, rs in runs.items():
            vals = {"tok_s": [r["tok_s"] for r in rs]}
            for m in ("ttft", "itl", "e2e"):
                for q in ("p50", "p99"):
                    vals[f"{m}_{q}"] = [r["dists"][m][q] for r in rs]
            med[client] = {k: C.median(v) for k, v in vals.items()}
            spread[client] = {k: (max(v) - min(v)) / C.median(v) * 100 if len(v) > 1 else float("nan")
                              for k, v in vals.items()}
        truth: dict[str, float] = {}
        if runs["ours"] and "server" in runs["ours"][0]:
            every = runs["ours"] + runs["bench"]
            for m in ("ttft", "e2e"):
                for q in ("p50", "p99"):
                    truth[f"{m}_{q}"] = C.median([r["server"][m][q] for r in every])
        summary[name] = {"median": med, "run_spread_pct": spread, "server_truth": truth}
        for k in med["ours"]:
            rows.append([name, k, truth.get(k, float("nan")), med["ours"][k], med["bench"][k],
                         _pct(med["ours"][k], med["bench"][k]), spread["ours"][k], spread["bench"][k]])
    results["summary"] = summary
    print("\nMedians over the runs; spread = (max - min) / median of the same client's runs; server = what the "
          "fake server measured itself")
    print(C.table(["case", "metric (tok/s, ms)", "server", "ours", "vllm bench", "diff %", "ours spread %",
                   "bench spread %"], rows))
    path = C.write_result("fidelity" if a.part == "both" else f"fidelity-{a.part}", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
