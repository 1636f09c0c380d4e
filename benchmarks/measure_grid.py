"""A measured grid over the CPU demo's search space, through the study's own trial runner.

Every config of a full-factorial grid over the knobs the CPU demo tunes (conf/search/default.yaml
with conf/config.yaml: the tiny model, chat-short, load.mode=concurrency at 16, the demo's
num_requests and warm-up) is measured on fresh servers, each repeat by
:func:`optimizer.trial.trial.run_trial`, the code a study trial runs, with the config built from its
Optuna params by the study's own :func:`~optimizer.space.search_space.suggest` (so a drawn
max_num_batched_tokens below what vLLM needs is raised as in a study: chunked prefill off with
max_num_batched_tokens < max_model_len is the same server as max_num_batched_tokens=max_model_len,
and its row says so).

The SLO is the demo's ``auto``: 1.5 x the P99 E2E of vLLM's defaults at this load. Each run stores its
raw measure (output tok/s, P99 and its upper bound, error rate); feasibility is decided afterwards by
the study's rule (:func:`optimizer.measures.objective.score`) against the limit calibrated on the defaults'
repeats (:func:`optimizer.trial.calibrate.calibrated_limit`), in ``table`` and in the replay
(benchmarks/search_replay.py, which calibrates each replayed study on one drawn repeat instead).

Order: repeat 1 of every distinct server in one shuffled order, then repeat 2 in another (and the
defaults' extra repeats), so no config's repeats are adjacent. One real vLLM at a time on a shared
host: ``run`` holds ``flock`` on the lock file per chunk of at most ``--chunk`` servers, lets go, and
waits before the next chunk so other users of the lock get their turn.

Usage:
  python benchmarks/measure_grid.py run [--chunk 8] [--until HH:MM] [override ...]
  python benchmarks/measure_grid.py table      # benchmarks/results/grid-cpu.csv from the runs file
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import csv
import fcntl
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from _common import RESULTS, machine
from _grid import (DEFAULTS, LEVELS, STAGES, Rep, Table, complete_stage, grid_points, key_of, outcome, restrict,
                   server_key, server_params, space_overrides)

from optimizer.commands.cli import compose
from optimizer.core.errors import TrialError
from optimizer.settings.config import Config
from optimizer.space.search_space import Space, build_space
from optimizer.study.loop import Runtime, make_context
from optimizer.trial.trial import run_trial

log = logging.getLogger("measure_grid")

REPEATS = 2
EXTRA_DEFAULT_REPEATS = 2  # the SLO is calibrated on the defaults: two more of them
OVERRIDES = ["server.launcher=forkserver", "study.name=grid-cpu"]
RUNS = RESULTS / "grid-cpu-runs.jsonl"
BUSY = RESULTS / "grid-cpu-runs-stage1-busy.jsonl"  # runs set aside: measured while other work ran on the host
CSV_PATH = RESULTS / "grid-cpu.csv"
LOCK = "/tmp/vllm-cpu.lock"


def plan(space: Space, seed: int = 28) -> list[dict[str, Any]]:
    """The runs in order, stage by stage (_grid.STAGES): each repeat of the stage's new servers in its
    own shuffled order (no two repeats of one server adjacent), the defaults' extra repeats last.
    ``repeat``: how many measured repeats the server has once the entry is done."""
    order: list[tuple[str, int]] = []
    servers: dict[str, dict[str, Any]] = {}
    for levels in STAGES:
        new = sorted({server_key(server_params(space, p)) for p in grid_points(levels)} - set(servers))
        for p in grid_points(levels):
            servers.setdefault(server_key(server_params(space, p)), p)
        for r in range(1, REPEATS + 1):
            rng = random.Random(f"{seed}:{len(servers)}:{r}")
            shuffled = new[:]
            while True:
                rng.shuffle(shuffled)
                if not order or len(shuffled) < 2 or shuffled[0] != order[-1][0]:
                    break
            order += [(s, r) for s in shuffled]
    default = server_key(server_params(space, DEFAULTS))
    order += [(default, REPEATS + i) for i in range(1, EXTRA_DEFAULT_REPEATS + 1)]
    return [{"server": s, "params": servers[s], "repeat": r} for s, r in order]


def load_runs(path: Path = RUNS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _measure_one(cfg: Config, space: Space, ctx: Any, run: dict[str, Any]) -> dict[str, Any]:
    """One fresh server through the study's trial runner; its raw measure as a flat row."""
    engine = server_params(space, run["params"])
    tag = f"[grid run {run['run']} r{run['repeat']}]"
    row: dict[str, Any] = {**run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "loadavg_before": list(os.getloadavg()), "engine": engine.as_dict()}
    t0 = time.monotonic()
    try:
        rec = run_trial(ctx, 10000 + run["run"], engine, tag, True)
    except TrialError as exc:  # the environment was in the way: the run is kept pending and retried
        row.update(error=f"{exc.reason}: {exc}", wall_s=time.monotonic() - t0, loadavg_after=list(os.getloadavg()))
        return row
    row.update(wall_s=time.monotonic() - t0, loadavg_after=list(os.getloadavg()),
               vllm_version=rec.vllm_version,
               failure=rec.failure.reason if rec.failure else "",
               start_s=rec.timings.start_s if rec.timings else float("nan"),
               load_s=rec.timings.load_s if rec.timings else float("nan"))
    m = rec.measurement
    if m is not None:
        s = m.summary
        d = s.dist(cfg.slo.metric)
        row.update(output_tok_s=s.output_tok_s, p50_ms=d.p50, p99_ms=d.p99, p99_high_ms=d.p99_high,
                   p99_max_ms=d.max, error_rate=s.error_rate, n_ok=s.n_ok, n_requests=s.n_requests)
    return row


