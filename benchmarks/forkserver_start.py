"""Start time and serving of ``server.launcher=plain`` against ``forkserver``, paired and alternating.

For each pair the same config (the tiny model, vLLM's CPU build) is started both ways, in
alternating order; each start is timed launch to ready (``VllmServer.wait_ready``, as a trial
records it) and split into phases from the server log's timestamps (whole seconds):

- ``api_import_s``: launch to the API server's first log line (its Python imports; ~0 forked);
- ``api_config_s``: to the EngineCore's first line (argument parsing, config, EngineCore spawn
  and its imports);
- ``core_to_worker_s``: to the worker's first line (the CPU worker is spawned and imports vLLM);
- ``engine_init_s``: to vLLM's "init engine ... took" line (model load, compile, warm-up);
- ``rest_s``: to ready.

Each server then serves the same fixed greedy burst (output tok/s, and whether its text equals
the first server's), is stopped, and its group is checked empty. The zygote's own import time
is measured once, before the pairs (paid once per study). Results:
``benchmarks/results/forkserver_start.json``.

``--interleaved N`` instead keeps one server of each launcher running side by side and sends them
the same burst in alternating order N times (A B, B A, ...): the serving comparison without the
host's load drift between two starts (results: ``forkserver_serving.json``).

    .venv/bin/python benchmarks/forkserver_start.py --pairs 3
    .venv/bin/python benchmarks/forkserver_start.py --interleaved 6 --out forkserver_serving
    # a GPU host (vLLM bundle staged): a dummy-weight Llama-3-8B, one GPU
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/forkserver_start.py --pairs 2 --python python3 \
        --model /root/model/llama8b-dummy --server-args "--load-format dummy --max-model-len 4096" \
        --out-dir /tmp --out forkserver_start-h200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

import _common as C  # noqa: E402  (puts the repo on sys.path)

from optimizer.model.tiny import write_tiny_model  # noqa: E402
from optimizer.server import launcher as launchers  # noqa: E402
from optimizer.server import pidfile  # noqa: E402
from optimizer.server.process import VllmServer, free_port  # noqa: E402

_STAMP = re.compile(r"^\((\w+) pid=\d+\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d)")
MODULE = "vllm.entrypoints.openai.api_server"


def phases(text: str, launched: float, ready_s: float) -> dict[str, float]:
    """Seconds between the log's landmarks (see the module docstring); NaN where one is missing."""
    year = datetime.fromtimestamp(launched).year
    first: dict[str, float] = {}
    init_done = float("nan")
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        who = m.group(1).replace("VllmWorker", "Worker")
        t = datetime.strptime(f"{year}-{m.group(2)}", "%Y-%m-%d %H:%M:%S").timestamp()
        first.setdefault(who, t)
        if "init engine (profile, create kv cache, warmup model) took" in line:
            init_done = t
    nan = float("nan")
    api, core, worker = first.get("APIServer", nan), first.get("EngineCore", nan), first.get("Worker", nan)
    return {"api_import_s": api - launched, "api_config_s": core - api, "core_to_worker_s": worker - core,
            "engine_init_s": init_done - worker, "rest_s": launched + ready_s - init_done}


