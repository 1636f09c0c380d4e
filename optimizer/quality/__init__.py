"""The quality probe and gate: a fast config that answers wrong must not win.

- :mod:`~optimizer.quality.dataset`: the fixed, versioned reference texts and prompts.
- :mod:`~optimizer.quality.scoring` (pure): perplexity, greedy agreement, the verdict.
- :mod:`~optimizer.quality.probe`: runs the set against a live server (httpx).
- :mod:`~optimizer.quality.gate` (pure): which trials are probed, the ``quality`` constraint.
"""

from __future__ import annotations

from optimizer.quality.dataset import QualityPrompt, QualitySet, QualityText, available_sets, load_set
from optimizer.quality.gate import UNMEASURED_VIOLATION, grade, needs_probe, numerics_changes
from optimizer.quality.probe import ProbeError, run_probe
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

__all__ = [
    "Generation",
    "ItemAgreement",
    "ProbeError",
    "QualityPrompt",
    "QualityScores",
    "QualitySet",
    "QualityText",
    "QualityVerdict",
    "TextScore",
    "UNMEASURED_VIOLATION",
    "available_sets",
    "compare",
    "first_divergence",
    "grade",
    "load_set",
    "needs_probe",
    "numerics_changes",
    "perplexity",
    "run_probe",
    "text_score",
]
