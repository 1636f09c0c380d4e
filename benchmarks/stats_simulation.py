"""Do the capacity interval, the early stop and the confirmation's decision rule hold? By simulation.

Fakes with known truth (no server): :class:`optimizer.testing.fake_capacity.LatencyLaw` draws
per-request latencies as roughly as a real server gives them (log-normal spread, a Pareto tail on
3 % of requests, a run-to-run shift of each probe that makes the measured P99s non-monotone, and
in one scenario a cliff), and the confirmation's rounds are drawn with a round effect shared by
every config of the round and heavy-tailed (Student t, 3 df) run noise. Each part compares the
rule before this change with the rule after:

- **capacity**: the real search (:class:`optimizer.capacity.search.CapacitySearch`) against
  :class:`~optimizer.testing.fake_capacity.FakeProbe`; coverage of the true capacity by the fitted
  interval ``[low, high]`` (after) and by the bisection's bracket ``[highest pass, lowest failure)``
  (before: what "capacity N, resolution 5 %" claimed), the bias of each point, the interval's width;
- **early stop**: a trial exactly as good as the incumbent (any stop is wrong), the incumbent the
  best of 3 searches of the same config (the winner's curse); the users rule: stop at a failure at
  or below the incumbent's capacity (users); the max bound (until 2026-12-07): the largest tok/s
  measured below the fitted capacity's upper end, below the incumbent's lower bound; after: the
  highest pass below the interval's lower end, scaled by the upper end over its load; and a worse
  trial, where a stop is right and saves probes. Two throughput shapes: saturating (the fake's fixed
  curve) and one that peaks and falls before the P99 limit (a closed loop's tok/s from the drawn
  latencies, as a small model's on an H100);
- **decision rule**: :func:`optimizer.confirmation.uplift.recommend` (after) and the rule it replaced
  (before, re-implemented here: best median, "within noise" = interval holds 1, fewest flags wins,
  again against the defaults) over scenarios with known true ratios; the coverage of the
  uplift interval the rule reports (the recommended config's, or with the defaults recommended the
  closest config's: it is selected either way), the bias of its point (log scale), the rate of wrongly
  recommending the defaults (some config truly beats them by >= 10 %) and of wrongly recommending a
  config (one whose true ratio is <= 1).

Usage: ``python benchmarks/stats_simulation.py [--n 300] [--out stats_simulation]``. Writes
``benchmarks/results/<out>.json`` (machine named, no paths). Pure CPU, seeded: ~1-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C  # noqa: E402

from optimizer.capacity.curve import estimate_capacity  # noqa: E402
from optimizer.capacity.result import CapacityResult  # noqa: E402
from optimizer.capacity.search import CapacitySearch, SearchPlan, find_capacity  # noqa: E402
from optimizer.confirmation.uplift import ConfigRuns, block_ratio, recommend  # noqa: E402
from optimizer.settings.config import SloConfig  # noqa: E402
from optimizer.testing.fake_capacity import FakeProbe, LatencyLaw  # noqa: E402
from optimizer.trial.capacity_load import lower_value  # noqa: E402

LIMIT = 2500.0


def _search(law: LatencyLaw, seed: int, stop_below: Optional[float] = None, n: int = 400, limit: float = LIMIT,
            start: int = 1, cap: int = 256, tokens: float = 0.0, cls: type = CapacitySearch) -> CapacityResult:
    s = cls(SearchPlan("concurrency", start, cap, 0.05, 16, 0, 2.0), SloConfig(p99_ms=limit),
                       stop_below=(lambda: stop_below) if stop_below is not None else None)
    return asyncio.run(find_capacity(FakeProbe(law, limit, n, seed=seed, tokens_per_request=tokens), s))


class _MaxBoundSearch(CapacitySearch):
    """The search with the early stop's upper bound before 2026-12-07: the largest value measured at
    or below the fitted capacity's upper end (sound only while throughput does not fall as the load rises)."""

    def upper_value(self) -> float:
        e = estimate_capacity(list(self.probes), self.slo.limit_ms, self.plan.control)
        if not e.high == e.high:
            return math.inf
        vals = [getattr(p, self.value) for p in self.probes if not p.aborted and p.load <= e.high]
        return max((v for v in vals if v == v), default=math.inf)


def _tok(load: float) -> float:  # FakeProbe's output tok/s at a load
    return 100.0 * load / (1 + load / 50)


