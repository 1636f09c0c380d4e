"""Server start: the product's trial start against a plain ``api_server`` start of the same flags.

For each config, in alternating order each round (A B, then B A), the benchmark runs

- ``product:<variant>``: a one-trial study of ``python -m optimizer.run`` (the baseline trial, with
  the config's overrides and the variant's), whose start is read back from the study database as
  the trial recorded it (launch to ready: ``timings.start_s``), with vLLM's own account of the
  start (``start_log``);
- ``plain``: ``python -m vllm.entrypoints.openai.api_server`` with the argv that trial rendered
  (``command.txt``, the command a user reruns) and the server environment the product gives it,
  timed from ``Popen`` to ``GET /v1/models`` answering, as the product's readiness check does.

Each start is split into phases from the log: model load, torch.compile, CUDA-graph capture, the
rest of engine initialisation (profiling, KV cache, warm-up), and what is left (Python imports and
process start of the API server and the engine core, and the API server's own set-up). Round 0
warms the caches and is reported apart (``cold``); the summary is over the later rounds.

Variants are the cuts: product overrides that change how a server is started, e.g. a cold compile
cache (``server.compile_cache_dir={fresh}``: a new empty folder each round) against the shared one.

Examples::

    # CPU (this repository's tiny model), 3 rounds
    python benchmarks/start_time.py --rounds 3
    # the fork-server launcher against the plain one (each product run is a one-trial study, so its
    # start includes the zygote's own imports; benchmarks/forkserver_start.py times later starts)
    python benchmarks/start_time.py --rounds 3 --variant plain= --variant forkserver=server.launcher=forkserver
    # a GPU host (vLLM bundle staged, model folder at /root/model/llama8b-dummy)
    python benchmarks/start_time.py --rounds 3 --python python3 --name start_time-h200 \\
        --base "hardware=h200 model=llama-3-8b-instruct model.load_format=dummy model.generate=config \\
                search=gpu search.max_model_len=[4096]" \\
        --config "defaults=" --config "mns128=server.extra_args=[--max-num-seqs,128]"
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, REPO, median, table, write_result  # noqa: E402

import httpx  # noqa: E402
import optuna  # noqa: E402

from optimizer.record import TrialRecord  # noqa: E402
from optimizer.server.process import free_port  # noqa: E402
from optimizer.server.startlog import START_PHASES, StartLog, parse_start_log  # noqa: E402

PHASES = ("model_load_s", "compile_s", "graph_capture_s", "engine_init_other_s", "imports_and_rest_s")

# a trial that measures next to nothing: the start is what is timed
PRODUCT_FIXED = ["study.n_trials=1", "study.enqueue_baseline=true", "slo.p99_ms=1000000", "load.num_requests=4",
                 "load.warmup_requests=1", "load.p99_sizing=off", "quality.mode=off", "study.confirm.top_k=0",
                 "load.concurrency=2"]


_PHASE_KEYS = dict(zip((label for label, _ in START_PHASES),
                       ("imports_and_rest_s", "model_load_s", "compile_s", "graph_capture_s", "engine_init_other_s")))


def phases(start_s: float, log: StartLog) -> dict[str, float]:
    """The start split by the product's reading of vLLM's log (StartLog.phases), under this
    benchmark's keys; NaN throughout where the log gives no engine init time."""
    split = log.phases(start_s) or {}
    return {key: split.get(label, math.nan) for label, key in _PHASE_KEYS.items()}


