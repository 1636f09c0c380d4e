"""How good is the search? Replays of whole studies against the measured CPU grid (offline, seconds).

For each search and each seed, one study of up to 30 trials runs in memory against the grid table
(benchmarks/_replay.py: the study's sampler code proposes, one measured repeat drawn at random answers,
the study's own score and ranking decide). After 10, 20 and 30 trials it reports the best config the
study found (its own best feasible trial) as a share of the grid's best (the grid's mean of that
config over the grid's best mean among the configs feasible in every repeat; 0 for a pick the grid
finds infeasible), and the share of studies whose confirmed recommendation (the confirmation stage
answered from the table, the project's decision rule) is the grid's best or within the grid's noise.

The searches: the current default (TPE as optimizer.study.loop.make_sampler builds it, with the
baseline trial enqueued and study.enqueue's seeds), the same TPE without the baseline, random search,
a quasi-random design (Optuna's QMCSampler, scrambled Sobol), and the one-knob-at-a-time staged
search (optimizer/study/staged.py). The space is the study's, restricted to the grid's levels.

Usage:
  python benchmarks/search_replay.py [--seeds 100] [--runs benchmarks/results/grid-cpu-runs.jsonl]
                                     [--synthetic] [--out search_replay-cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from _common import REPO, RESULTS, machine
from _grid import (DEFAULTS, LEVELS, Rep, Table, grid_points, key_of, restrict, server_key, server_params,
                   space_overrides)
from _replay import confirm, replay, with_seed

import optuna

from optimizer.commands.cli import compose
from optimizer.settings.config import Config
from optimizer.space.search_space import Space, build_space
from optimizer.study.loop import make_sampler
from optimizer.study.staged import StagedSampler

BUDGETS = (10, 20, 30)
TARGET = 0.97


# name -> (sampler maker, baseline trial enqueued)
SEARCHES: dict[str, tuple[Callable[[Config], optuna.samplers.BaseSampler], bool]] = {
    "tpe (default: baseline enqueued)": (lambda cfg: make_sampler(cfg, 0), True),
    "tpe without the baseline": (lambda cfg: make_sampler(cfg, 0), False),
    "random": (lambda cfg: optuna.samplers.RandomSampler(seed=cfg.study.seed), True),
    "quasi-random (QMC, scrambled Sobol)": (lambda cfg: optuna.samplers.QMCSampler(
        scramble=True, seed=cfg.study.seed, warn_independent_sampling=False, warn_asynchronous_seeding=False,
        independent_sampler=optuna.samplers.RandomSampler(seed=cfg.study.seed)), True),
    "staged (one knob at a time)": (lambda cfg: StagedSampler(seed=cfg.study.seed), True),
}


def _pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``xs``, nearest-rank from below (the 10th percentile of 100 studies:
    the 10th worst)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def run_search(table: Table, space: Space, cfg: Config, name: str, seeds: int, n_max: int) -> dict[str, Any]:
    """Every seed's study of ``name``: best-found shares per trial count, confirmed picks per budget."""
    make, baseline = SEARCHES[name]
    shares: list[list[float]] = []  # per seed, per n (1..n_max)
    confirmed: dict[int, list[bool]] = {n: [] for n in BUDGETS}
    distinct: dict[int, list[int]] = {n: [] for n in BUDGETS}
    for s in range(seeds):
        rng = random.Random(f"replay:{s}")
        rep = replay(table, space, with_seed(cfg, s), make, n_max, rng, baseline)
        row = []
        for n in range(1, n_max + 1):
            best = rep.best(n)
            row.append(0.0 if best is None else table.share(rep.servers[best]))
        shares.append(row)
        for n in BUDGETS:
            pick = confirm(rep, n, table, space, cfg, rng)
            confirmed[n].append(pick is not None and table.within_noise(pick))
            distinct[n].append(len(set(rep.servers[:n])))
    by_n = [[row[n - 1] for row in shares] for n in range(1, n_max + 1)]
    medians = [statistics.median(v) for v in by_n]
    reach = next((n for n, m in enumerate(medians, 1) if m >= TARGET), None)
    return {
        "baseline_enqueued": baseline,
        "budgets": {str(n): {"median_share": medians[n - 1], "p10_share": _pct(by_n[n - 1], 0.10),
                             "mean_share": statistics.fmean(by_n[n - 1]),
                             "found_grid_best": sum(1 for v in by_n[n - 1] if v >= 1.0) / seeds,
                             "confirmed_best_or_within_noise": sum(confirmed[n]) / seeds,
                             "median_distinct_servers": statistics.median(distinct[n])} for n in BUDGETS},
        "median_share_by_trials": medians,
        "trials_to_median_share_%g" % TARGET: reach,
    }