def capacity_part(n: int) -> dict[str, Any]:
    scenarios = {
        "rough (heavy tail, 3 % run-to-run shift)": LatencyLaw(),
        "heavier tail (Pareto 1.8), no shift": LatencyLaw(tail_alpha=1.8, drift=0.0),
        "non-monotone (6 % run-to-run shift)": LatencyLaw(drift=0.06),
        "cliff at 40 users (x3)": LatencyLaw(cliff_at=40, cliff_factor=3.0, per_load_ms=10.0),
    }
    out = {}
    for name, law in scenarios.items():
        truth = law.true_capacity(LIMIT)
        cov_new = cov_old = flagged = 0
        err_new, err_old, width = [], [], []
        probes = []
        for seed in range(n):
            r = _search(law, seed)
            hi = r.high if r.high == r.high else math.inf
            cov_new += r.low <= truth <= hi
            lowest_fail = min((p.load for p in r.probes if not p.passed), default=math.inf)
            cov_old += r.value <= truth < lowest_fail
            err_new.append(r.estimate / truth - 1)
            err_old.append(r.value / truth - 1)
            width.append((hi - r.low) / truth)
            flagged += bool(r.flags)
            probes.append(len(r.probes))
        out[name] = {"true_capacity": truth, "searches": n,
                     "after_interval_coverage": round(cov_new / n, 3),
                     "before_bracket_coverage": round(cov_old / n, 3),
                     "after_point_bias": round(float(np.mean(err_new)), 4),
                     "before_point_bias": round(float(np.mean(err_old)), 4),
                     "after_point_rmse": round(float(np.sqrt(np.mean(np.square(err_new)))), 4),
                     "before_point_rmse": round(float(np.sqrt(np.mean(np.square(err_old)))), 4),
                     "after_interval_width_median_share": round(float(np.median(width)), 3),
                     "flagged_share": round(flagged / n, 3), "probes_median": float(np.median(probes))}
    return out


# where throughput falls past a peak below the P99 limit (a small model on an H100: 14,874 tok/s at
# 128 users, 10,816 at 160, 11,271 at 256): a closed loop's tok/s from the fake's own latencies
PEAK = {"law": LatencyLaw(base_ms=300.0, per_load_ms=2.0, quad_ms=0.005, drift=0.04),
        "worse": LatencyLaw(base_ms=300.0, per_load_ms=2.0, quad_ms=0.005, drift=0.04, cliff_at=150.0,
                            cliff_factor=1.35),
        "kw": {"limit": 1800.0, "start": 16, "cap": 1024, "tokens": 100.0}}
MONOTONE = {"law": LatencyLaw(drift=0.04), "worse": LatencyLaw(drift=0.04, per_load_ms=28.0), "kw": {}}


