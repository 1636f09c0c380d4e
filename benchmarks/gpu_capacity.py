"""Capacity under the SLO on a GPU: the highest concurrency each config carries at P99 E2E <= limit.

For each config (``LABEL|vLLM flags``): start a vLLM server (its own session, killed with its whole
group afterwards), wait for /health, run the capacity search exactly as ``load.mode=capacity`` runs
it in a trial (optimizer.capacity: double from ``--start``, bisect to ``--resolution``; probes of
max(``--requests``, 4 x C) requests, one concurrency window of warm-up at each new level; a new
prompt seed per probe), and keep every probe. Completions of ``--prompt`` random token ids and
``--output`` tokens (``ignore_eos``), greedy, as the study's load test sends them.

Usage (GPU host, vLLM importable)::

    python benchmarks/gpu_capacity.py --model /root/model/llama8b-dummy --out results.json \\
        'defaults|--load-format dummy --max-model-len 4096' \\
        'winner|--load-format dummy --max-model-len 4096 --quantization fp8 --kv-cache-dtype fp8 ...'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from optimizer.capacity import CapacitySearch, LoadProbe, SearchPlan, find_capacity  # noqa: E402
from optimizer.loadgen.client import Endpoint  # noqa: E402
from optimizer.loadgen.workload import RequestSet  # noqa: E402
from optimizer.server.telemetry import TelemetrySampler  # noqa: E402
from optimizer.settings.config import CapacityConfig, LoadConfig, ModelConfig, SloConfig, WorkloadConfig  # noqa: E402


def _healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/health", timeout=2).status == 200
    except OSError:
        return False


def _one(label: str, flags: str, a: argparse.Namespace, port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    log = open(Path(a.logs) / f"server-{label}.log", "w")
    argv = [sys.executable, "-m", a.module, "--model", a.model, "--served-model-name",
            "m", "--port", str(port), *shlex.split(flags)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out: dict[str, Any] = {"label": label, "flags": flags}
    try:
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() - t0 > a.start_timeout:
                out["error"] = f"server not ready (exit {proc.poll()})"
                return out
            time.sleep(1)
        out["start_s"] = round(time.monotonic() - t0, 1)
        print(f"{label}: ready in {out['start_s']} s", flush=True)
        model = ModelConfig(name="m", path=a.model, vocab_size=128256, prompt_token_low=1000)
        rs = RequestSet.build(WorkloadConfig(name="cap", prompt_tokens=a.prompt, output_tokens=a.output), model)
        cap = CapacityConfig(start=a.start, max=a.max, resolution=a.resolution, max_probes=a.max_probes)
        load = LoadConfig(num_requests=a.requests, warmup_requests=16, p99_sizing="off", capacity=cap)
        slo = SloConfig(p99_ms=a.slo_ms)
        probe = LoadProbe(Endpoint(url, "m"), rs, load, slo, telemetry=lambda: TelemetrySampler(url, 0.5))
        t = time.monotonic()
        r = asyncio.run(find_capacity(
            probe, CapacitySearch(SearchPlan.of(cap, a.max), slo),
            on_probe=lambda p: print(f"  {label} {p.load:g} users: {'pass' if p.passed else 'FAIL'} P99 E2E "
                                     f"{p.p99_ms:.0f} ms, {p.output_tok_s:.0f} tok/s, {p.n_requests} req, "
                                     f"KV peak {p.kv_usage_peak:.2f}", flush=True)))
        out["search_s"] = round(time.monotonic() - t, 1)
        out["capacity"] = r.to_json()
        print(f"{label}: capacity {r.value:g} users, {r.output_tok_s:.0f} tok/s ({r.limited_by.value}) "
              f"in {out['search_s']} s", flush=True)
        return out
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="LABEL|vLLM flags")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--logs", default=".")
    ap.add_argument("--slo-ms", type=float, default=2000.0)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--start", type=float, default=32)
    ap.add_argument("--max", type=float, default=256)
    ap.add_argument("--resolution", type=float, default=0.05)
    ap.add_argument("--max-probes", type=int, default=10)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--module", default="vllm.entrypoints.openai.api_server", help="a stand-in taking its flags")
    a = ap.parse_args()
    results = []
    for i, spec in enumerate(a.configs):
        label, _, flags = spec.partition("|")
        results.append(_one(label, flags, a, 8100 + i))
        Path(a.out).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k not in ("out", "logs", "model")},
                                           "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
