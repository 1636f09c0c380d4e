"""Ours against ``vllm bench serve`` on one warm server, with the server's own counters as the arbiter.

Issue 27 (1): on an H100 the two clients disagreed on the H200 study's winner (trial 7: fp8
weights and KV cache, max-num-seqs 190, max-num-batched-tokens 9216) by 23-30 % in tok/s at 88
users, but agreed on vLLM's defaults. This script removes the confounders named there and lets
the server decide:

- one server per config, started exactly as the study recorded it (``server_argv`` from the study
  database; the model folder written by the product, as the study's was), warmed by one run of
  each client before anything is counted;
- every run sends prompts no other run sent (its own seed) and the prefix cache is emptied before
  it (``VLLM_SERVER_DEV_MODE=1``), so no run profits from another's prefixes;
- runs in A B C C B A order, then each client pinned to one core;
- the reference in two forms: as users run it (``--dataset-name random``: text prompts that the
  server tokenizes) and fed our exact token-id requests (``benchmarks/vllm_bench_serve.py
  --requests-file``);
- per-request records from both clients (start, TTFT, E2E, output tokens) and ``/metrics`` sampled
  every 0.25 s on the same clock (CLOCK_MONOTONIC: ``time.monotonic`` here, ``time.perf_counter``
  in both clients): the server's generated tokens/s, running requests, engine steps and tokens per
  step over the steady window of each run, and the mean prompt length the server counted;
- the steady window drops the first and the last ``C`` requests by start time (the start burst, in
  which every user's prefill arrives at once, and the drain): P99s are compared both ways.

Usage (a GPU host with the bundle staged; one GPU)::

    python3 benchmarks/reference_agreement.py --db docs/results/h200-capacity-llama-3-8b/h200-capacity-llama-3-8b.db \\
        --config 7:88 --out $OUT/agreement-t7.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

_COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
             "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:num_preemptions_total",
             "vllm:iteration_tokens_total_sum", "vllm:iteration_tokens_total_count",
             "vllm:e2e_request_latency_seconds_sum", "vllm:e2e_request_latency_seconds_count",
             "vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count",
             "vllm:request_decode_time_seconds_sum", "vllm:request_decode_time_seconds_count",
             "vllm:request_queue_time_seconds_sum", "vllm:request_prefill_time_seconds_sum")
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def scrape(url: str) -> dict[str, float]:
    """Counters and gauges of ``/metrics``, summed over label sets."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and (m.group(1) in _COUNTERS or m.group(1) in _GAUGES):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


class Sampler:
    """``/metrics`` every ``period`` s in a thread, stamped with ``time.monotonic``."""

    def __init__(self, url: str, period: float = 0.25) -> None:
        self.url, self.period, self.samples = url, period, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), scrape(self.url)))
            except OSError:
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> "Sampler":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def at(self, t: float, key: str) -> float:
        """A counter at time ``t``, interpolated between the samples around it."""
        pts = [(s, d.get(key, 0.0)) for s, d in self.samples]
        if not pts:
            return float("nan")
        if t <= pts[0][0]:
            return pts[0][1]
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)
        return pts[-1][1]

    def mean_gauge(self, a: float, b: float, key: str) -> float:
        v = [d.get(key, float("nan")) for s, d in self.samples if a <= s <= b]
        return statistics.fmean(v) if v else float("nan")


def _pct(v: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(v, dtype=float), q)) if v else float("nan")


def _stats(reqs: list[dict[str, float]]) -> dict[str, float]:
    e2e = [r["e2e"] * 1000 for r in reqs]
    ttft = [r["ttft"] * 1000 for r in reqs]
    tpot = [(r["e2e"] - r["ttft"]) / (r["out"] - 1) * 1000 for r in reqs if r["out"] > 1]
    return {"n": len(reqs), "e2e_p50": _pct(e2e, 50), "e2e_p99": _pct(e2e, 99), "ttft_p50": _pct(ttft, 50),
            "ttft_p99": _pct(ttft, 99), "tpot_mean": statistics.fmean(tpot) if tpot else float("nan"),
            "tpot_p50": _pct(tpot, 50)}


