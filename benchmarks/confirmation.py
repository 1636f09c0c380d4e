"""How wide are the intervals, and does the study's pick survive a confirmation on this machine?

Runs a real study through the CLI (``python -m optimizer.run``; the embedded default: vLLM's CPU
build, the tiny model, the study's default load unless overridden) with the confirmation stage at
its end, in a temporary folder, then reads the study database back and reports:

- per search trial: the value, the throughput's batch-means interval, the P99's distribution-free
  interval (the SLO metric);
- per confirmed config: the value of each fresh-server repeat, the median, the t-interval of the
  mean, and its change against what the search measured (the winner's curse, if any);
- the recommendation, the uplift over vLLM's defaults with its paired interval, whether the
  study's pick survived.

Usage: ``python benchmarks/confirmation.py [--trials 3] [--top-k 1] [--repeats 3] [--out NAME] [override ...]``
(extra arguments are Hydra overrides, e.g. ``load.num_requests=120``). Writes
``benchmarks/results/<NAME>.json`` (default ``confirmation-cpu``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _f(v: float, digits: int = 2) -> Any:
    return round(v, digits) if isinstance(v, float) and math.isfinite(v) else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="confirmation-cpu")
    a, overrides = ap.parse_known_args()
    import optuna

    from optimizer.record import TrialRecord
    from optimizer.confirmation.confirm_result import summarize_confirmation
    from optimizer.confirmation.plan import search_trials
    from optimizer.confirmation.uplift import mean_interval

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "bench.db"
        argv = [C.PY, "-m", "optimizer.run", "study.name=bench", f"study.storage=sqlite:///{db}",
                f"study.runs_dir={root / 'runs'}", f"reports_dir={root / 'reports'}",
                f"server.cache_dir={C.REPO / '.cache'}", f"study.n_trials={a.trials}",
                f"study.confirm.top_k={a.top_k}", f"study.confirm.repeats={a.repeats}", *overrides]
        before = C.machine()
        t0 = time.monotonic()
        r = subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**__import__("os").environ,
                                                                               "PYTHONPATH": str(C.REPO)})
        wall = time.monotonic() - t0
        if r.returncode != 0:
            print(r.stderr[-4000:], file=sys.stderr)
            return r.returncode
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{db}")
        trials = study.get_trials(deepcopy=False)
        metric = study.user_attrs["config"]["slo"]["metric"]
        search = []
        for t in search_trials(trials):
            rec = TrialRecord.from_trial(t)
            ci, m = rec.throughput_ci, rec.measurement
            d = m.summary.dist(metric) if m is not None else None
            search.append({"number": t.number, "baseline": rec.lineage.baseline, "value": _f(t.value or math.nan),
                           "feasible": rec.outcome.feasible if rec.outcome else None,
                           "tok_s_ci": [_f(ci.low), _f(ci.high)] if ci else None, "batches": ci.batches if ci else 0,
                           f"p99_{metric}_ms": _f(d.p99) if d else None,
                           f"p99_{metric}_ci_ms": [_f(d.p99_low), _f(d.p99_high)] if d else None,
                           "n_requests": m.summary.n_requests if m else 0})
        res = summarize_confirmation(trials, study.user_attrs["config"]["study"]["confirm"]["confidence"])
        by_number = {t.number: t for t in trials}
        confirmed = []
        for c in res.runs if res else []:
            lo, hi = mean_interval(c.values)
            found = by_number[c.of].value or math.nan
            confirmed.append({"config": c.label, "flags_changed": c.flags_changed, "values": [_f(v) for v in c.values],
                              "feasible": list(c.feasible), "median": _f(c.median), "mean_ci": [_f(lo), _f(hi)],
                              "search_value": _f(found),
                              "median_vs_search": _f(c.median / found - 1, 4) if found else None})
        rec = res.recommendation if res else None
        out = {
            "what": "a real study on this machine with the confirmation stage; intervals as the report computes them",
            "command": " ".join(["python -m optimizer.run", *argv[3:]]).replace(str(root), "<tmp>")
            .replace(str(C.REPO), "<repo>"),
            "machine_before": before, "machine_after": C.machine(), "wall_s": round(wall, 1),
            "search": search, "confirmation": confirmed,
            "recommendation": None if rec is None else {
                "chosen": rec.chosen.label if rec.chosen else None, "beats_baseline": rec.beats_baseline,
                "uplift": {"point": _f(rec.uplift.point, 4), "ci": [_f(rec.uplift.low, 4), _f(rec.uplift.high, 4)],
                           "pairs": rec.uplift.pairs, "method": "per-round log ratios; t-interval of the block design (rounds x configs, pooled residual noise)", "dof": rec.uplift.dof},
                "reason": rec.reason, "study_pick": res.study_pick, "pick_survived": res.pick_survived},
        }
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    path = C.RESULTS / f"{a.out}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["search"], indent=1))
    print(json.dumps(out["confirmation"], indent=1))
    print(json.dumps(out["recommendation"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
