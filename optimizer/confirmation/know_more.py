"""What a confirmation could not tell apart, and what it would take to know more: the closing
line of ``python -m optimizer.run`` after its confirmed answer. Pure (numbers in, words out).

The smallest gain a confirmation can show is the half-width of its simultaneous interval over the
defaults (:func:`optimizer.confirmation.uplift.block_ratio`): ``t * sqrt(2 * var / n)`` on the log scale,
with ``var`` the per-run noise (log scale), ``n`` rounds, and ``t`` Student's quantile at
``1 - alpha / (2 m)`` for ``m`` configs against the defaults with ``(k - 1)(n - 1)`` degrees of
freedom (``k = m + 1`` configs). The noise is read back from the recommendation's own interval, so
the projection for a larger design assumes the same per-run noise on the same host; that is all
it claims (a busier host, or configs that differ more, change it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimizer.confirmation.uplift import Ratio
from optimizer.core.stats import t_quantile

__all__ = ["NextStep", "detectable_gain", "know_more", "run_noise"]


@dataclass(frozen=True)
class NextStep:
    """The larger study the closing line proposes (``make demo ARGS=...`` continues the same study)."""

    n_trials: int = 20
    top_k: int = 3
    repeats: int = 5

    def args(self) -> str:
        return f"study.n_trials={self.n_trials} study.confirm.top_k={self.top_k} study.confirm.repeats={self.repeats}"


def _t(confidence: float, comparisons: int, dof: int) -> float:
    return t_quantile(1 - (1 - confidence) / (2 * max(1, comparisons)), dof)


def run_noise(u: Ratio) -> float:
    """The per-run variance of log(value) behind the interval ``u`` (NaN without an interval)."""
    if not (math.isfinite(u.point) and math.isfinite(u.high) and u.pairs >= 2 and u.point > 0):
        return math.nan
    dof = u.dof or u.pairs - 1
    t = _t(u.confidence, u.comparisons, dof)
    half = math.log(u.high / u.point)
    return (half / t) ** 2 * u.pairs / 2 if math.isfinite(t) and t > 0 else math.nan


def detectable_gain(var: float, rounds: int, configs: int, confidence: float) -> float:
    """The smallest ratio over the defaults whose simultaneous interval would lie above 1 with
    ``configs`` configs confirmed (the defaults included) over ``rounds`` rounds, at per-run noise
    ``var`` (NaN when undefined)."""
    if not math.isfinite(var) or rounds < 2 or configs < 2:
        return math.nan
    t = _t(confidence, configs - 1, (configs - 1) * (rounds - 1))
    return math.exp(t * math.sqrt(2 * var / rounds))


def know_more(u: Ratio, configs: int, rounds: int, n_search: int, run_s: float,
              step: NextStep = NextStep()) -> str:
    """One line: what this confirmation could tell apart, and the larger study that would tell
    more, with its cost in server runs and (at ``run_s`` seconds per run on this host) minutes.

    Args:
        u: the recommendation's uplift (its interval carries the noise measured here).
        configs: configs confirmed, the defaults included; rounds: rounds run.
        n_search: search trials the study holds; run_s: median seconds of one run here."""
    var = run_noise(u)
    more = rounds + 1
    now, plus, then = (detectable_gain(var, rounds, configs, u.confidence),
                       detectable_gain(var, more, configs, u.confidence),
                       detectable_gain(var, step.repeats, step.top_k + 1, u.confidence))
    runs = max(0, step.n_trials - n_search) + (step.top_k + 1) * step.repeats

    def cost(n: int) -> str:
        at = f", about {n * run_s / 60:.0f} min at this study's {run_s:.0f} s per run" if math.isfinite(run_s) \
            and run_s > 0 else ""
        return f"at most {n} more server runs{at}"

    if math.isfinite(now) and math.isfinite(then):
        told = (f"{configs} configs confirmed in {rounds} rounds can only show a gain above x{now:.2f} over the "
                f"defaults at the run-to-run noise measured here ({math.sqrt(var):.1%} per run); "
                f"study.confirm.repeats={more} lowers that to x{plus:.2f} ({cost(configs)}), and "
                f"{step.top_k + 1} configs in {step.repeats} rounds to x{then:.2f}")
    else:
        told = (f"{configs} configs confirmed in {rounds} rounds gave no interval to read the run-to-run noise "
                f"from")
    return (f"TO KNOW MORE: this study searched {n_search} configs; {told}. Run the same command with "
            f'{step.args()} to continue it ({cost(runs)}; the demo: make demo ARGS="{step.args()}").')