def analyse(reqs: list[dict[str, float]], c: int, duration: float, sampler: Sampler) -> dict[str, Any]:
    """Whole-run and steady-window figures of one run (``reqs``: start, ttft, e2e, out; ok only)."""
    reqs = sorted(reqs, key=lambda r: r["start"])
    out: dict[str, Any] = {"all": _stats(reqs), "client_tok_s": sum(r["out"] for r in reqs) / duration}
    steady = reqs[c:-c] if len(reqs) > 3 * c else reqs
    out["steady"] = _stats(steady)
    ends = sorted(r["start"] + r["e2e"] for r in reqs)
    a = ends[min(c, len(ends) - 1)]  # the first wave is done
    b = reqs[max(0, len(reqs) - c)]["start"]  # from here the load drains
    if b > a:
        done = [r for r in reqs if a <= r["start"] + r["e2e"] <= b]
        out["window_s"] = b - a
        # tokens of requests that ended in the window, by the client: a rate the server can confirm
        out["client_steady_tok_s"] = sum(r["out"] for r in done) / (b - a)
        d = {k: sampler.at(b, k) - sampler.at(a, k) for k in _COUNTERS}
        steps = d["vllm:iteration_tokens_total_count"]
        out["server"] = {
            "gen_tok_s": d["vllm:generation_tokens_total"] / (b - a),
            "prompt_tok_s": d["vllm:prompt_tokens_total"] / (b - a),
            "running_mean": sampler.mean_gauge(a, b, "vllm:num_requests_running"),
            "waiting_mean": sampler.mean_gauge(a, b, "vllm:num_requests_waiting"),
            "steps_per_s": steps / (b - a), "step_ms": (b - a) / steps * 1000 if steps else float("nan"),
            "tokens_per_step": d["vllm:iteration_tokens_total_sum"] / steps if steps else float("nan")}
    return out


def run_ours(url: str, served: str, c: int, n: int, seed: int, cpu: Optional[int], tag: str) -> dict[str, Any]:
    out = TMP / f"ours-{tag}.json"
    doc = C.loadtest(url, [*MODEL, "workload=chat-512-128", "load.mode=concurrency", f"load.concurrency={c}",
                           f"load.num_requests={n}", f"load.warmup_requests={c}", "load.p99_sizing=off",
                           f"workload.seed={seed}", "records=true", f"model_name={served}"], out, cpu=cpu, timeout=900)
    reqs = [{"start": r["t_start"], "ttft": r["ttft_ms"] / 1000, "e2e": r["latency_ms"] / 1000,
             "out": r["output_tokens"], "prompt": r["prompt_tokens"]} for r in doc["records"] if r["ok"]]
    return {"reqs": reqs, "duration": doc["summary"]["duration_s"], "failed": doc["summary"]["n_requests"] - doc["summary"]["n_ok"],
            "client_tok_s_reported": doc["summary"]["output_tok_s"], "watch": doc["_watch"],
            "tokens": doc.get("tokens", {})}


def _requests_file(c: int, n: int, seed: int, tag: str) -> Path:
    from optimizer.commands.cli import compose
    from optimizer.loadgen.workload import RequestSet

    cfg = compose([*MODEL, "workload=chat-512-128", f"workload.seed={seed}"])
    rs = RequestSet.build(cfg.workload, cfg.model)
    specs = [rs.spec(i) for i in range(n)]
    path = TMP / f"requests-{tag}.json"
    path.write_text(json.dumps({"requests": [{"prompt": s.prompt, "prompt_len": s.prompt_tokens,
                                              "output_len": s.max_tokens} for s in specs], "offsets": None}))
    return path


