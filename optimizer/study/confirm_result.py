"""The confirmation stage's result, read from a study's trials: pure (no server, no loop).

:func:`summarize_confirmation` groups the confirmation runs stored in a study (the stage itself:
:mod:`optimizer.study.confirm`) by config and recommends one (:func:`~optimizer.study.uplift.recommend`);
the report (:mod:`optimizer.reporting.confirmation`) and the stage's closing log line read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import optuna

from optimizer.study.confirm_plan import config_runs, confirmed
from optimizer.study.results import study_result
from optimizer.study.uplift import ConfigRuns, Recommendation, recommend

__all__ = ["ConfirmResult", "describe_confirmation", "summarize_confirmation"]


@dataclass(frozen=True)
class ConfirmResult:
    runs: list[ConfigRuns]  # baseline first
    recommendation: Recommendation
    study_pick: Optional[int]  # the search's best trial (None: no feasible one)
    rounds: int

    @property
    def pick_survived(self) -> Optional[bool]:
        chosen = self.recommendation.chosen
        return None if self.study_pick is None else chosen is not None and chosen.of == self.study_pick


def summarize_confirmation(trials: list[optuna.trial.FrozenTrial], confidence: float) -> Optional[ConfirmResult]:
    """The confirmation result of a study's trials (None: no confirmation runs)."""
    cands, rounds = confirmed(trials)
    if not cands:
        return None
    runs = config_runs(cands, trials, rounds)
    best = study_result(trials).best
    return ConfirmResult(runs, recommend(runs, confidence), best.number if best is not None else None, rounds)


def describe_confirmation(res: ConfirmResult) -> str:
    lines = [f"confirmation ({res.rounds} rounds on fresh servers, held-out prompts):"]
    for r in res.runs:
        vals = ", ".join("—" if f is None else f"{v:.1f}{'' if f else ' (infeasible)'}"
                         for v, f in zip(r.values, r.feasible))
        lines.append(f"  {r.label}: median {r.median:.1f} [{vals}]")
    rec = res.recommendation
    lines.append(f"recommendation: {rec.chosen.label if rec.chosen else 'none'}: {rec.reason}")
    if res.pick_survived is not None:
        verb = "survived" if res.pick_survived else "did not survive"
        lines.append(f"the study's pick (trial {res.study_pick}) {verb} the confirmation.")
    return "\n".join(lines)
