"""Which statistic of vLLM's defaults should ``slo.p99_ms=auto`` multiply: their P99 or their median?

Issue 28's quiet demo runs gave three answers from one command, because the limit was 1.5x **one**
P99 of the defaults. This benchmark reads what was measured and compares the two rules on it:

- ``demo``: study databases of ``make demo`` runs (fresh clones). In each, vLLM's defaults ran on
  fresh servers once in the search (the baseline, which calibrates) and once per confirmation round.
  For each run: the limit either rule sets from the baseline, and whether the defaults' later rounds
  met it; for every server run, the client's share of the run spent waiting for a CPU.
- ``grid``: the measured grid's runs (benchmarks/results/grid-cpu-runs.jsonl: every server on fresh
  servers, two or more repeats): how far a server's median and its P99 move between repeats.

Usage::

    python benchmarks/demo_slo_basis.py add-demo LABEL STUDY.db [...]   # appends to the JSON
    python benchmarks/demo_slo_basis.py table                            # writes the .md from the JSON

The JSON keeps every figure the table shows, so the table is rebuilt without the databases.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import RESULTS, machine  # noqa: E402

OUT_JSON = RESULTS / "demo-slo-basis.json"
OUT_MD = RESULTS / "demo-slo-basis.md"
GRID_RUNS = RESULTS / "grid-cpu-runs.jsonl"
FORMER = ("p99", 1.5)  # the rule until 2026-12-07
NOW = ("p50", 3.0)  # AUTO_FACTOR_AT_LOAD x the median


def _load() -> dict[str, Any]:
    return json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"demo_runs": [], "machine": machine()}


def add_demo(label: str, dbs: list[str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    doc = _load()
    for i, db in enumerate(dbs):
        url = f"sqlite:///{Path(db).resolve()}"
        name = optuna.get_all_study_names(url)[0]
        study = optuna.load_study(study_name=name, storage=url)
        runs = []
        for t in study.trials:
            u = t.user_attrs
            if "e2e_p50" not in u:
                continue
            runs.append({"trial": t.number, "role": "confirmation" if "confirms" in u else "search",
                         "confirms": u.get("confirms"), "baseline": u.get("kind") == "baseline",
                         "params": t.params, "output_tok_s": u.get("output_tok_s"), "p50_ms": u["e2e_p50"],
                         "p90_ms": u.get("e2e_p90"), "p99_ms": u["e2e_p99"],
                         "client_wait_share": u.get("client_wait_share")})
        doc["demo_runs"].append({"label": f"{label}-{i + 1}" if len(dbs) > 1 else label,
                                 "calibration": study.user_attrs.get("slo_calibration"), "runs": runs})
    OUT_JSON.write_text(json.dumps(doc, indent=1) + "\n")


def _limit(rule: tuple[str, float], run: dict[str, Any]) -> float:
    stat, factor = rule
    return float(round(factor * run[f"{stat}_ms"]))


def _defaults(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline's runs: the search's baseline trial and the confirmation rounds of it."""
    base = {r["trial"] for r in runs if r["baseline"]}
    return [r for r in runs if r["trial"] in base or r["confirms"] in base]