def run_bench(url: str, served: str, c: int, n: int, seed: int, cpu: Optional[int], tag: str, tokenizer: str,
              ids: bool) -> dict[str, Any]:
    out = TMP / f"bench-{tag}.json"
    args = ["--backend", "openai", "--endpoint", "/v1/completions", "--dataset-name", "random",
            "--random-input-len", "512", "--random-output-len", "128", "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(n), "--max-concurrency", str(c), "--request-rate", "inf", "--seed", str(seed),
            "--num-warmups", str(c)]
    if ids:
        args = ["--requests-file", str(_requests_file(c, n, seed, tag))] + args
    doc = C.vllm_bench(url, served, args, out, cpu=cpu, timeout=900, tokenizer=tokenizer, python=sys.executable)
    reqs = []
    for i, err in enumerate(doc["errors"]):
        if not err:
            ttft = doc["ttfts"][i]
            reqs.append({"start": doc["start_times"][i], "ttft": ttft, "e2e": ttft + sum(doc["itls"][i]),
                         "out": doc["output_lens"][i], "prompt": doc["input_lens"][i]})
    return {"reqs": reqs, "duration": doc["duration"], "failed": doc["failed"],
            "client_tok_s_reported": doc["output_throughput"], "watch": doc["_watch"]}


def one_config(argv: list[str], label: str, c: int, a: argparse.Namespace) -> dict[str, Any]:
    from optimizer.server.process import VllmServer, free_port

    port = free_port()
    argv = list(argv)
    argv[argv.index("--port") + 1] = str(port)
    served = argv[argv.index("--served-model-name") + 1]
    tokenizer = argv[argv.index("--model") + 1]
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    n = a.requests_per_user * c
    runs: list[dict[str, Any]] = []
    with VllmServer(argv, python=sys.executable, host="127.0.0.1", port=port, log_path=TMP / f"server-{label}.log",
                    env=env, pid_dir=TMP / "pids", stop_timeout_s=30) as srv:
        start_s = srv.wait_ready(a.start_timeout_s)
        print(f"{label}: server ready in {start_s:.0f} s", flush=True)
        url = srv.url
        seed = a.seed
        for spec in ["warm:ours", "warm:bench"] + a.order.split(","):
            kind, client = spec.split(":") if ":" in spec else ("run", spec)
            pinned = client.endswith("@1")
            client = client.removesuffix("@1")
            seed += 1
            tag = f"{label}-{len(runs)}-{client}{'-pinned' if pinned else ''}"
            cpu = a.client_cpu if pinned else None
            C.reset_prefix_cache(url)
            with Sampler(url) as sampler:
                if client == "ours":
                    r = run_ours(url, served, c, c * 2 if kind == "warm" else n, seed, cpu, tag)
                else:
                    r = run_bench(url, served, c, c * 2 if kind == "warm" else n, seed, cpu, tag, tokenizer,
                                  ids=(client == "bench_ids"))
            res = analyse(r["reqs"], c, r["duration"], sampler)
            res.update({"client": client, "pinned": pinned, "warm": kind == "warm", "seed": seed, "n_ok": len(r["reqs"]),
                        "failed": r["failed"], "duration_s": r["duration"],
                        "client_tok_s_reported": r["client_tok_s_reported"],
                        "client_cores": r["watch"].get("child_cores"),
                        "mean_prompt_tokens_client": statistics.fmean(x["prompt"] for x in r["reqs"]) if r["reqs"] else 0})
            s = sampler.samples
            if len(s) >= 2:
                d = {k: s[-1][1].get(k, 0.0) - s[0][1].get(k, 0.0) for k in _COUNTERS}
                res["server_run"] = {
                    "prompt_tokens_per_request": d["vllm:prompt_tokens_total"] / max(1.0, d["vllm:request_success_total"]),
                    "prefix_cache_hit_rate": d["vllm:prefix_cache_hits_total"] / d["vllm:prefix_cache_queries_total"]
                    if d["vllm:prefix_cache_queries_total"] else float("nan"),
                    "preemptions": d["vllm:num_preemptions_total"],
                    "mean_e2e_ms": d["vllm:e2e_request_latency_seconds_sum"] / max(1.0, d["vllm:e2e_request_latency_seconds_count"]) * 1000,
                    "mean_decode_ms": d["vllm:request_decode_time_seconds_sum"] / max(1.0, d["vllm:request_decode_time_seconds_count"]) * 1000,
                    "mean_queue_ms": d["vllm:request_queue_time_seconds_sum"] / max(1.0, d["vllm:request_success_total"]) * 1000}
            t0 = min((x["start"] for x in r["reqs"]), default=0.0)
            res["requests"] = [[round(x["start"] - t0, 4), round(x["ttft"] * 1000, 1), round(x["e2e"] * 1000, 1),
                                x["out"], x["prompt"]] for x in sorted(r["reqs"], key=lambda x: x["start"])]
            runs.append(res)
            srv_ = res.get("server", {})
            print(f"{tag}: client {res['client_tok_s']:.0f} tok/s (steady {res.get('client_steady_tok_s', float('nan')):.0f}), "
                  f"server steady {srv_.get('gen_tok_s', float('nan')):.0f} tok/s, running {srv_.get('running_mean', float('nan')):.1f}, "
                  f"step {srv_.get('step_ms', float('nan')):.2f} ms x {srv_.get('tokens_per_step', float('nan')):.0f} tok; "
                  f"E2E p50/p99 all {res['all']['e2e_p50']:.0f}/{res['all']['e2e_p99']:.0f} steady "
                  f"{res['steady']['e2e_p50']:.0f}/{res['steady']['e2e_p99']:.0f} ms; TTFT p50 {res['all']['ttft_p50']:.0f}; "
                  f"TPOT {res['all']['tpot_mean']:.2f} ms; prompt/req server "
                  f"{res.get('server_run', {}).get('prompt_tokens_per_request', float('nan')):.1f}; "
                  f"client cores {res['client_cores']:.2f}", flush=True)
    log_text = (TMP / f"server-{label}.log").read_text(errors="replace")
    return {"label": label, "users": c, "requests_per_run": n, "start_s": start_s,
            "flags": argv[argv.index("--served-model-name") + 3:], "runs": runs,
            "server_log_tail": log_text.splitlines()[-5:]}