def _pending(runs: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's entries not done yet (a server that failed three times for the environment is
    left out)."""
    measured: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in done:
        box = errors if "error" in r else measured
        box[r["server"]] = box.get(r["server"], 0) + 1
    return [r for r in runs if measured.get(r["server"], 0) < r["repeat"] and errors.get(r["server"], 0) < 3]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(overrides: list[str], chunk: int, until: Optional[str], pause_s: float) -> None:
    """Measure the pending runs, ``chunk`` servers per hold of the lock, until none is left (or the
    clock passes ``until``, HH:MM UTC)."""
    cfg = compose(OVERRIDES + overrides)
    space = build_space(cfg)
    ctx = make_context(cfg, Runtime(environ=dict(os.environ)), space)
    ctx = dataclasses.replace(ctx, calibrates=True)  # each run scores itself; feasibility comes later
    runs = plan(space)
    while pending := _pending(runs, load_runs()):
        if until and time.strftime("%H:%M", time.gmtime()) >= until:
            log.warning("it is past %s UTC: %d runs left unmeasured", until, len(pending))
            return
        t_wait = time.monotonic()
        with _locked(LOCK):
            log.info("lock held after %.0f s; %d runs pending, this chunk: %d", time.monotonic() - t_wait,
                     len(pending), min(chunk, len(pending)))
            for r in pending[:chunk]:
                if until and time.strftime("%H:%M", time.gmtime()) >= until:
                    break  # no server starts after `until`
                done = load_runs()
                r = {**r, "run": max((d["run"] for d in done), default=-1) + 1, "repeat": sum(1 for d in done if d["server"] == r["server"]
                                                         and "error" not in d) + 1}
                row = _measure_one(cfg, space, ctx, r)
                with RUNS.open("a") as fh:
                    fh.write(json.dumps(row, default=float) + "\n")
                log.info("run %d: %s", r["run"], {k: row.get(k) for k in ("output_tok_s", "p99_ms", "wall_s",
                                                                        "start_s", "error", "failure")})
        time.sleep(pause_s)


# ---- the table ---------------------------------------------------------------------------------------

def measured(path: Path = RUNS) -> dict[str, list[dict[str, Any]]]:
    """Each server's measured runs, in run order."""
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in sorted((r for r in load_runs(path) if "error" not in r), key=lambda r: r["run"]):
        by_server.setdefault(r["server"], []).append(r)
    return by_server


def load_table(path: Path = RUNS, repeats: int = REPEATS) -> tuple[Table, Space, dict[str, list[dict[str, Any]]]]:
    """The grid table of the largest complete stage (every server measured ``repeats`` times), the
    study's space restricted to its levels, and the runs of each server."""
    by_server = measured(path)
    full = build_space(compose(OVERRIDES))
    levels = complete_stage({s: len(v) for s, v in by_server.items()}, full, repeats)
    cfg = compose(OVERRIDES + space_overrides(levels))
    space = restrict(build_space(cfg), levels)
    reps = {s: [Rep.of_run(r) for r in rows] for s, rows in by_server.items()}
    return Table.build(cfg, space, reps, grid_points(levels)), space, by_server