def _config(r: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    if r in _defaults(runs):
        return "vLLM's defaults"
    changed = {k: v for k, v in r["params"].items()
               if k in ("enable_chunked_prefill", "enable_prefix_caching") and v is False}
    return ", ".join(f"{k.replace('enable_', '').replace('_', ' ')} off" for k in changed) or str(r["params"])


def grid_spread(path: Path = GRID_RUNS) -> dict[str, Any]:
    """Per server with >= 2 measured repeats: max/min of its medians and of its P99s."""
    by: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        if "error" not in r and r.get("p50_ms") == r.get("p50_ms") and r.get("p50_ms") is not None:
            by.setdefault(r["server"], []).append(r)
    p50s, p99s = [], []
    for rows in by.values():
        if len(rows) >= 2:
            p50s.append(max(r["p50_ms"] for r in rows) / min(r["p50_ms"] for r in rows))
            p99s.append(max(r["p99_ms"] for r in rows) / min(r["p99_ms"] for r in rows))
    ratio = [r["p99_ms"] / r["p50_ms"] for rows in by.values() for r in rows]
    return {"servers": len(p50s), "p50_ratio_median": statistics.median(p50s) if p50s else math.nan,
            "p50_ratio_max": max(p50s, default=math.nan),
            "p99_ratio_median": statistics.median(p99s) if p99s else math.nan,
            "p99_ratio_max": max(p99s, default=math.nan),
            "p99_over_p50_median": statistics.median(ratio) if ratio else math.nan,
            "p99_over_p50_max": max(ratio, default=math.nan), "runs": sum(len(v) for v in by.values())}


def table() -> None:
    doc = _load()
    m = doc["machine"]
    lines = ["# The demo's SLO: a multiple of the defaults' P99, or of their median? (issue 28)", "",
             "`benchmarks/demo_slo_basis.py` (figures: [demo-slo-basis.json](demo-slo-basis.json)). Host: "
             f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, AVX-512 {'yes' if m.get('avx512') else 'no'}; "
             "each demo run a fresh clone, `make demo`, nothing else running.", "",
             "## vLLM's defaults in the demo runs, each run on a fresh server", "",
             "| demo | run | E2E median ms | E2E P90 ms | E2E P99 ms | client waited for a CPU | former limit (1.5 x P99) "
             "| met | limit now (3 x median) | met |", "|---|---|---|---|---|---|---|---|---|---|"]
    met = {"former": 0, "now": 0}
    n = 0
    for d in doc["demo_runs"]:
        defaults = _defaults(d["runs"])
        base = next((r for r in defaults if r["role"] == "search"), None)
        if base is None:
            continue
        former, now = _limit(FORMER, base), _limit(NOW, base)
        for r in defaults:
            ok_f, ok_n = r["p99_ms"] <= former, r["p99_ms"] <= now
            later = r is not base
            n += later
            met["former"] += later and ok_f
            met["now"] += later and ok_n
            lines.append(f"| {d['label']} | {'baseline (calibrates)' if r is base else 'confirmation round'} | "
                         f"{r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['client_wait_share']:.0%} | "
                         f"{former:.0f} | {'yes' if ok_f else '**no**'} | {now:.0f} | {'yes' if ok_n else '**no**'} |")
    others = [r for d in doc["demo_runs"] for r in d["runs"] if r not in _defaults(d["runs"])]
    lines += ["", f"The defaults' later rounds met the limit their own baseline set in {met['former']} of {n} rounds "
              f"under the former rule and {met['now']} of {n} under 3 x the median. ",
              "", "Every server run of these demos (the other config too): the client's wait for a CPU against "
              "the P99/median ratio:", "", "| config | wait share | P99 / median |", "|---|---|---|"]
    for d in doc["demo_runs"]:
        for r in d["runs"]:
            lines.append(f"| {d['label']} trial {r['trial']}: {_config(r, d['runs'])} | "
                         f"{r['client_wait_share']:.0%} | {r['p99_ms'] / r['p50_ms']:.2f} |")
    g = grid_spread()
    if g["servers"]:
        lines += ["", "## The measured grid, every server on fresh servers (grid-cpu-runs.jsonl)", "",
                  f"{g['servers']} servers with two or more repeats ({g['runs']} runs). Between a server's repeats "
                  f"its median moved by a factor of {g['p50_ratio_median']:.2f} (median over servers; at most "
                  f"{g['p50_ratio_max']:.2f}), its P99 by {g['p99_ratio_median']:.2f} (at most "
                  f"{g['p99_ratio_max']:.2f}). A run's P99 was {g['p99_over_p50_median']:.2f}x its median "
                  f"(median over runs; at most {g['p99_over_p50_max']:.2f}x).", "",
                  "So between fresh servers the median is not much steadier than the P99 here: most of what the new "
                  "rule gains in the demo is its level. 3 x the median sits near 1.8x a typical P99 (the runs' "
                  "P99 was ~1.66x their median), where 1.5x one P99 sat at the P99's own run-to-run spread; and "
                  "a P99 basis carries a run's worst episodes (its P99 reached 3-4x its median) into the limit."]
        doc["grid"] = g
        OUT_JSON.write_text(json.dumps(doc, indent=1) + "\n")
    OUT_MD.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("add-demo", "table"))
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    if a.command == "add-demo":
        add_demo(a.args[0], a.args[1:])
    else:
        table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
