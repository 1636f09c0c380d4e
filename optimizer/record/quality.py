"""The quality probe's part of a trial record, and the encoding of probe scores (the study's
reference and each trial's own) as JSON, so that a verdict can be graded again from the database.

:class:`Quality` owns the ``q_*`` user attrs. Figures the probe did not measure are NaN (stored as
None); ``skipped`` says why nothing was measured (``dummy weights``, ``quality.mode=off``...),
``error`` why a probe that ran failed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.quality.distribution import TextDist
from optimizer.quality.gate import Evaluation
from optimizer.quality.scoring import Generation, QualityScores, TextScore
from optimizer.quality.tasks import TaskAnswer
from optimizer.record._attrs import Attrs, attr_value, integer, num, text

__all__ = ["Quality", "scores_from_json", "scores_to_json"]


@dataclass(frozen=True)
class Quality:
    """What the quality probe measured on a trial's warm server, against the study's reference.

    The gate's figures (``mean_kld``, ``p99_kld``, ``same_top1``, the task check) are NaN until the
    trial is graded against a reference; ``self_*`` are the trial's own distance between two views
    of its server (one request at a time, and every passage at once): for the reference trial, the
    study's noise floor."""

    ppl: float = math.nan
    n_tokens: int = 0  # scored reference-text tokens
    agreement: float = math.nan  # mean greedy prefix agreement with the reference (information only)
    exact_match_rate: float = math.nan
    first_divergence: float = math.nan  # mean leading tokens equal to the reference's
    probe_s: float = math.nan  # wall time of the probe
    reference_ppl: float = math.nan
    is_reference: bool = False  # this trial's scores are the study's reference
    numerics: str = ""  # what differs from the baseline's numerics, e.g. "kv_cache_dtype: None -> fp8"
    gated: bool = False  # the ``quality`` constraint was applied to this trial
    violation: float = math.nan  # quality.gate.evaluate's violation (0: within the limits)
    skipped: str = ""  # why the probe did not run ("" when it ran)
    error: str = ""  # why a probe that ran measured nothing
    scores: Optional[QualityScores] = None  # the raw scores (to grade again later)
    mean_kld: float = math.nan  # mean per-position KLD from the reference (nats; a lower bound)
    p99_kld: float = math.nan
    same_top1: float = math.nan  # share of positions whose top-1 token is the reference's
    ppl_ratio: float = math.nan  # perplexity / the reference's (information)
    task_accuracy: float = math.nan
    reference_task_accuracy: float = math.nan
    mcnemar_p: float = math.nan
    task_wilson_low: float = math.nan  # 95 % lower bound of task_accuracy
    floor_mean_kld: float = math.nan  # the study's noise floor the limits were raised to
    reasons: str = ""  # why the gate rejected it ("" when it passed)
    self_mean_kld: float = math.nan  # this server against itself (another batch composition)
    self_p99_kld: float = math.nan
    self_same_top1: float = math.nan

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.reference_ppl - 1.0 if self.reference_ppl > 0 else math.nan

    @property
    def measured(self) -> bool:
        return math.isfinite(self.ppl)

    @property
    def why_rejected(self) -> str:
        """Why the gate made this trial infeasible, in words (the report's tables say it the same way)."""
        if not math.isfinite(self.mean_kld):
            return f"quality not measured ({self.error or self.skipped or 'no probe'}): an unverified numerics change"
        return self.reasons

    @classmethod
    def of(cls, scores: QualityScores, graded: Optional[Evaluation], **kw: Any) -> Quality:
        """The part of a probe's ``scores`` and (when a reference existed) their ``graded`` evaluation."""
        if graded is None:
            return cls(scores.ppl, scores.n_tokens, probe_s=scores.seconds, scores=scores, **kw)
        v, d, t = graded.verdict, graded.verdict.distance, graded.verdict.tasks
        nan = math.nan
        return cls(v.ppl, v.n_tokens, v.agreement, v.exact_match_rate, v.mean_first_divergence, scores.seconds,
                   v.reference_ppl, scores=scores, violation=graded.violation,
                   mean_kld=d.mean_kld if d else nan, p99_kld=d.p99_kld if d else nan,
                   same_top1=d.same_top1 if d else nan, ppl_ratio=d.ppl_ratio if d else nan,
                   task_accuracy=t.accuracy if t else nan, reference_task_accuracy=t.reference_accuracy if t else nan,
                   mcnemar_p=t.p_value if t else nan, task_wilson_low=t.wilson_low if t else nan,
                   floor_mean_kld=graded.floor.mean_kld if graded.floor.views else nan,
                   reasons="; ".join(graded.reasons), **kw)

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "q_ppl": attr_value(self.ppl, 5), "q_n_tokens": self.n_tokens, "q_agreement": attr_value(self.agreement, 4),
            "q_exact_match": attr_value(self.exact_match_rate, 4),
            "q_first_divergence": attr_value(self.first_divergence, 2), "q_probe_s": attr_value(self.probe_s, 2),
            "q_reference_ppl": attr_value(self.reference_ppl, 5), "q_ppl_increase": attr_value(self.ppl_increase, 5),
            "q_violation": attr_value(self.violation, 4), "q_gated": self.gated}
        for key in _FIGURES:
            out["q_" + key] = attr_value(getattr(self, key), 6)
        if self.is_reference:
            out["q_reference"] = True
        for key, v in (("q_numerics", self.numerics), ("q_skipped", self.skipped), ("q_error", self.error[:500]),
                       ("q_reasons", self.reasons[:500])):
            if v:
                out[key] = v
        if self.scores is not None:
            out["q_scores"] = scores_to_json(self.scores)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Quality]:
        if "q_ppl" not in a and "q_skipped" not in a:
            return None
        raw = a.get("q_scores")
        scores = None
        if isinstance(raw, str):
            try:
                scores = scores_from_json(raw)
            except (ValueError, KeyError, TypeError):
                scores = None
        figures = {key: num(a, "q_" + key) for key in _FIGURES}
        return cls(num(a, "q_ppl"), integer(a, "q_n_tokens"), num(a, "q_agreement"), num(a, "q_exact_match"),
                   num(a, "q_first_divergence"), num(a, "q_probe_s"), num(a, "q_reference_ppl"),
                   a.get("q_reference") is True, text(a, "q_numerics"), a.get("q_gated") is True,
                   num(a, "q_violation"), text(a, "q_skipped"), text(a, "q_error"), scores,
                   reasons=text(a, "q_reasons"), **figures)


