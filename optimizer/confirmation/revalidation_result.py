"""Re-validation's result, read from a study's trials: pure (no server, no loop; the stage itself is
:mod:`optimizer.confirmation.revalidation`). A study's answer re-measured on the vLLM installed now.

A tuned config holds for the vLLM it was measured on.
:func:`optimizer.confirmation.revalidation.run_revalidation` runs the confirmation stage
(:func:`optimizer.confirmation.stage.run_confirmation`, unchanged: the baseline, which is vLLM's
defaults *of the installed version*, and the ``study.confirm.top_k`` best configs of the study,
each on fresh servers in interleaved rounds on the held-out prompts) on the installed vLLM.
The runs are stored in the study like any confirmation run, marked with their engine; the runs of the
study's own version are kept, so the two versions stand side by side.

:func:`revalidation` (pure over FrozenTrials) compares them: each config's change since the study
(now over then, paired by round: a round's held-out prompts are the same on both versions; its
interval as the confirmation's, with the study's confirmation's rounds, or the search's single value
where the study had no confirmation), and whether the study's recommendation still holds: the
confirmation rule picks the same config on the installed vLLM. The report and ``best.yaml`` follow
the newest runs: the recommendation when it holds, otherwise the new winner, marked as such.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from optuna.trial import FrozenTrial

from optimizer.confirmation.confirm_result import ConfirmResult, summarize_confirmation
from optimizer.confirmation.plan import confirmation_trials, search_trials
from optimizer.confirmation.uplift import ConfigRuns, Ratio, mean_interval, paired_ratio
from optimizer.study.results import engine_versions, latest_version, of_version, study_result

__all__ = ["ConfigChange", "Revalidation", "describe_revalidation", "revalidation"]


@dataclass(frozen=True)
class ConfigChange:
    """One config, then (the study's version) and now (the installed one)."""

    label: str
    of: int  # the search trial it stands for
    baseline: bool
    then: tuple[float, ...]  # the study's confirmation runs by round, or the search's value alone
    then_source: str  # "confirmation" or "search"
    now: ConfigRuns
    change: Ratio  # now over then (no interval with fewer than two rounds on both)
    confidence: float

    def interval(self, values: Sequence[float]) -> tuple[float, float]:
        return mean_interval(values, self.confidence)


@dataclass(frozen=True)
class Revalidation:
    then_version: str
    now_version: str
    then: Optional[ConfirmResult]  # the study's confirmation on its own version (None: it had none)
    now: ConfirmResult
    study_pick: Optional[int]  # the study's recommendation: its confirmation's choice, else the search's best
    changes: tuple[ConfigChange, ...]
    pick_source: str = "confirmation"  # where study_pick comes from: "confirmation" or "search"

    @property
    def pick_words(self) -> str:
        """The study's answer in words: its confirmed recommendation, or its search's pick."""
        if self.pick_source == "confirmation":
            return f"the study's recommendation (trial {self.study_pick}, measured on vLLM {self.then_version})"
        return (f"the study's pick (trial {self.study_pick}, the best of its search on vLLM {self.then_version}; "
                f"its confirmation recommended none)" if self.then is not None else
                f"the study's pick (trial {self.study_pick}, the best of its search on vLLM {self.then_version})")

    @property
    def chosen_now(self) -> Optional[int]:
        c = self.now.recommendation.chosen
        return c.of if c is not None else None

    @property
    def holds(self) -> Optional[bool]:
        """The confirmation rule on the installed vLLM picks the study's recommendation (None: the
        study had none)."""
        return None if self.study_pick is None else self.chosen_now == self.study_pick


def _label(runs: Sequence[ConfigRuns], of: Optional[int]) -> str:
    return next((r.label for r in runs if r.of == of), f"trial {of}") if of is not None else "none"


def revalidation(trials: Sequence[FrozenTrial], confidence: float = 0.95) -> Optional[Revalidation]:
    """The comparison of the newest confirmation runs with the study's own version (None: the newest
    runs are of the study's version, or there are none)."""
    search, runs = search_trials(trials), confirmation_trials(trials)
    then_v, now_v = latest_version(search), latest_version(runs)
    if not then_v or not now_v or then_v == now_v or now_v not in engine_versions(runs):
        return None
    now = summarize_confirmation(list(trials), confidence, version=now_v)
    if now is None:
        return None
    then = summarize_confirmation(list(trials), confidence, version=then_v) if then_v in engine_versions(runs) else None
    pick_source = "confirmation"
    if then is not None and then.recommendation.chosen is not None:
        pick: Optional[int] = then.recommendation.chosen.of
    else:
        best = study_result(of_version(search, then_v)).best
        pick, pick_source = (best.number if best is not None else None), "search"
    by_of = {t.number: t for t in search}
    changes = []
    for r in now.runs:
        before = next((b for b in then.runs if b.of == r.of), None) if then is not None else None
        if before is not None:
            values, source = before.values, "confirmation"
        else:
            v = by_of[r.of].value if r.of in by_of else None
            values, source = (float(v) if v is not None else math.nan,), "search"
        ratio = paired_ratio(r.values, values, confidence) if source == "confirmation" else \
            Ratio(_median(r.measured) / values[0] if values[0] else math.nan, math.nan, math.nan, 1,
                  confidence)
        changes.append(ConfigChange(r.label, r.of, r.baseline, tuple(values), source, r, ratio, confidence))
    return Revalidation(then_v, now_v, then, now, pick, tuple(changes), pick_source)


def _median(values: Sequence[float]) -> float:
    x = [v for v in values if math.isfinite(v)]
    return statistics.median(x) if x else math.nan


def describe_revalidation(r: Revalidation) -> str:
    lines = [f"revalidation on vLLM {r.now_version} of the study measured on vLLM {r.then_version} "
             f"({r.now.rounds} rounds on fresh servers, held-out prompts; change = now / then, paired by round):"]
    for c in r.changes:
        then_med = _median(c.then)
        lo, hi = c.interval(c.now.values)
        lines.append(f"  {c.label}{' (vLLM defaults of each version)' if c.baseline else ''}: then {then_med:.1f} "
                     f"({c.then_source}), now median {c.now.median:.1f} (mean {c.confidence:.0%} CI "
                     f"{lo:.1f}-{hi:.1f}), change {c.change.text()}")
    rec = r.now.recommendation
    lines.append(f"recommendation on vLLM {r.now_version}: {rec.chosen.label if rec.chosen else 'none'}: {rec.reason}")
    if r.holds is None:
        lines.append("the study had no recommendation to hold.")
    elif r.holds:
        lines.append(f"{r.pick_words} still holds on vLLM {r.now_version}.")
    else:
        lines.append(f"{r.pick_words} does NOT hold on vLLM {r.now_version}: the new winner is "
                     f"{_label(r.now.runs, r.chosen_now)}.")
    return "\n".join(lines)
