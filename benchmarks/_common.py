"""Shared plumbing of the benchmark scripts: machine state, CPU accounting, pinned processes,
``vllm bench serve`` runs, tables and result files. Not a test helper: benchmarks print numbers."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
TINY = REPO / ".cache" / "models" / "tiny"
sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        avx512 = "avx512f" in flags
    except OSError:
        avx512 = False
    mem = 0.0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512": avx512, "mem_gib": round(mem, 1),
            "kernel": platform.release(), "python": platform.python_version(), "loadavg": os.getloadavg()}


def _cpu_total() -> tuple[float, float, float]:
    """(busy, total, steal) jiffies of the whole machine (steal: the hypervisor gave our vCPUs away)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    v = [float(x) for x in f]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v), v[7] if len(v) > 7 else 0.0


def _proc_cpu(pid: int) -> float:
    """CPU seconds of pid and its reaped children (utime+stime+cutime+cstime)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(float(x) for x in parts[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _group_pids(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


@dataclass
class CpuWatch:
    """Machine CPU busy during a window, and how much of it was ours (the pids given)."""

    pids: Sequence[int] = ()
    t0: float = 0.0
    busy0: float = 0.0
    tot0: float = 0.0
    steal0: float = 0.0
    ours0: dict[int, float] = field(default_factory=dict)
    result: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> "CpuWatch":
        self.t0 = time.monotonic()
        self.busy0, self.tot0, self.steal0 = _cpu_total()
        self.ours0 = {p: _proc_cpu(p) for p in self.pids}
        return self

    def __exit__(self, *exc: object) -> None:
        busy, tot, steal = _cpu_total()
        wall = time.monotonic() - self.t0
        ncpu = os.cpu_count() or 1
        busy_cores = (busy - self.busy0) / max(1.0, tot - self.tot0) * ncpu
        steal_cores = (steal - self.steal0) / max(1.0, tot - self.tot0) * ncpu
        ours = sum(_proc_cpu(p) - self.ours0.get(p, 0.0) for p in self.pids) / max(wall, 1e-9)
        self.result = {"wall_s": wall, "machine_busy_cores": busy_cores, "ours_cores": ours,
                       "others_cores": max(0.0, busy_cores - ours), "steal_cores": steal_cores,
                       "loadavg1": os.getloadavg()[0]}


def pinned(cpu: Optional[int]):  # preexec_fn
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None


def run_cmd(argv: list[str], cpu: Optional[int] = None, timeout: float = 600, env: Optional[dict] = None,
            watch_pids: Sequence[int] = ()) -> tuple[subprocess.CompletedProcess[str], dict[str, float], float]:
    """Run argv (pinned to ``cpu``); returns (process, CpuWatch over it + watch_pids, its CPU seconds)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         preexec_fn=pinned(cpu), env=env)
    w = CpuWatch(list(watch_pids))
    with w:
        out, err = p.communicate(timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    r = w.result
    r["child_cores"] = cpu_s / max(r["wall_s"], 1e-9)
    r["others_cores"] = max(0.0, r["machine_busy_cores"] - r["ours_cores"] - r["child_cores"])
    return subprocess.CompletedProcess(argv, p.returncode, out, err), r, cpu_s


def loadtest(endpoint: str, overrides: list[str], out: Path, cpu: Optional[int] = None,
             timeout: float = 600, watch_pids: Sequence[int] = ()) -> dict[str, Any]:
    """Run ``python -m optimizer.loadtest`` (pinned) and return its JSON."""
    argv = [PY, "-m", "optimizer.loadtest", f"endpoint={endpoint}", f"out={out}", *overrides]
    p, watch, _ = run_cmd(argv, cpu, timeout, watch_pids=watch_pids)
    if not out.is_file():  # exit code 1 with a file: it ran, nothing succeeded
        raise RuntimeError(f"loadtest failed ({p.returncode}): {p.stderr[-2000:]}")
    doc = json.loads(out.read_text())
    doc["_watch"] = watch
    return doc


def vllm_bench(base_url: str, model: str, args: list[str], out: Path, cpu: Optional[int] = None,
               timeout: float = 900, watch_pids: Sequence[int] = (), tokenizer: Optional[str] = None,
               python: Optional[str] = None) -> dict[str, Any]:
    """Run ``vllm bench serve`` (pinned) and return its saved result JSON."""
    argv = [python or PY, str(REPO / "benchmarks" / "vllm_bench_serve.py"), "--base-url", base_url, "--model", model,
            "--tokenizer", tokenizer or str(TINY), "--save-result", "--save-detailed", "--result-dir", str(out.parent),
            "--result-filename", out.name, "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    p, watch, _ = run_cmd(argv, cpu, timeout, env=env, watch_pids=watch_pids)
    if p.returncode != 0 or not out.is_file():
        raise RuntimeError(f"vllm bench serve failed ({p.returncode}): {p.stdout[-1500:]} {p.stderr[-1500:]}")
    doc = json.loads(out.read_text())
    doc["_watch"] = watch
    return doc


def bench_dists(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """P50/P99 (ms) of TTFT, ITL, E2E from a ``vllm bench serve --save-detailed`` result, recomputed
    with numpy from its per-request arrays (successful requests only)."""
    import numpy as np

    ok = [i for i, e in enumerate(doc["errors"]) if not e]
    ttft = [doc["ttfts"][i] * 1000 for i in ok]
    # vLLM 0.32 saves per-request "latencies"; 0.26 does not: its E2E is the TTFT plus the gaps
    lat = doc.get("latencies") or doc.get("e2els")
    e2e = ([lat[i] * 1000 for i in ok] if lat else
           [(doc["ttfts"][i] + sum(doc["itls"][i])) * 1000 for i in ok])
    itl = [x * 1000 for i in ok for x in doc["itls"][i]]
    out = {}
    for k, v in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
        a = np.asarray(v, dtype=float)
        out[k] = {"n": int(a.size), "p50": float(np.percentile(a, 50)) if a.size else float("nan"),
                  "p99": float(np.percentile(a, 99)) if a.size else float("nan")}
    return out


def our_dists(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    s = doc["summary"]
    return {k: {"n": s[k]["n"], "p50": s[k]["p50"], "p99": s[k]["p99"]} for k in ("ttft", "itl", "e2e")}


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def write_result(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **doc}
    path.write_text(json.dumps(doc, indent=1, default=float, allow_nan=True) + "\n")
    return path


@contextmanager
def vllm_server(port: int, extra: Sequence[str] = (), log: Optional[Path] = None,
                start_timeout_s: float = 300, dev_mode: bool = False) -> Iterator[Any]:
    """A real vLLM CPU server on the tiny model, via the project's VllmServer (process group, stop).
    ``dev_mode``: VLLM_SERVER_DEV_MODE=1, so that POST /reset_prefix_cache works."""
    from optimizer.model.tiny import write_tiny_model
    from optimizer.server.process import VllmServer

    write_tiny_model(TINY)
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(REPO / ".cache" / "vllm"))
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(port), "--kv-cache-memory-bytes", str(2 * 2**30), *extra]
    log = log or Path(f"/tmp/bench-vllm-{port}.log")
    srv = VllmServer(argv, python=PY, host="127.0.0.1", port=port, log_path=log, env=env,
                     pid_dir=REPO / ".cache" / "pids", stop_timeout_s=30)
    with srv:
        t = srv.wait_ready(start_timeout_s)
        srv.start_s = t  # type: ignore[attr-defined]
        yield srv


def reset_prefix_cache(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url + "/reset_prefix_cache", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False