def _argv_from_db(db: str, trial: int) -> list[str]:
    import optuna

    from optimizer.commands.cli import compose
    from optimizer.model.resolve import resolve_model_dir, target_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    t = next(t for t in st.trials if t.number == trial)
    argv = json.loads(t.user_attrs["server_argv"])
    cfg = compose(MODEL)
    base = resolve_model_dir(cfg.model, cfg.server.cache_dir)
    q = "fp8" if argv[argv.index("--model") + 1].endswith("-fp8") else None
    argv[argv.index("--model") + 1] = target_for(cfg.model, base, q).path
    argv[argv.index("--host") + 1] = "127.0.0.1"
    return argv


def summarize(paths: list[str]) -> str:
    """The committed results as Markdown tables: every measured run, then the median per client."""
    names = {"ours": "ours", "bench": "vllm bench serve, random dataset (text)",
             "bench_ids": "vllm bench serve, our token-id requests"}
    out = []
    for path in paths:
        for c in json.loads(Path(path).read_text())["configs"]:
            out.append(f"\n### {c['label']} at {c['users']} users ({c['requests_per_run']} requests a run; "
                       f"flags: {' '.join(c['flags']) or 'none'})\n")
            out.append("| run | client | client tok/s | server tok/s (steady) | running | step ms | tokens/step "
                       "| prefix hits | TTFT P50 | E2E P50 | E2E P99 all | E2E P99 steady | TPOT mean |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            groups: dict[str, list[dict[str, Any]]] = {}
            for i, r in enumerate(c["runs"]):
                if r["warm"]:
                    continue
                key = names[r["client"]] + (", pinned to one core" if r["pinned"] else "")
                groups.setdefault(key, []).append(r)
                sv, sr = r.get("server", {}), r.get("server_run", {})
                out.append(f"| {i - 1} | {key} | {r['client_tok_s']:,.0f} | {sv.get('gen_tok_s', float('nan')):,.0f} | "
                           f"{sv.get('running_mean', float('nan')):.1f} | {sv.get('step_ms', float('nan')):.2f} | "
                           f"{sv.get('tokens_per_step', float('nan')):.0f} | {sr.get('prefix_cache_hit_rate', float('nan')):.1%} | "
                           f"{r['all']['ttft_p50']:,.0f} | {r['all']['e2e_p50']:,.0f} | {r['all']['e2e_p99']:,.0f} | "
                           f"{r['steady']['e2e_p99']:,.0f} | {r['all']['tpot_mean']:.2f} |")
            out.append("\n| client (median of its runs) | runs | client tok/s | server tok/s | E2E P50 ms | E2E P99 all | "
                       "E2E P99 steady |")
            out.append("|---|---|---|---|---|---|---|")
            for key, rs in groups.items():
                med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
                out.append(f"| {key} | {len(rs)} | {med(lambda r: r['client_tok_s']):,.0f} | "
                           f"{med(lambda r: r.get('server', {}).get('gen_tok_s', float('nan'))):,.0f} | "
                           f"{med(lambda r: r['all']['e2e_p50']):,.0f} | {med(lambda r: r['all']['e2e_p99']):,.0f} | "
                           f"{med(lambda r: r['steady']['e2e_p99']):,.0f} |")
    return "\n".join(out)


MODEL = ["model=llama-3-8b-instruct", "model.load_format=dummy", "model.generate=config"]
TMP = Path("/tmp/reference-agreement")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="the study's SQLite file (server_argv of each trial)")
    ap.add_argument("--model", help="the study's model preset when not the Llama-3-8B shape (dummy weights), "
                    "e.g. smollm2-135m-instruct; its folder must be where the study's server read it")
    ap.add_argument("--config", action="append", default=[], help="TRIAL:USERS, e.g. 7:88")
    ap.add_argument("--local-tiny", type=int, default=0, metavar="USERS",
                    help="a check of this script on vLLM's CPU build: the generated tiny model at USERS users")
    ap.add_argument("--order", default="ours,bench,bench_ids,bench_ids,bench,ours,ours@1,bench@1",
                    help="runs after the two warm-ups; @1: the client pinned to one core")
    ap.add_argument("--requests-per-user", type=int, default=8)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--seed", type=int, default=7000)
    ap.add_argument("--start-timeout-s", type=float, default=600)
    ap.add_argument("--out", help="result JSON")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print committed results as Markdown tables")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        return 0
    if not a.out:
        raise SystemExit("--out is required")
    TMP.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"benchmark": "reference_agreement", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "machine": C.machine(), "args": {k: v for k, v in vars(a).items() if k != "out"},
                           "configs": []}
    global MODEL
    if a.local_tiny:
        from optimizer.model.tiny import write_tiny_model

        MODEL = ["model=tiny"]
        argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(write_tiny_model(C.TINY)),
                "--host", "127.0.0.1", "--port", "0", "--served-model-name", "tiny", "x",
                "--kv-cache-memory-bytes", str(2 * 2**30)]
        doc["configs"].append(one_config(argv, "tiny", a.local_tiny, a))
        Path(a.out).write_text(json.dumps(doc, indent=1, default=float))
    if a.model:
        MODEL = [f"model={a.model}"]
    for spec in a.config:
        trial, users = (int(x) for x in spec.split(":"))
        if not a.db:
            raise SystemExit("--config needs --db")
        doc["configs"].append(one_config(_argv_from_db(a.db, trial), f"t{trial}", users, a))
        Path(a.out).write_text(json.dumps(doc, indent=1, default=float).replace(str(C.REPO) + "/", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
