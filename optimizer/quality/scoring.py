"""Pure scoring: perplexity from token log-probabilities, greedy agreement with a reference.

No I/O here. :class:`QualityScores` is what a probe measured on one server; :func:`compare`
turns a trial's scores and the reference's (the baseline config's, measured once per study)
into a :class:`QualityVerdict`. A probe that measured nothing has NaN figures, never 0.

Definitions:
- perplexity: ``exp(-sum(logprob) / n_tokens)`` over every scored token of every reference text
  (token-weighted; the first token of each text has no context and is not scored).
- first divergence: the number of leading generated tokens that equal the reference's.
- agreement of one prompt: first divergence / the longer of the two sequences (1.0 exactly when
  the sequences are equal); ``agreement`` is its mean over the prompts, ``exact_match_rate`` the
  share of prompts whose sequences are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from optimizer.quality.distribution import DistanceSummary, TextDist, summarize
from optimizer.quality.tasks import TaskAnswer, TaskComparison, compare_tasks, greedy_exactness

__all__ = ["Generation", "ItemAgreement", "QualityScores", "QualityVerdict", "TextScore", "compare",
           "first_divergence", "perplexity", "text_score"]


@dataclass(frozen=True)
class TextScore:
    """One reference text, teacher-forced."""

    id: str
    n_tokens: int  # scored tokens (prompt tokens minus the first)
    sum_logprob: float

    @property
    def ppl(self) -> float:
        return perplexity(self.sum_logprob, self.n_tokens)


@dataclass(frozen=True)
class Generation:
    """One greedy continuation (temperature 0)."""

    id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str
    top_ids: tuple[tuple[int, ...], ...] = ()  # the top-N token ids at each generated position


@dataclass(frozen=True)
class QualityScores:
    """What one probe measured on one server."""

    dataset: str  # name of the quality set
    dataset_sha256: str
    texts: tuple[TextScore, ...]
    generations: tuple[Generation, ...]
    max_tokens: int
    ppl_seconds: float  # wall time of the teacher-forced requests
    gen_seconds: float  # wall time of the greedy generations
    dists: tuple[TextDist, ...] = ()  # per passage, per position: actual token and top-k (prompt_logprobs=k)
    tasks: tuple[TaskAnswer, ...] = ()
    task_seconds: float = 0.0

    @property
    def n_tokens(self) -> int:
        return sum(t.n_tokens for t in self.texts)

    @property
    def ppl(self) -> float:
        return perplexity(sum(t.sum_logprob for t in self.texts), self.n_tokens)

    @property
    def seconds(self) -> float:
        return self.ppl_seconds + self.gen_seconds + self.task_seconds

    @property
    def task_accuracy(self) -> float:
        return sum(t.correct for t in self.tasks) / len(self.tasks) if self.tasks else math.nan


@dataclass(frozen=True)
class ItemAgreement:
    id: str
    first_divergence: int  # leading tokens equal to the reference's
    length: int  # tokens generated here
    reference_length: int

    @property
    def exact(self) -> bool:
        return self.first_divergence == self.length == self.reference_length

    @property
    def agreement(self) -> float:
        longest = max(self.length, self.reference_length)
        return 1.0 if longest == 0 else self.first_divergence / longest


@dataclass(frozen=True)
class QualityVerdict:
    """A trial's quality against the reference's."""

    ppl: float
    reference_ppl: float
    n_tokens: int
    items: tuple[ItemAgreement, ...]
    distance: Optional[DistanceSummary] = None  # teacher-forced distributions (None: not measured on both)
    tasks: Optional[TaskComparison] = None  # None: the set has no tasks
    # greedy answers that differ from the reference's where, at the first differing token, a pick is
    # not in the other side's top-N (a wrong token, not a flipped near-tie); and how many differ at all
    not_near_tie: int = 0
    diverged: int = 0

    @property
    def ppl_increase(self) -> float:
        """Relative perplexity change: 0.05 is 5 % worse than the reference, negative is better."""
        return self.ppl / self.reference_ppl - 1.0

    @property
    def agreement(self) -> float:
        return math.fsum(i.agreement for i in self.items) / len(self.items) if self.items else math.nan

    @property
    def exact_match_rate(self) -> float:
        return sum(i.exact for i in self.items) / len(self.items) if self.items else math.nan

    @property
    def mean_first_divergence(self) -> float:
        return math.fsum(i.first_divergence for i in self.items) / len(self.items) if self.items else math.nan


def perplexity(sum_logprob: float, n_tokens: int) -> float:
    """``exp(-sum_logprob / n_tokens)``; NaN when nothing was scored."""
    if n_tokens <= 0 or not math.isfinite(sum_logprob):
        return math.nan
    return math.exp(-sum_logprob / n_tokens)


def text_score(id: str, token_ids: Sequence[int], logprobs: Sequence[Optional[float]]) -> TextScore:
    """Score one text from its prompt tokens and each token's log-probability given the ones
    before it (``logprobs[0]`` is None: the first token has no context).

    Raises:
        ValueError: the lists differ in length, or a token after the first has no log-probability.
    """
    if len(token_ids) != len(logprobs):
        raise ValueError(f"text {id!r}: {len(token_ids)} tokens but {len(logprobs)} log-probabilities")
    scored = list(logprobs[1:])
    if any(lp is None for lp in scored):
        raise ValueError(f"text {id!r}: a token after the first has no log-probability")
    return TextScore(id, len(scored), math.fsum(lp for lp in scored if lp is not None))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading elements ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def compare(scores: QualityScores, reference: QualityScores) -> QualityVerdict:
    """The verdict of ``scores`` against ``reference``, item by item.

    Raises:
        ValueError: the two were not measured on the same quality set with the same tokenizer and
            ``max_tokens`` (different sets, different items, or a text tokenized differently).
    """
    if (scores.dataset, scores.dataset_sha256) != (reference.dataset, reference.dataset_sha256):
        raise ValueError(f"quality set {scores.dataset} ({scores.dataset_sha256[:12]}) is not the reference's "
                         f"{reference.dataset} ({reference.dataset_sha256[:12]}): measure the reference again")
    if scores.max_tokens != reference.max_tokens:
        raise ValueError(f"max_tokens {scores.max_tokens} differs from the reference's {reference.max_tokens}")
    ref_texts = {t.id: t for t in reference.texts}
    if set(ref_texts) != {t.id for t in scores.texts}:
        raise ValueError("the scored texts differ from the reference's")
    for t in scores.texts:
        # with distributions, a text scored on fewer tokens (a server whose context is shorter than the passage)
        # is compared on the positions both have, and summarize checks those tokens match
        if t.n_tokens != ref_texts[t.id].n_tokens and not (scores.dists and reference.dists):
            raise ValueError(f"text {t.id!r} has {t.n_tokens} tokens here and {ref_texts[t.id].n_tokens} in the "
                             f"reference: another tokenizer (another model?)")
    ref_gens = {g.id: g for g in reference.generations}
    if set(ref_gens) != {g.id for g in scores.generations}:
        raise ValueError("the generated prompts differ from the reference's")
    items = tuple(ItemAgreement(g.id, first_divergence(g.token_ids, ref_gens[g.id].token_ids), len(g.token_ids),
                                len(ref_gens[g.id].token_ids)) for g in scores.generations)
    checks = [greedy_exactness(g.token_ids, ref_gens[g.id].token_ids, g.top_ids, ref_gens[g.id].top_ids)
              for g in scores.generations]
    distance = summarize(scores.dists, reference.dists) if scores.dists and reference.dists else None
    tasks = compare_tasks(scores.tasks, reference.tasks) if scores.tasks or reference.tasks else None
    return QualityVerdict(scores.ppl, reference.ppl, scores.n_tokens, items, distance, tasks,
                          sum(c is False for c in checks), sum(c is not None for c in checks))
