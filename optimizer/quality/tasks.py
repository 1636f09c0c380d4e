"""Pure task check: exactly checkable answers scored as accuracy, compared paired with the
reference's (no I/O).

Each task of a quality set (arithmetic, copy, format, lookup) is a few-shot completion prompt whose
answer is one line; a greedy answer is correct when its first line, stripped (and without a closing
full stop), equals the expected answer. Two probes answered the same tasks, so the comparison is paired: McNemar's exact test on the
discordant tasks (:func:`mcnemar_p`, two-sided) says whether the trial lost more tasks than it won
beyond chance; :func:`wilson_interval` bounds the trial's accuracy. Also here, the exactness check
of speculative decoding (:func:`greedy_exactness`): at the first token where two greedy answers
differ, each side's pick must be among the other's top-N (a near-tie flipped, not a wrong token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["TaskAnswer", "TaskComparison", "compare_tasks", "greedy_exactness", "is_correct", "mcnemar_p",
           "wilson_interval"]


@dataclass(frozen=True)
class TaskAnswer:
    id: str
    kind: str
    text: str  # the greedy answer
    correct: bool


def is_correct(answer_text: str, expected: str) -> bool:
    """The first line of ``answer_text``, stripped of spaces and a closing full stop, equals ``expected``."""
    lines = answer_text.strip().splitlines()
    return bool(lines) and lines[0].strip().removesuffix(".").strip() == expected.strip()


def mcnemar_p(lost: int, won: int) -> float:
    """Two-sided exact McNemar p-value for ``lost`` tasks the reference got right and the trial
    wrong, and ``won`` the other way round (binomial test of the discordant pairs at 1/2)."""
    n = lost + won
    if n == 0:
        return 1.0
    k = min(lost, won)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of an accuracy ``correct / n``; NaNs for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TaskComparison:
    n: int
    accuracy: float
    reference_accuracy: float
    lost: int  # right in the reference, wrong here
    won: int
    p_value: float  # McNemar exact, two-sided
    wilson_low: float  # 95 % lower bound of this side's accuracy

    @property
    def worse(self) -> bool:
        """Lost more tasks than won."""
        return self.lost > self.won


def compare_tasks(trial: Sequence[TaskAnswer], ref: Sequence[TaskAnswer]) -> TaskComparison:
    """Paired comparison over the tasks both answered (matched by id).

    Raises:
        ValueError: the task sets differ.
    """
    refs = {a.id: a for a in ref}
    if set(refs) != {a.id for a in trial}:
        raise ValueError("the answered tasks differ from the reference's")
    n = len(trial)
    if n == 0:
        return TaskComparison(0, math.nan, math.nan, 0, 0, 1.0, math.nan)
    lost = sum(refs[a.id].correct and not a.correct for a in trial)
    won = sum(a.correct and not refs[a.id].correct for a in trial)
    right = sum(a.correct for a in trial)
    return TaskComparison(n, right / n, sum(a.correct for a in ref) / n, lost, won, mcnemar_p(lost, won),
                          wilson_interval(right, n)[0])


def greedy_exactness(trial: Sequence[int], ref: Sequence[int], trial_top: Sequence[Sequence[int]],
                     ref_top: Sequence[Sequence[int]]) -> Optional[bool]:
    """None when the two greedy sequences agree (one may stop earlier); otherwise whether, at the first
    differing position, the trial's token is in the reference's top-N there and the reference's in
    the trial's (``*_top[i]``: the top-N token ids at generated position i)."""
    for i, (a, b) in enumerate(zip(trial, ref)):
        if a != b:
            return (i < len(ref_top) and a in ref_top[i]) and (i < len(trial_top) and b in trial_top[i])
    return None
