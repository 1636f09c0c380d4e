"""The confirmation's statistics and its recommendation rule. Pure (plain numbers in, words out).

Each confirmed config has one value per round (the trial's value: output tokens/s, or whatever
the load mode scores) and one feasibility verdict per round. Every config runs once per round on
the round's prompts, in an order drawn at random per round (:func:`optimizer.confirmation.plan.plan`),
so a drift of the host hits the configs of a round alike and no config always runs first; the
comparison of two configs is therefore **paired by round** (a randomized block design):

- the ratio of config A over config B is estimated from the per-round log ratios
  ``log(a_r / b_r)``: their mean, exponentiated, is the point (a geometric mean of the paired
  ratios; what is shared within a round cancels);
- its interval (:func:`block_ratio`) is that of the block design on the log scale: the rounds
  are the blocks, every confirmed config measured in them a treatment, and the noise is the
  residual of the two-way fit (config + round), pooled over all those configs, with
  ``(k - 1)(n - 1)`` degrees of freedom for ``k`` configs and ``n`` rounds instead of the ``n - 1``
  of one pair alone. Where the pair's own noise is the larger, that one is used with its own
  ``n - 1`` degrees of freedom (a noisier config keeps its wider interval). The per-run standard
  deviation on the log scale is never taken below :data:`NOISE_FLOOR` (1 %): fresh servers never
  repeat a throughput closer than that, and two or three identical runs must not give a
  zero-width interval;
- a config's own spread is the t-interval of the mean of its repeats (shown in the report).

**Selection-aware intervals.** The recommended config is picked from the same runs that give
its interval, so a plain 95 % interval of the picked one covers its true uplift less than 95 %
of the time (the winner's curse: simulated, 86-89 %). Every uplift over the defaults is
therefore a **simultaneous many-to-one interval** (Dunnett's setting: each of the ``m`` confirmed
configs against the one control) made simultaneous by Bonferroni: each at confidence
``1 - alpha / m``. All ``m`` intervals then cover their true ratios together with probability
``>= 1 - alpha``, so whichever config the rule picks afterwards, its interval keeps
``1 - alpha``. Bonferroni rather than Dunnett's exact constant because Dunnett's needs the
multivariate t (with the noise of a pair switching between pooled and own, its correlation is
not the textbook 1/2); for ``m = 3`` it is ~2 % wider than Dunnett's, the price of a rule with no
special function. Splitting the rounds (select on some, estimate on others) was rejected: with
the 2-3 rounds a confirmation affords, it leaves 1 round to estimate, which has no interval. The
point estimate of the picked config keeps a selection bias (measured in
``benchmarks/stats_simulation.py``); its interval does not.

:func:`recommend`, among the configs **feasible in every repeat**:

1. a config **beats the defaults** when its simultaneous interval over the baseline lies above 1;
   none does: the defaults are recommended, worded as "no config was shown to beat them", never as
   "equivalent" (an interval that holds 1 is absence of evidence, not evidence of equivalence);
2. the **best** is the winner with the highest point ratio over the defaults;
3. a winner with fewer flags changed from vLLM's defaults replaces the best only when it is
   shown **non-inferior** to it by the margin ``margin`` (``study.confirm.margin``, 5 % by
   default): the one-sided lower bound of its ratio over the best (Bonferroni over the winners
   compared) is above ``1 - margin``. Only winners are candidates, so no chain of "within noise"
   steps can end at a config that was not shown to beat the defaults. 5 % is the capacity
   search's default resolution (``load.capacity.resolution``): a smaller loss of throughput is
   below what one search tells apart, so it is the smallest a simpler config may be asked to give
   up for its fewer flags. With a baseline that broke the SLO in some repeat, the best feasible
   config wins outright (the defaults are not a valid answer).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from optimizer.core.stats import t_quantile

__all__ = ["NOISE_FLOOR", "ConfigRuns", "Ratio", "Recommendation", "block_ratio", "mean_interval", "paired_ratio",
           "recommend"]

NOISE_FLOOR = 0.01  # the smallest per-run standard deviation of log(value) an interval assumes (module docstring)
DEFAULT_MARGIN = 0.05  # study.confirm.margin's default (module docstring)


@dataclass(frozen=True)
class Ratio:
    """A over B, paired by round: the point and its interval (NaN with fewer than two pairs)."""

    point: float
    low: float
    high: float
    pairs: int  # rounds compared
    confidence: float
    dof: int = 0  # of the noise estimate (0: paired, pairs - 1)
    configs: int = 2  # whose residuals the noise pools
    comparisons: int = 1  # the family the interval is simultaneous over (Bonferroni)

    @property
    def within_noise(self) -> bool:
        """The interval holds 1 (or there is no interval): A and B are not told apart. Not a
        statement of equivalence: :func:`recommend` never reads it as one."""
        return not (self.low > 1.0 or self.high < 1.0)

    def text(self) -> str:
        if not math.isfinite(self.point):
            return "n/a"
        simul = f" simultaneous over {self.comparisons} comparisons" if self.comparisons > 1 else ""
        ci = (f"{self.confidence:.0%} CI{simul} {self.low:.3f}-{self.high:.3f}" if math.isfinite(self.low)
              else "no interval: fewer than 2 paired rounds")
        pooled = f", noise pooled over {self.configs} configs" if self.configs > 2 and math.isfinite(self.low) else ""
        return f"x{self.point:.3f} ({ci}, {self.pairs} paired rounds{pooled})"


def _t(confidence: float, comparisons: int, dof: int) -> float:
    """The two-sided t quantile of one of ``comparisons`` Bonferroni-adjusted intervals."""
    return t_quantile(1 - (1 - confidence) / (2 * max(1, comparisons)), dof)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of the finite ``values`` (NaN with fewer than two)."""
    x = [v for v in values if math.isfinite(v)]
    if len(x) < 2:
        return math.nan, math.nan
    m = statistics.fmean(x)
    half = t_quantile(1 - (1 - confidence) / 2, len(x) - 1) * statistics.stdev(x) / math.sqrt(len(x))
    return m - half, m + half