def synthetic_table(cfg: Config, space: Space, seed: int = 0, repeats: int = 2, cv: float = 0.08) -> Table:
    """A table shaped like the CPU grid, for testing the replay before the grid exists: max_num_seqs
    below the load queues (half the throughput, twice the P99: infeasible), smaller token budgets cost
    a little, the rest is noise (``cv`` relative, per repeat)."""
    rng = random.Random(seed)
    reps: dict[str, list[Rep]] = {}
    for p in grid_points():
        srv = server_key(server_params(space, p))
        if srv in reps:
            continue
        e = server_params(space, p)
        tok = 800.0 * (0.5 if e.max_num_seqs < 16 else 1.0) * (1 - 0.05 * (2048 - (e.max_num_batched_tokens or 2048))
                                                                 / 1536) * (1.03 if not e.enable_prefix_caching else 1)
        p99 = 2000.0 * (2.0 if e.max_num_seqs < 16 else 1.0)
        reps[srv] = [Rep(tok * rng.gauss(1, cv), p99 * rng.gauss(1, cv), n_ok=368, n_requests=368,
                         p50_ms=p99 / 2 * rng.gauss(1, cv / 3)) for _ in range(repeats + 2 * (p == DEFAULTS))]
    return Table.build(cfg, space, reps)


NOTES = ["QMCSampler draws only numerical parameters quasi-randomly (here kv_cache_gib); the categorical knobs "
         "(max_num_seqs and max_num_batched_tokens are choices of their grids, the two switches) come from its "
         "independent sampler, random search. It needs scipy, which the project's environment does not install: "
         "without it that search is left out."]


def markdown(doc: dict[str, Any]) -> str:
    what = "a synthetic table (a test of the replay)" if doc["source"] == "synthetic table" else \
        f"the measured CPU grid ({doc['source']})"
    lines = [f"# How good is the search: replays against {what}", "",
             f"{doc['seeds']} seeded studies per search, each answered by one drawn repeat per trial. Grid: "
             f"{doc['grid']['configs']} configs ({doc['grid']['servers']} distinct servers), best "
             f"`{doc['grid']['best']}` at {doc['grid']['best_mean_tok_s']:.1f} output tok/s; grid SLO "
             f"{doc['grid']['slo_ms']:.0f} ms; noise (median relative spread of a server's repeats) "
             f"{doc['grid']['noise']:.3f}; vLLM's defaults at {doc['grid']['defaults_share']:.3f} of the best.", "",
             "| search | trials | median share | p10 share | found the grid best | confirmed pick = best or within noise "
             "| distinct servers (median) |", "|---|---|---|---|---|---|---|"]
    for name, r in doc["searches"].items():
        for n, b in r["budgets"].items():
            lines.append(f"| {name} | {n} | {b['median_share']:.3f} | {b['p10_share']:.3f} | "
                         f"{b['found_grid_best']:.2f} | {b['confirmed_best_or_within_noise']:.2f} | "
                         f"{b['median_distinct_servers']:g} |")
    lines += ["", f"Trials until the median best-found share reaches {TARGET}:"]
    for name, r in doc["searches"].items():
        lines.append(f"- {name}: {r['trials_to_median_share_%g' % TARGET] or 'not within 30'}")
    lines += ["", *doc.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--runs", default=str(RESULTS / "grid-cpu-runs.jsonl"))
    ap.add_argument("--synthetic", action="store_true", help="a synthetic table (testing the replay)")
    ap.add_argument("--out", default="search_replay-cpu", help="a name under benchmarks/results, or a path")
    ap.add_argument("--only", default="", help="run only the searches whose name contains this")
    a = ap.parse_args(argv)
    if a.synthetic:
        cfg = compose(space_overrides(LEVELS))
        space = restrict(build_space(cfg), LEVELS)
        table, source = synthetic_table(cfg, space), "synthetic table"
    else:
        from measure_grid import load_table
        table, space, _ = load_table(Path(a.runs))
        cfg, source = table.cfg, str(Path(a.runs).resolve().relative_to(REPO))
    levels = {k: sorted({p[k] for p in table.configs}) for k in LEVELS}
    t0 = time.monotonic()
    doc: dict[str, Any] = {"source": source, "seeds": a.seeds, "budgets": list(BUDGETS), "target": TARGET,
                           "grid": {"configs": len(table.configs), "servers": len(table.reps), "best": table.best,
                                    "best_mean_tok_s": table.mean(table.best), "slo_ms": table.slo_ms,
                                    "noise": table.noise, "defaults_share": table.share(table.defaults),
                                    "levels": levels, "defaults": key_of(DEFAULTS)},
                           "searches": {}}
    doc["notes"] = NOTES + ([] if importlib.util.find_spec("scipy") else ["scipy is not installed here: the QMC "
                                                                            "search was left out."])
    for name in SEARCHES:
        if a.only and a.only not in name or name.startswith("quasi") and not importlib.util.find_spec("scipy"):
            continue
        t = time.monotonic()
        doc["searches"][name] = run_search(table, space, cfg, name, a.seeds, max(BUDGETS))
        print(f"{name}: {time.monotonic() - t:.0f} s", file=sys.stderr)
    doc["seconds"] = round(time.monotonic() - t0, 1)
    doc["machine"] = machine()
    doc["optuna"] = optuna.__version__
    out = Path(a.out) if "/" in a.out else RESULTS / a.out  # a bare name: benchmarks/results/<name>
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