def product_start(base: list[str], overrides: list[str], work: Path, label: str, timeout: float) -> dict[str, Any]:
    """One trial of ``optimizer.run``; its recorded start and start log."""
    name = f"st-{label}-{int(time.time() * 1000)}"
    db = work / f"{name}.db"
    fixed = [f for f in PRODUCT_FIXED if f.split("=", 1)[0] not in {o.split("=", 1)[0] for o in LOAD_OVERRIDES}]
    argv = [PY if PY_OVERRIDE is None else PY_OVERRIDE, "-m", "optimizer.run", *base, *fixed, *LOAD_OVERRIDES,
            *overrides,
            f"study.name={name}", f"study.storage=sqlite:///{db}", f"study.runs_dir={work / 'runs'}",
            "report=false"]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    if not db.is_file():
        raise RuntimeError(f"{label}: optimizer.run exited {p.returncode} without a study: {p.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = [t for t in study.get_trials(deepcopy=False)]
    if not trials:
        raise RuntimeError(f"{label}: no trial ran (exit {p.returncode}): {p.stderr[-3000:]}")
    rec = TrialRecord.from_trial(trials[0])
    start_s = rec.timings.start_s if rec.timings else math.nan
    log = rec.start_log or StartLog()  # the product's own reading of the server's log
    cmd = rec.launch.command if rec.launch else ""
    ok = rec.failure is None and rec.measured
    tok_s = rec.measurement.summary.output_tok_s if rec.measurement is not None else math.nan
    return {"start_s": start_s, "ok": ok, "run_wall_s": wall, "command": cmd, "compile_cache_hit": log.compile_cache_hit,
            "compile_key": log.compile_key, "output_tok_s": tok_s,
            "failure": rec.failure.label if rec.failure else "", **phases(start_s, log)}


def _server_env(overrides: list[str]) -> dict[str, str]:
    """The environment a trial's server gets (optimizer.server.environment.server_env), from this one."""
    from optimizer.server.environment import server_env
    from optimizer.settings.config import ServerConfig

    key = "server.compile_cache_dir="
    cache_dir = next((o[len(key):] for o in overrides if o.startswith(key)), "")
    return server_env(ServerConfig(compile_cache_dir=str(REPO / cache_dir) if cache_dir else ""), os.environ)


def plain_start(command: str, overrides: list[str], work: Path, label: str, timeout: float) -> dict[str, Any]:
    """The trial's command, run as a user would; timed from launch to /v1/models answering."""
    argv = shlex.split(command)
    if PY_OVERRIDE is not None:
        argv[0] = PY_OVERRIDE
    port = free_port()
    argv = _with_port(argv, port)
    log_path = work / f"plain-{label}-{int(time.time())}.log"
    with open(log_path, "wb") as logf:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, env=_server_env(overrides),
                             start_new_session=True)
        try:
            start_s = _wait_models(f"http://127.0.0.1:{port}", p, t0, timeout)
        finally:
            _kill_group(p)
    log = parse_start_log(log_path.read_text(errors="replace"))
    return {"start_s": start_s, "ok": not math.isnan(start_s), "compile_cache_hit": log.compile_cache_hit,
            **phases(start_s, log)}


def _with_port(argv: list[str], port: int) -> list[str]:
    out = list(argv)
    if "--port" in out:
        out[out.index("--port") + 1] = str(port)
    else:
        out += ["--port", str(port)]
    return out


def _wait_models(url: str, p: subprocess.Popen[bytes], t0: float, timeout: float) -> float:
    with httpx.Client(timeout=5) as c:
        while time.monotonic() - t0 < timeout:
            if p.poll() is not None:
                return math.nan
            try:
                if c.get(url + "/v1/models").status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    return math.nan


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _variant_overrides(spec: str, work: Path, rnd: int) -> list[str]:
    """A variant's overrides; ``{fresh}`` becomes a new empty folder (a cold cache) each round."""
    out = []
    for o in shlex.split(spec):
        if "{fresh}" in o:
            d = work / f"fresh-{rnd}-{time.time_ns()}"
            d.mkdir()
            o = o.replace("{fresh}", str(d))
        out.append(o)
    return out