_FIGURES = ("mean_kld", "p99_kld", "same_top1", "ppl_ratio", "task_accuracy", "reference_task_accuracy", "mcnemar_p",
            "task_wilson_low", "floor_mean_kld", "self_mean_kld", "self_p99_kld", "self_same_top1")


def scores_to_json(s: QualityScores) -> str:
    """A probe's scores as one JSON string (the study's ``quality_reference``, a trial's ``q_scores``)."""
    return json.dumps({
        "dataset": s.dataset, "dataset_sha256": s.dataset_sha256, "max_tokens": s.max_tokens,
        "ppl_seconds": round(s.ppl_seconds, 3), "gen_seconds": round(s.gen_seconds, 3),
        "task_seconds": round(s.task_seconds, 3),
        "texts": [[t.id, t.n_tokens, t.sum_logprob] for t in s.texts],
        "generations": [[g.id, list(g.token_ids), g.text, g.finish_reason, [list(t) for t in g.top_ids]]
                        for g in s.generations],
        "dists": [d.pack() for d in s.dists],
        "tasks": [[a.id, a.kind, a.text, a.correct] for a in s.tasks]})


def scores_from_json(raw: str) -> QualityScores:
    """Read :func:`scores_to_json` back.

    Raises:
        ValueError, KeyError, TypeError: not such a JSON string.
    """
    d = json.loads(raw)
    return QualityScores(
        str(d["dataset"]), str(d["dataset_sha256"]),
        tuple(TextScore(str(i), int(n), float(lp)) for i, n, lp in d["texts"]),
        tuple(Generation(str(g[0]), tuple(int(x) for x in g[1]), str(g[2]), str(g[3]),
                         tuple(tuple(int(x) for x in t) for t in (g[4] if len(g) > 4 else ())))
              for g in d["generations"]),
        int(d["max_tokens"]), float(d["ppl_seconds"]), float(d["gen_seconds"]),
        tuple(TextDist.unpack(x) for x in d.get("dists", ())),
        tuple(TaskAnswer(str(i), str(k), str(t), bool(c)) for i, k, t, c in d.get("tasks", ())),
        float(d.get("task_seconds", 0.0)))