def partial(by_server: dict[str, list[dict[str, Any]]], host: dict[str, Any]) -> str:
    """The account of a grid no stage of which is complete yet: each run measured so far."""
    space = build_space(compose(OVERRIDES))
    runs = sorted((r for v in by_server.values() for r in v), key=lambda r: r["run"])
    lines = ["# The measured CPU grid (benchmarks/measure_grid.py): PARTIAL, no stage complete", "",
             f"Host: {host['cpu']}, {host['cores']} cores, AVX-512 {'yes' if host['avx512'] else 'no'}, shared. vLLM "
             f"{', '.join(sorted({r.get('vllm_version', '') for r in runs} - {''}))} (CPU build). {len(runs)} runs of "
             f"{len(by_server)} servers so far; per stage (servers measured once / twice / in all):"]
    for i, levels in enumerate(STAGES):
        ss = {server_key(server_params(space, p)) for p in grid_points(levels)}
        lines.append(f"- stage {i + 1} ({len(grid_points(levels))} configs): {sum(1 for s in ss if by_server.get(s))} / "
                     f"{sum(1 for s in ss if len(by_server.get(s, [])) >= 2)} / {len(ss)}")
    lines += ["", "| run | started (UTC) | server | output tok/s | P99 E2E ms | load avg (1 min) | start s | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['started'][11:19]} | `{r['server']}` | {r.get('output_tok_s', 0):.0f} | "
                     f"{r.get('p99_ms', float('nan')):.0f} | {r['loadavg_before'][0]:.1f} | {r['start_s']:.0f} | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", "`python benchmarks/measure_grid.py run` goes on where it stopped; `table` writes grid-cpu.csv and "
              "the full account once the first stage has two repeats of every server."]
    return "\n".join(lines) + "\n"


def table() -> None:
    try:
        tab, _, by_server = load_table(RUNS)
    except ValueError as exc:
        CSV_PATH.with_suffix(".md").write_text(partial(measured(RUNS), machine()))
        print(f"{exc}; wrote {CSV_PATH.with_suffix('.md').name} (partial)")
        return
    cfg = tab.cfg
    host = machine()
    n_rep = max(len(by_server[s]) for s in tab.reps)
    knobs = list(LEVELS)
    head = ["config", *knobs, "server_config", "raised", "is_defaults", "n_repeats"]
    for i in range(1, n_rep + 1):
        head += [f"tok_s_{i}", f"p99_ms_{i}", f"error_rate_{i}", f"feasible_{i}", f"loadavg1_{i}", f"run_{i}"]
    head += ["mean_tok_s", "grid_feasible", "share_of_best", "slo_ms", "cpu", "cores", "avx512", "vllm"]
    with CSV_PATH.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(head)
        for p in tab.configs:
            srv = tab.server_of[key_of(p)]
            runs = by_server[srv]
            line: list[Any] = [key_of(p), *(p[k] for k in knobs), srv, srv != key_of(p), p == DEFAULTS, len(runs)]
            for i in range(n_rep):
                r = runs[i] if i < len(runs) else None
                line += ([round(r.get("output_tok_s", 0.0), 2), round(r.get("p99_ms", float("nan")), 1),
                          r.get("error_rate", ""), outcome(Rep.of_run(r), cfg, tab.slo_ms).feasible,
                          round(r["loadavg_before"][0], 2), r["run"]] if r else [""] * 6)
            line += [round(tab.mean(srv), 2), tab.feasible(srv), round(tab.share(srv), 4), tab.slo_ms, host["cpu"],
                     host["cores"], host["avx512"], ",".join(sorted({r.get("vllm_version", "") for r in runs} - {""}))]
            w.writerow(line)
    CSV_PATH.with_suffix(".md").write_text(markdown(tab, by_server, host))
    print(f"wrote {CSV_PATH.name}: {len(tab.configs)} configs, {len(tab.reps)} servers, SLO "
          f"{tab.slo_ms:.0f} ms, best {tab.best} ({tab.mean(tab.best):.1f} tok/s), noise {tab.noise:.3f}")