async def burst(url: str, n: int, concurrency: int, max_tokens: int, model: str = "tiny") -> tuple[float, list[str]]:
    """Output tok/s of ``n`` greedy requests at ``concurrency``; and the greedy answers to four
    prompts sent one at a time before it (batched answers may differ in the last bits between
    runs on the CPU build: bf16 sums depend on the batch, so only the sequential ones compare)."""
    sem = asyncio.Semaphore(concurrency)
    texts: list[str] = [""] * n
    tokens = 0
    answers: list[str] = []

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        async with sem:
            r = await client.post(url + "/v1/completions", json={
                "model": model, "prompt": f"request {i}: tell me about the number {i * 7}",
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
            body = r.json()
            texts[i] = body["choices"][0]["text"]
            tokens += int(body["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=300) as client:
        for i in range(4):  # also the warm-up
            await one(i, client)
            answers.append(texts[i])
        tokens = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, client) for i in range(n)))
        return tokens / (time.perf_counter() - t0), answers


def server_argv(port: int, args: argparse.Namespace) -> list[str]:
    return ["-m", MODULE, "--model", args.model, "--served-model-name", "tiny", "--host", "127.0.0.1",
            "--port", str(port), *shlex.split(args.server_args)]


def start_once(launcher: str, env: dict[str, str], tag: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    argv = server_argv(port, args)
    log = Path(f"/tmp/forkserver-bench-{tag}.log")
    log.unlink(missing_ok=True)
    srv = VllmServer(argv, python=args.python, host="127.0.0.1", port=port, log_path=log, env=env,
                     pid_dir=C.REPO / ".cache" / "pids", launcher=launcher)
    load = os.getloadavg()[0]
    launched = time.time()
    with srv:
        ready = srv.wait_ready(args.timeout)
        tok_s, texts = asyncio.run(burst(srv.url, args.requests, args.concurrency, args.max_tokens))
        pgid = srv.pid
    left = pidfile.group_members(pgid)
    row = {"launcher": launcher, "start_s": ready, "launch_s": srv.launch_s, "loadavg1": load,
           **phases(srv.log_text(), launched, ready), "output_tok_s": tok_s, "stop_s": srv.stop_seconds,
           "group_left": len(left), "exit_code": srv.poll(), "texts": texts}
    print(f"{tag}: {launcher:10s} ready {ready:6.1f} s  api_import {row['api_import_s']:5.0f} s  "
          f"{tok_s:6.1f} tok/s  load {load:.1f}  group left {len(left)}", flush=True)
    return row


def interleaved(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """One server per launcher, both up; the same burst to each in alternating order."""
    servers: dict[str, VllmServer] = {}
    for launcher in launchers.LAUNCHERS:
        port = free_port()
        argv = server_argv(port, args)
        log = Path(f"/tmp/forkserver-serving-{launcher}.log")
        log.unlink(missing_ok=True)
        servers[launcher] = VllmServer(argv, python=args.python, host="127.0.0.1", port=port, log_path=log, env=env,
                                       pid_dir=C.REPO / ".cache" / "pids", launcher=launcher)
    rows: list[dict[str, Any]] = []
    try:
        for launcher, srv in servers.items():
            srv.start()
            srv.wait_ready(args.timeout)
        for i in range(args.interleaved):
            order = launchers.LAUNCHERS if i % 2 == 0 else tuple(reversed(launchers.LAUNCHERS))
            for launcher in order:
                members = C._group_pids(servers[launcher].pid)
                cpu0 = sum(C._proc_cpu(p) for p in members)
                tok_s, texts = asyncio.run(burst(servers[launcher].url, args.requests, args.concurrency,
                                                 args.max_tokens))
                # CPU seconds the server group spent on the burst (and the 4 sequential requests before
                # it): less sensitive to the host's load than tok/s
                cpu_s = sum(C._proc_cpu(p) for p in members) - cpu0
                rows.append({"round": i, "launcher": launcher, "output_tok_s": tok_s, "texts": texts,
                             "group_cpu_s": cpu_s, "loadavg1": os.getloadavg()[0]})
                print(f"round {i}: {launcher:10s} {tok_s:6.1f} tok/s  {cpu_s:5.1f} CPU s  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        launchers.shutdown_zygotes()
    reference = rows[0]["texts"]
    for r in rows:
        r["same_answers_as_first"] = r.pop("texts") == reference
    ratios = [f["output_tok_s"] / p["output_tok_s"] for i in range(args.interleaved)
              for p in rows if p["round"] == i and p["launcher"] == "plain"
              for f in rows if f["round"] == i and f["launcher"] == "forkserver"]
    return {"runs": rows, "paired_tok_s_ratio": ratios, "median_tok_s_ratio": statistics.median(ratios),
            "median_tok_s": {k: statistics.median(r["output_tok_s"] for r in rows if r["launcher"] == k)
                             for k in launchers.LAUNCHERS},
            "median_group_cpu_s": {k: statistics.median(r["group_cpu_s"] for r in rows if r["launcher"] == k)
                                   for k in launchers.LAUNCHERS},
            "all_same_answers": all(r["same_answers_as_first"] for r in rows)}


def _write(args: argparse.Namespace, doc: dict[str, Any]) -> Path:
    if not args.out_dir:
        return C.write_result(args.out, doc)
    path = Path(args.out_dir) / f"{args.out}.json"
    path.write_text(json.dumps({"benchmark": args.out, "machine": C.machine(), **doc}, indent=1, default=float))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--interleaved", type=int, default=0, help="serving comparison: this many alternating rounds")
    ap.add_argument("--out", default="forkserver_start")
    ap.add_argument("--out-dir", default="", help="write <out>.json here (default benchmarks/results)")
    ap.add_argument("--model", default="", help="model folder (default: the generated tiny model)")
    ap.add_argument("--server-args", default=f"--kv-cache-memory-bytes {2 * 2**30}",
                    help="further vLLM flags (default: the CPU build's KV cache size)")
    ap.add_argument("--python", default=C.PY, help="interpreter that runs vLLM (default: the repo's .venv)")
    args = ap.parse_args()
    if not args.model:
        write_tiny_model(C.TINY)
        args.model = str(C.TINY)
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(C.REPO / ".cache" / "vllm"),
               PYTHONUNBUFFERED="1", VLLM_NO_USAGE_STATS="1")
    config = {"model": "tiny (generated)" if args.model == str(C.TINY) else Path(args.model).name,
              "server_args": args.server_args, "module": MODULE, "requests": args.requests,
              "concurrency": args.concurrency, "max_tokens": args.max_tokens}
    if args.interleaved:
        doc = interleaved(env, args)
        path = _write(args, {"config": {**config, "rounds": args.interleaved}, **doc})
        print(f"tok/s forkserver / plain per round: {[round(r, 3) for r in doc['paired_tok_s_ratio']]}; "
              f"median {doc['median_tok_s_ratio']:.3f}; same sequential answers: {doc['all_same_answers']}; "
              f"written {path}")
        return 0
    zygote = launchers.zygote_for(args.python, MODULE, env, C.REPO / ".cache" / "zygote")
    zygote.wait_ready(args.timeout)
    print(f"zygote imported vLLM in {zygote.ready_s:.1f} s (once per study)", flush=True)
    rows: list[dict[str, Any]] = []
    for i in range(args.pairs):
        order = ("plain", "forkserver") if i % 2 == 0 else ("forkserver", "plain")
        for launcher in order:
            rows.append({"pair": i, **start_once(launcher, env, f"{i}-{launcher}", args)})
    launchers.shutdown_zygotes()
    reference = rows[0]["texts"]
    for r in rows:
        r["same_answers_as_first"] = r.pop("texts") == reference
    summary: dict[str, Any] = {}
    for launcher in launchers.LAUNCHERS:
        mine = [r for r in rows if r["launcher"] == launcher]
        summary[launcher] = {k: statistics.median(r[k] for r in mine) for k in
                             ("start_s", "api_import_s", "api_config_s", "core_to_worker_s", "engine_init_s",
                              "rest_s", "output_tok_s")}
    diffs = [p["start_s"] - f["start_s"] for i in range(args.pairs)
             for p in rows if p["pair"] == i and p["launcher"] == "plain"
             for f in rows if f["pair"] == i and f["launcher"] == "forkserver"]
    ratios = [f["output_tok_s"] / p["output_tok_s"] for i in range(args.pairs)
              for p in rows if p["pair"] == i and p["launcher"] == "plain"
              for f in rows if f["pair"] == i and f["launcher"] == "forkserver"]
    doc = {"config": {**config, "pairs": args.pairs},
           "zygote_import_s": zygote.ready_s, "runs": rows, "median": summary,
           "paired_saving_s": diffs, "median_paired_saving_s": statistics.median(diffs),
           "paired_tok_s_ratio": ratios, "all_same_answers": all(r["same_answers_as_first"] for r in rows),
           "all_groups_empty": all(r["group_left"] == 0 for r in rows)}
    path = _write(args, doc)
    print(C.table(["launcher", *summary["plain"].keys()],
                  [[k, *(f"{v:.1f}" for v in s.values())] for k, s in summary.items()]))
    print(f"paired saving (plain - forkserver), s: {[round(d, 1) for d in diffs]}; "
          f"tok/s ratio: {[round(r, 3) for r in ratios]}; written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