def paired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, comparisons: int = 1) -> Ratio:
    """A over B from the rounds where both have a positive finite value (index = round); the sd of
    the log ratios is at least ``sqrt(2) * NOISE_FLOOR`` (two runs' floors)."""
    logs = [math.log(x / y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0]
    if not logs:
        return Ratio(math.nan, math.nan, math.nan, 0, confidence, comparisons=comparisons)
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return Ratio(math.exp(m), math.nan, math.nan, 1, confidence, comparisons=comparisons)
    sd = max(statistics.stdev(logs), math.sqrt(2) * NOISE_FLOOR)
    half = _t(confidence, comparisons, len(logs) - 1) * sd / math.sqrt(len(logs))
    return Ratio(math.exp(m), math.exp(m - half), math.exp(m + half), len(logs), confidence,
                 comparisons=comparisons)


def _logs(values: Sequence[float]) -> list[Optional[float]]:
    return [math.log(v) if math.isfinite(v) and v > 0 else None for v in values]


def block_ratio(a: "ConfigRuns", b: "ConfigRuns", runs: Sequence["ConfigRuns"], confidence: float = 0.95,
                comparisons: int = 1) -> Ratio:
    """A over B, paired by round, with the noise of the block design (module docstring): the rounds
    where both have a positive finite value, and the other configs of ``runs`` measured in all of
    them. ``comparisons``: the interval is one of that many made simultaneous (Bonferroni). Fewer
    than two such rounds: :func:`paired_ratio`."""
    la, lb = _logs(a.values), _logs(b.values)
    rounds = [i for i in range(min(len(la), len(lb))) if la[i] is not None and lb[i] is not None]
    if len(rounds) < 2:
        return paired_ratio(a.values, b.values, confidence, comparisons)
    others = [_logs(r.values) for r in runs if r is not a and r is not b]
    rows = [la, lb, *(o for o in others if all(i < len(o) and o[i] is not None for i in rounds))]
    y = [[float(row[i]) for i in rounds] for row in rows]  # type: ignore[arg-type]
    k, n = len(y), len(rounds)
    grand = statistics.fmean(v for row in y for v in row)
    config_mean = [statistics.fmean(row) for row in y]
    round_mean = [statistics.fmean(row[i] for row in y) for i in range(n)]
    ss = sum((y[j][i] - config_mean[j] - round_mean[i] + grand) ** 2 for j in range(k) for i in range(n))
    dof = (k - 1) * (n - 1)
    d = config_mean[0] - config_mean[1]
    var = ss / dof  # per observation; the pair's own: half the variance of its log ratios
    own = statistics.variance([y[0][i] - y[1][i] for i in range(n)]) / 2
    if own >= var:
        var, dof, k = own, n - 1, 2
    var = max(var, NOISE_FLOOR ** 2)
    half = _t(confidence, comparisons, dof) * math.sqrt(var * 2 / n)
    return Ratio(math.exp(d), math.exp(d - half), math.exp(d + half), n, confidence, dof, k, comparisons)


@dataclass(frozen=True)
class ConfigRuns:
    """One confirmed config's repeats, indexed by round (NaN / None: that round not measured)."""

    label: str  # "baseline", "trial 7"
    of: int  # the search trial it confirms
    baseline: bool
    flags_changed: int  # engine flags that differ from vLLM's defaults (0 for the baseline)
    values: tuple[float, ...]
    feasible: tuple[Optional[bool], ...]

    @property
    def measured(self) -> list[float]:
        return [v for v, f in zip(self.values, self.feasible) if f is not None and math.isfinite(v)]

    @property
    def complete(self) -> bool:
        return all(f is not None for f in self.feasible)

    @property
    def all_feasible(self) -> bool:
        return bool(self.feasible) and all(f is True for f in self.feasible)

    @property
    def n_infeasible(self) -> int:
        return sum(1 for f in self.feasible if f is False)

    @property
    def median(self) -> float:
        m = self.measured
        return statistics.median(m) if m else math.nan


@dataclass(frozen=True)
class Recommendation:
    chosen: Optional[ConfigRuns]  # None: no config stayed feasible in every repeat
    top: Optional[ConfigRuns]  # the best point estimate among those feasible in every repeat
    tied: tuple[str, ...]  # labels shown non-inferior to the best winner by the margin (simpler ones)
    uplift: Ratio  # chosen over the baseline (top over the baseline when the baseline is chosen); simultaneous
    beats_baseline: bool  # a tuned config is recommended over vLLM's defaults
    reason: str
    margin: float = DEFAULT_MARGIN


def recommend(runs: Sequence[ConfigRuns], confidence: float = 0.95, margin: float = DEFAULT_MARGIN) -> Recommendation:
    """The recommendation rule of the module docstring, with its reason in words.

    Args:
        runs: every confirmed config (the baseline among them, ``baseline=True``).
        confidence: of the simultaneous intervals (the family: every non-baseline config against
            the baseline).
        margin: the non-inferiority margin a simpler winner must be within of the best (0.05: it
            may give up at most 5 %)."""
    base = next((r for r in runs if r.baseline), None)
    nan = Ratio(math.nan, math.nan, math.nan, 0, confidence)
    eligible = [r for r in runs if r.all_feasible]
    dropped = [f"{r.label} (infeasible in {r.n_infeasible} of {len(r.feasible)} repeats)" for r in runs
               if r.n_infeasible]
    missing = [r.label for r in runs if not r.complete]
    if not eligible:
        why = "no confirmed config stayed feasible in every repeat"
        if dropped:
            why += ": " + "; ".join(dropped)
        if missing:
            why += f"; not every repeat was measured for {', '.join(missing)}"
        return Recommendation(None, None, (), nan, False, why + ".", margin)
    m = max(1, sum(1 for r in runs if not r.baseline))  # the many-to-one family
    tuned = [r for r in eligible if not r.baseline]
    vs = {id(r): block_ratio(r, base, runs, confidence, m) for r in tuned} if base is not None else {}

    def point(r: ConfigRuns) -> float:
        return vs[id(r)].point if base is not None and r is not base else (1.0 if r is base else r.median)

    def rank(r: ConfigRuns) -> tuple[float, int, int]:
        p = point(r)
        return (p if math.isfinite(p) else -math.inf, -r.flags_changed, -r.of)

    top = max(eligible, key=rank)
    parts = []
    if dropped:
        parts.append("dropped: " + "; ".join(dropped))
    if base is None:
        parts.insert(0, f"{top.label} has the best median ({top.median:.1f}) of the configs feasible in every repeat")
        return Recommendation(top, top, (), nan, True,
                              "; ".join(parts) + ". No baseline was confirmed, so there is no uplift.", margin)
    if base.all_feasible:
        winners = [r for r in tuned if vs[id(r)].low > 1.0]
        if not winners:
            parts.insert(0, "no config was shown to beat vLLM's defaults (no simultaneous interval over the "
                            "baseline lies above 1; not a proof that they are equivalent)")
            uplift = vs[id(top)] if top is not base else nan
            if top is not base:
                parts.append(f"closest: {top.label} over the baseline: {uplift.text()}")
            return Recommendation(base, top, (), uplift, False, "; ".join(parts) + ".", margin)
    else:
        winners = tuned
        parts.append(f"the baseline broke the SLO in {base.n_infeasible} of {len(base.feasible)} repeats, so the "
                     f"best feasible config wins")
    best = max(winners, key=rank)
    simpler = [r for r in winners if r is not best and r.flags_changed < best.flags_changed]
    noninf = [r for r in simpler
              if block_ratio(r, best, runs, 1 - 2 * (1 - confidence), len(simpler)).low > 1 - margin]
    chosen = min([best, *noninf], key=lambda r: (r.flags_changed, -point(r), r.of))
    head = (f"{best.label} beats vLLM's defaults by the most" if base.all_feasible
            else f"{best.label} has the best point estimate over the baseline")
    if len(winners) > 1 and base.all_feasible:
        head += f" of the {len(winners)} shown to beat them ({', '.join(r.label for r in winners)})"
    parts.insert(0, head)
    if chosen is not best:
        parts.append(f"{chosen.label} is shown non-inferior to it within {margin:.0%} (one-sided lower bound "
                     f"{block_ratio(chosen, best, runs, 1 - 2 * (1 - confidence), len(simpler)).low:.3f} > "
                     f"{1 - margin:.3f}) and changes {chosen.flags_changed} flag(s) from vLLM's defaults against "
                     f"{best.label}'s {best.flags_changed}, so it is preferred")
    uplift = vs[id(chosen)]
    parts.append(f"{chosen.label} over the baseline: {uplift.text()}")
    return Recommendation(chosen, top, tuple(r.label for r in noninf), uplift, True, "; ".join(parts) + ".", margin)
