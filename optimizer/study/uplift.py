"""The confirmation's statistics and its recommendation rule. Pure (plain numbers in, words out).

Each confirmed config has one value per round (the trial's value: output tokens/s, or whatever
the load mode scores) and one feasibility verdict per round. Rounds are interleaved (baseline,
A, B, baseline, A, B, ...), so a drift of the host hits every config of a round alike; the
comparison of two configs is therefore **paired by round**:

- the ratio of config A over config B is estimated from the per-round log ratios
  ``log(a_r / b_r)``: their mean, exponentiated, is the point (a geometric mean of the paired
  ratios; what is shared within a round cancels);
- its interval (:func:`block_ratio`) is that of a randomized block design on the log scale: the
  rounds are the blocks, every confirmed config measured in them a treatment, and the noise is
  the residual of the two-way fit (config + round), pooled over all those configs, so it has
  ``(k - 1)(n - 1)`` degrees of freedom for ``k`` configs and ``n`` rounds instead of the
  ``n - 1`` of one pair alone (with two rounds: 3 for the baseline and the top 3, against 1,
  whose t quantile of 12.7 makes any interval hold 1). Pooling assumes the configs' run-to-run
  noise is alike on the log scale; where the pair's own noise (the paired estimate) is the larger,
  that one is used, with its own ``n - 1`` degrees of freedom: a config noisier than the rest
  keeps its own, wider interval. With two configs it is exactly the paired t-interval
  (:func:`paired_ratio`);
- a config's own spread is the t-interval of the mean of its repeats (shown in the report).

:func:`recommend` picks, among the configs **feasible in every repeat**, the one with the best
median; the configs whose paired interval against it contains 1 are within its noise, and among
those the one with the fewest flags changed from vLLM's defaults wins (the baseline has none). So
when no config beats the defaults beyond noise, the recommendation is the defaults.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from optimizer.stats import t_quantile

__all__ = ["ConfigRuns", "Ratio", "Recommendation", "block_ratio", "mean_interval", "paired_ratio", "recommend"]


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

    @property
    def within_noise(self) -> bool:
        """The interval holds 1 (or there is no interval): A and B are not told apart."""
        return not (self.low > 1.0 or self.high < 1.0)

    def text(self) -> str:
        if not math.isfinite(self.point):
            return "n/a"
        ci = (f"{self.confidence:.0%} CI {self.low:.3f}-{self.high:.3f}" if math.isfinite(self.low)
              else "no interval: fewer than 2 paired rounds")
        pooled = f", noise pooled over {self.configs} configs" if self.configs > 2 and math.isfinite(self.low) else ""
        return f"x{self.point:.3f} ({ci}, {self.pairs} paired rounds{pooled})"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of the finite ``values`` (NaN with fewer than two)."""
    x = [v for v in values if math.isfinite(v)]
    if len(x) < 2:
        return math.nan, math.nan
    m = statistics.fmean(x)
    half = t_quantile(1 - (1 - confidence) / 2, len(x) - 1) * statistics.stdev(x) / math.sqrt(len(x))
    return m - half, m + half


def paired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Ratio:
    """A over B from the rounds where both have a positive finite value (index = round)."""
    logs = [math.log(x / y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0]
    if not logs:
        return Ratio(math.nan, math.nan, math.nan, 0, confidence)
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return Ratio(math.exp(m), math.nan, math.nan, 1, confidence)
    half = t_quantile(1 - (1 - confidence) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Ratio(math.exp(m), math.exp(m - half), math.exp(m + half), len(logs), confidence)


def _logs(values: Sequence[float]) -> list[Optional[float]]:
    return [math.log(v) if math.isfinite(v) and v > 0 else None for v in values]


def block_ratio(a: "ConfigRuns", b: "ConfigRuns", runs: Sequence["ConfigRuns"], confidence: float = 0.95) -> Ratio:
    """A over B, paired by round, with the noise of the block design (module docstring): the rounds
    where both have a positive finite value, and the other configs of ``runs`` measured in all of
    them. Fewer than two such rounds: :func:`paired_ratio`."""
    la, lb = _logs(a.values), _logs(b.values)
    rounds = [i for i in range(min(len(la), len(lb))) if la[i] is not None and lb[i] is not None]
    if len(rounds) < 2:
        return paired_ratio(a.values, b.values, confidence)
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
    half = t_quantile(1 - (1 - confidence) / 2, dof) * math.sqrt(var * 2 / n)
    return Ratio(math.exp(d), math.exp(d - half), math.exp(d + half), n, confidence, dof, k)


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
    top: Optional[ConfigRuns]  # the best median among those feasible in every repeat
    tied: tuple[str, ...]  # labels within the top's noise (its paired interval holds 1)
    uplift: Ratio  # chosen over the baseline (top over the baseline when the baseline is chosen)
    beats_baseline: bool  # a tuned config is recommended over vLLM's defaults
    reason: str


def recommend(runs: Sequence[ConfigRuns], confidence: float = 0.95) -> Recommendation:
    """The recommendation rule of the module docstring, with its reason in words."""
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
        return Recommendation(None, None, (), nan, False, why + ".")
    top = max(eligible, key=lambda r: (r.median, -r.flags_changed, -r.of))
    tied = [r for r in eligible if r is not top and block_ratio(r, top, runs, confidence).within_noise]
    chosen = min([top, *tied], key=lambda r: (r.flags_changed, -r.median, r.of))
    if base is not None and base.all_feasible and chosen is not base \
            and block_ratio(chosen, base, runs, confidence).within_noise:
        tied.append(base)  # the simpler pick is itself within the defaults' noise: the same rule again
        chosen = base
    parts = [f"{top.label} has the best median ({top.median:.1f}) of the configs feasible in every repeat"]
    if dropped:
        parts.append("dropped: " + "; ".join(dropped))
    if chosen is not top:
        parts.append(f"{', '.join(r.label for r in tied)} {'is' if len(tied) == 1 else 'are'} within its noise "
                     f"(the interval holds 1), so {chosen.label} is preferred: it changes "
                     f"{chosen.flags_changed} flag(s) from vLLM's defaults against {top.label}'s {top.flags_changed}")
    if base is None:
        return Recommendation(chosen, top, tuple(r.label for r in tied), nan, chosen is not None,
                              "; ".join(parts) + ". No baseline was confirmed, so there is no uplift.")
    if chosen is base:
        uplift = block_ratio(top, base, runs, confidence) if top is not base else nan
        parts.append("no config beats vLLM's defaults beyond noise" + (f" ({top.label} over the baseline: "
                                                                     f"{uplift.text()})" if top is not base else ""))
        return Recommendation(chosen, top, tuple(r.label for r in tied), uplift, False, "; ".join(parts) + ".")
    uplift = block_ratio(chosen, base, runs, confidence)
    if not base.all_feasible:
        parts.append(f"the baseline broke the SLO in {base.n_infeasible} of {len(base.feasible)} repeats")
    parts.append(f"{chosen.label} over the baseline: {uplift.text()}")
    return Recommendation(chosen, top, tuple(r.label for r in tied), uplift, True, "; ".join(parts) + ".")