def markdown(tab: Table, by_server: dict[str, list[dict[str, Any]]], host: dict[str, Any]) -> str:
    """The grid's short account: host, levels, SLO, each server's repeats, each knob's main effect."""
    runs = [r for s in tab.reps for r in by_server[s]]
    levels = {k: sorted({p[k] for p in tab.configs}) for k in LEVELS}
    load = [r["loadavg_before"][0] for r in runs]
    vers = sorted({r.get("vllm_version", "") for r in runs} - {""})
    lines = [
        "# The measured CPU grid (benchmarks/measure_grid.py)", "",
        f"Host: {host['cpu']}, {host['cores']} cores, AVX-512 {'yes' if host['avx512'] else 'no'}; 1-minute load "
        f"average at the runs' starts {min(load):.1f}-{max(load):.1f}, median {statistics.median(load):.1f} (the "
        f"grid's own server and client keep ~1.5-2 of the cores busy: ~2 is a quiet host). vLLM {', '.join(vers)} (CPU build), model tiny, workload chat-short, "
        f"load.mode=concurrency at {tab.cfg.load.concurrency}, {tab.cfg.load.num_requests} requests after "
        f"{tab.cfg.load.warmup_requests} warm-up, server.launcher=forkserver; each run a fresh server through the "
        f"study's trial runner (optimizer.trial.trial.run_trial).", "",
        f"Levels: {json.dumps(levels)}: {len(tab.configs)} configs, {len(tab.reps)} distinct servers (chunked prefill "
        f"off raises max_num_batched_tokens to max_model_len=2048, as the study's suggest does: those rows share "
        f"the 2048 server). gpu_memory_utilization is no knob of the CPU space (the CPU build sizes its KV cache "
        f"from kv_cache_gib), so it has no level.", "",
        f"SLO (slo.p99_ms=auto): {tab.cfg.slo.auto_factor:g} x the median E2E of vLLM's defaults (the median over "
        f"their {len(tab.reps[tab.defaults])} repeats) = {tab.slo_ms:.0f} ms. A config is feasible when every repeat is. "
        f"Noise: the median relative spread (max - min) / mean of a server's repeats is {tab.noise:.3f}.", "",
        "| server (as started) | output tok/s per repeat | mean | P99 E2E ms per repeat | feasible | share of best |",
        "|---|---|---|---|---|---|"]
    for s in sorted(tab.reps, key=lambda s: -tab.mean(s) if tab.feasible(s) else 1e9 - tab.mean(s)):
        reps = tab.reps[s]
        mark = " (defaults)" if s == tab.defaults else ""
        lines.append(f"| `{s}`{mark} | {', '.join(f'{r.tok_s:.0f}' for r in reps)} | {tab.mean(s):.0f} | "
                     f"{', '.join(f'{r.p99_ms:.0f}' for r in reps)} | {'yes' if tab.feasible(s) else 'no'} | "
                     f"{tab.share(s):.3f} |")
    lines += ["", "Main effects (mean output tok/s of the configs at each level, every config weighted once):", ""]
    for k, vals in levels.items():
        eff = [f"{v}: {statistics.fmean(tab.mean(tab.server_of[key_of(p)]) for p in tab.configs if p[k] == v):.0f}"
               for v in vals]
        lines.append(f"- {k}: {'; '.join(eff)}")
    walls = [r["wall_s"] for r in runs]
    lines += ["", f"Cost: {len(runs)} server runs, median {statistics.median(walls):.0f} s each (start, warm-up, "
              f"load, stop), {sum(walls) / 60:.0f} minutes in all. Raw runs: grid-cpu-runs.jsonl; table: grid-cpu.csv."
        + (f" Runs measured while other work ran on the host were measured again; the discarded ones are kept in "
           f"{BUSY.name} ({len(load_runs(BUSY))} runs, not used)." if BUSY.exists() else "")]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("run", "table", "plan"))
    ap.add_argument("--chunk", type=int, default=8, help="servers per hold of the lock")
    ap.add_argument("--until", default=None, help="HH:MM UTC: start no server after this")
    ap.add_argument("--pause", type=float, default=20.0, help="seconds between chunks (others take the lock)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    if a.command == "run":
        run(a.overrides, a.chunk, a.until, a.pause)
    elif a.command == "table":
        table()
    else:
        cfg = compose(OVERRIDES + a.overrides)
        for i, r in enumerate(plan(build_space(cfg))):
            print(i, r["repeat"], r["server"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
