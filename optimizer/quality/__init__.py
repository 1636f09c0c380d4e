"""The quality probe and gate: a fast config that degrades the model's answers must not win.

- :mod:`~optimizer.quality.dataset`: the fixed, versioned passages, prompts and tasks.
- :mod:`~optimizer.quality.distribution` (pure): per-position KL divergence (a lower bound from
  top-k plus a "rest" bucket), same-top-1, perplexity ratio.
- :mod:`~optimizer.quality.tasks` (pure): exact task answers, McNemar, Wilson; the greedy exactness
  check of speculative decoding.
- :mod:`~optimizer.quality.scoring` (pure): a probe's scores and the verdict against the reference.
- :mod:`~optimizer.quality.server_probe`: runs the set against a live server (httpx).
- :mod:`~optimizer.quality.gate` (pure): which trials are probed, the noise floor, the limits, the
  ``quality`` constraint.
"""

from __future__ import annotations

from optimizer.quality.dataset import (
    QualityPrompt,
    QualitySet,
    QualityTask,
    QualityText,
    available_sets,
    load_set,
)
from optimizer.quality.distribution import DistanceSummary, TextDist, kld_lower_bound, summarize
from optimizer.quality.gate import (
    UNMEASURED_VIOLATION,
    Evaluation,
    Floor,
    Limits,
    evaluate,
    grade,
    needs_probe,
    noise_floor,
    numerics_changes,
)
from optimizer.quality.server_probe import ProbeError, run_probe
from optimizer.quality.scoring import (
    Generation,
    ItemAgreement,
    QualityScores,
    QualityVerdict,
    TextScore,
    compare,
    first_divergence,
    perplexity,
    text_score,
)
from optimizer.quality.tasks import TaskAnswer, TaskComparison, compare_tasks, mcnemar_p, wilson_interval

__all__ = [
    "DistanceSummary",
    "Evaluation",
    "Floor",
    "Generation",
    "ItemAgreement",
    "Limits",
    "ProbeError",
    "QualityPrompt",
    "QualityScores",
    "QualitySet",
    "QualityTask",
    "QualityText",
    "QualityVerdict",
    "TaskAnswer",
    "TaskComparison",
    "TextDist",
    "TextScore",
    "UNMEASURED_VIOLATION",
    "available_sets",
    "compare",
    "compare_tasks",
    "evaluate",
    "first_divergence",
    "grade",
    "kld_lower_bound",
    "load_set",
    "mcnemar_p",
    "needs_probe",
    "noise_floor",
    "numerics_changes",
    "perplexity",
    "run_probe",
    "summarize",
    "text_score",
    "wilson_interval",
]