def _pair(spec: str) -> tuple[str, str]:
    name, _, rest = spec.partition("=")
    if not name:
        raise SystemExit(f"{spec!r}: expected NAME=OVERRIDES")
    return name, rest


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median start and phases per (config, way) over the rounds after the first (warm), and the
    paired differences of each product way against the plain start of the same round."""
    out = []
    keys = sorted({(r["config"], r["way"]) for r in runs})
    for cfg, way in keys:
        warm = [r for r in runs if r["config"] == cfg and r["way"] == way and r["round"] > 0 and r["ok"]]
        cold = [r for r in runs if r["config"] == cfg and r["way"] == way and r["round"] == 0]
        row: dict[str, Any] = {"config": cfg, "way": way, "n": len(warm),
                               "start_s": median([r["start_s"] for r in warm]),
                               "start_min_s": min((r["start_s"] for r in warm), default=math.nan),
                               "start_max_s": max((r["start_s"] for r in warm), default=math.nan),
                               "cold_start_s": cold[0]["start_s"] if cold else math.nan,
                               "compile_hits": sum(1 for r in warm if r.get("compile_cache_hit")),
                               "output_tok_s": median([r.get("output_tok_s", math.nan) for r in warm]),
                               **{p: median([r[p] for r in warm]) for p in PHASES}}
        if way != "plain":
            diffs = []
            for r in warm:
                twin = [q for q in runs if q["config"] == cfg and q["way"] == "plain" and q["round"] == r["round"]
                        and q["ok"]]
                if twin:
                    diffs.append(r["start_s"] - twin[0]["start_s"])
            row["minus_plain_s"] = median(diffs)
        out.append(row)
    return out


PY_OVERRIDE: Optional[str] = None
LOAD_OVERRIDES: list[str] = []  # --load: replace the fixed next-to-nothing load (to compare throughput too)


def main() -> int:
    global PY_OVERRIDE, LOAD_OVERRIDES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="hardware=cpu model=tiny workload=chat-short",
                    help="product overrides for every run (default: the CPU demo's model)")
    ap.add_argument("--config", action="append", default=[],
                    help="NAME=OVERRIDES: a config (product overrides; the trial is the baseline with them); "
                         "repeatable (default: defaults=)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=OVERRIDES: a way of starting by the product, '{fresh}' = a new empty folder each "
                         "round (default: shared=)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain api_server start")
    ap.add_argument("--load", default="", help="load.* overrides replacing the fixed next-to-nothing load, so that "
                                               "each product start also measures throughput (output_tok_s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; round 0 warms the caches (default 3)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--python", default=None, help="interpreter for the product and vLLM (default: the repo's .venv)")
    ap.add_argument("--name", default="start_time-cpu", help="result file benchmarks/results/<name>.json")
    ap.add_argument("--out", default=None, help="write the result here instead of benchmarks/results/")
    a = ap.parse_args()
    PY_OVERRIDE = a.python
    LOAD_OVERRIDES = shlex.split(a.load)
    base = shlex.split(a.base)
    configs = [_pair(c) for c in (a.config or ["defaults="])]
    variants = [_pair(v) for v in (a.variant or ["shared="])]
    ways = [f"product:{n}" for n, _ in variants] + ([] if a.no_plain else ["plain"])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="start-time-", dir=REPO / ".cache" if (REPO / ".cache").is_dir()
                                     else None) as tmp:
        work = Path(tmp)
        for rnd in range(a.rounds):
            for cname, cspec in configs:
                order = ways if rnd % 2 == 0 else list(reversed(ways))
                command = ""
                for way in order:
                    label = f"{cname}-{way.replace(':', '-')}-{rnd}"
                    t = time.monotonic()
                    if way == "plain":
                        if not command:  # the trial's command is needed first
                            first = product_start(base, shlex.split(cspec), work, label + "-cmd", a.timeout)
                            command = first["command"]
                        r = plain_start(command, base + shlex.split(cspec), work, label, a.timeout)
                    else:
                        spec = dict(variants)[way.split(":", 1)[1]]
                        ov = shlex.split(cspec) + _variant_overrides(spec, work, rnd)
                        r = product_start(base, ov, work, label, a.timeout)
                        command = command or r.pop("command")
                        r.pop("command", None)
                    r.update(config=cname, way=way, round=rnd)
                    runs.append(r)
                    print(f"round {rnd} {cname} {way}: start {r['start_s']:.1f} s "
                          f"(compile {r['compile_s']:.1f}, hit {r['compile_cache_hit']}) [{time.monotonic() - t:.0f} s]",
                          flush=True)
    summary = summarize(runs)
    cols = ["config", "way", "n", "start_s", "start_min_s", "start_max_s", "cold_start_s", "minus_plain_s",
            "compile_hits", "output_tok_s", *PHASES]
    print(table(cols, [[s.get(c, math.nan) for c in cols] for s in summary]))
    doc = {"args": {"base": a.base, "configs": dict(configs), "variants": dict(variants), "rounds": a.rounds,
                    "plain": not a.no_plain, "load": a.load},
           "what": "start_s: launch to ready (product: as the trial recorded it; plain: Popen to /v1/models 200). "
                   "Round 0 (cold) apart; summary = median over later rounds; minus_plain_s = paired median "
                   "difference to the plain start of the same round.",
           "summary": summary, "runs": runs}
    if a.out:
        import json

        Path(a.out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
        print("wrote", a.out)
    else:
        print("wrote", write_result(a.name, doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