def early_stop_part(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape, sc in (("saturating throughput", MONOTONE), ("throughput falls past its peak", PEAK)):
        law, kw = sc["law"], sc["kw"]
        for name, trial_law, truly_worse in (("as good as the incumbent", law, False),
                                             ("worse than the incumbent", sc["worse"], True)):
            old_stops = max_stops = new_stops = 0
            probes_full, probes_new, ratio = [], [], []
            for i in range(n):
                incs = [_search(law, 10_000 + 3 * i + j, **kw) for j in range(3)]
                inc = max(incs, key=lambda r: r.output_tok_s if r.feasible else -1.0)  # the winner's curse
                full = _search(trial_law, i, **kw)
                old_stops += any(not p.passed and p.load <= inc.value for p in full.probes) and full.feasible
                bar = lower_value(inc, "output_tok_s")
                max_stops += _search(trial_law, i, stop_below=bar, cls=_MaxBoundSearch, **kw).stopped_early
                new = _search(trial_law, i, stop_below=bar, **kw)
                new_stops += new.stopped_early
                probes_full.append(len(full.probes))
                probes_new.append(len(new.probes))
                ratio.append(full.output_tok_s / max(r.output_tok_s for r in incs))
            key = "right_stop_rate" if truly_worse else "wrong_stop_rate"
            out[f"{name}, {shape}"] = {
                "trials": n, f"users_rule_{key}": round(old_stops / n, 3), f"max_bound_{key}": round(max_stops / n, 3),
                f"after_{key}": round(new_stops / n, 3),
                "median_value_over_incumbents_best": round(float(np.median(ratio)), 3),
                "probes_full_search_mean": round(float(np.mean(probes_full)), 2),
                "probes_after_rule_mean": round(float(np.mean(probes_new)), 2)}
    return out


def _old_recommend(runs: Sequence[ConfigRuns]) -> tuple[ConfigRuns, ConfigRuns, Any]:
    """The rule before this change: best median; configs whose unadjusted interval against it holds 1
    are 'within noise'; the fewest flags among those wins; within the defaults' noise: the defaults."""
    base = next(r for r in runs if r.baseline)
    top = max(runs, key=lambda r: (r.median, -r.flags_changed, -r.of))
    tied = [r for r in runs if r is not top and block_ratio(r, top, runs).within_noise]
    chosen = min([top, *tied], key=lambda r: (r.flags_changed, -r.median, r.of))
    if chosen is not base and block_ratio(chosen, base, runs).within_noise:
        chosen = base
    shown = chosen if chosen is not base else top  # the uplift it reported: the chosen's, else the top's
    return chosen, shown, (block_ratio(shown, base, runs) if shown is not base else None)


def decision_part(n: int) -> dict[str, Any]:
    # true ratios over the defaults and flags changed, baseline first
    scenarios = {
        "null: three configs as good as the defaults": [(1.0, 0), (1.0, 3), (1.0, 2), (1.0, 4)],
        "null: six configs as good as the defaults": [(1.0, 0)] + [(1.0, f) for f in (1, 2, 3, 4, 5, 6)],
        "issue #25: T x1.30 (5 flags), X x1.15 (1 flag), Y x1.0": [(1.0, 0), (1.30, 5), (1.15, 1), (1.0, 2)],
        "one winner x1.15, two at x1.0": [(1.0, 0), (1.15, 4), (1.0, 1), (1.0, 2)],
        "two winners x1.25 (6 flags) and x1.22 (1 flag)": [(1.0, 0), (1.25, 6), (1.22, 1), (1.0, 2)],
    }
    rounds, run_sd, round_sd = 3, 0.05, 0.08
    out: dict[str, Any] = {}
    for name, truth in scenarios.items():
        rng = np.random.default_rng(7)
        stats = {k: {"cover": 0, "n_int": 0, "bias": [], "wrong_defaults": 0, "wrong_config": 0, "picked_best": 0,
                     "bias_win": []}
                 for k in ("before", "after")}
        best_true = max(t for t, _ in truth)
        for _ in range(n):
            rnd = rng.normal(0, round_sd, rounds)
            runs = []
            for j, (ratio, flags) in enumerate(truth):
                noise = run_sd * rng.standard_t(3, rounds) / math.sqrt(3)  # heavy tails, sd run_sd
                vals = tuple(float(1000 * ratio * math.exp(e + r)) for e, r in zip(noise, rnd))
                runs.append(ConfigRuns("baseline" if j == 0 else f"trial {j}", j, j == 0, flags, vals,
                                       (True,) * rounds))
            rec = recommend(runs)
            old_chosen, old_shown, old_uplift = _old_recommend(runs)
            new_shown = rec.chosen if rec.beats_baseline else rec.top
            for key, chosen, shown, uplift in (("after", rec.chosen, new_shown, rec.uplift),
                                               ("before", old_chosen, old_shown, old_uplift)):
                s = stats[key]
                assert chosen is not None and shown is not None
                t = truth[chosen.of][0]
                if chosen.baseline and best_true >= 1.10:
                    s["wrong_defaults"] += 1
                if not chosen.baseline and t <= 1.0:
                    s["wrong_config"] += 1
                if t == best_true:
                    s["picked_best"] += 1
                if uplift is not None and math.isfinite(uplift.low):  # the reported uplift, of `shown`
                    ts = truth[shown.of][0]
                    s["n_int"] += 1
                    s["cover"] += uplift.low <= ts <= uplift.high
                    s["bias"].append(math.log(uplift.point) - math.log(ts))
                    if not chosen.baseline:
                        s["bias_win"].append(math.log(uplift.point) - math.log(ts))
        out[name] = {"simulations": n, "rounds": rounds, "run_noise_sd_log": run_sd, "round_effect_sd_log": round_sd}
        for key, s in stats.items():
            out[name][key] = {
                "uplift_interval_coverage": round(s["cover"] / s["n_int"], 3) if s["n_int"] else None,
                "intervals_reported": s["n_int"],
                "uplift_bias_log": round(float(np.mean(s["bias"])), 4) if s["bias"] else None,
                "uplift_bias_log_when_it_declares_a_win": round(float(np.mean(s["bias_win"])), 4)
                if s["bias_win"] else None,
                "wrongly_recommends_defaults": round(s["wrong_defaults"] / n, 3),
                "wrongly_recommends_a_config": round(s["wrong_config"] / n, 3),
                "recommends_a_best_config": round(s["picked_best"] / n, 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="simulated searches / confirmations per scenario")
    ap.add_argument("--out", default="stats_simulation")
    a = ap.parse_args()
    t0 = time.time()
    doc: dict[str, Any] = {"machine": C.machine(), "n": a.n}
    doc["capacity"] = capacity_part(a.n)
    print("capacity", round(time.time() - t0, 1), "s", flush=True)
    doc["early_stop"] = early_stop_part(max(20, a.n // 3))
    print("early stop", round(time.time() - t0, 1), "s", flush=True)
    doc["decision_rule"] = decision_part(max(a.n, 1000))
    doc["seconds"] = round(time.time() - t0, 1)
    path = C.write_result(a.out, doc)
    import json

    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=1))
    print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
