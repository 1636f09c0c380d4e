"""Probe scores built from plain values, for the quality gate's tests (no server)."""

from __future__ import annotations

import math
from typing import Sequence

from optimizer.quality.distribution import TextDist
from optimizer.quality.scoring import Generation, QualityScores, TextScore
from optimizer.quality.tasks import TaskAnswer

VOCAB = 6


def dist(id: str, n: int = 50, tilt: float = 0.0, flip_every: int = 0) -> TextDist:
    """A passage of ``n`` positions over a 6-token vocabulary, top-3 known: position i prefers token
    i % 6; ``tilt`` moves probability mass away from it (0: the reference), ``flip_every`` makes every
    such position's top-1 another token."""
    ids, lps, tops = [], [], []
    for i in range(n):
        best = i % VOCAB
        if flip_every and i % flip_every == 0:
            best = (best + 1) % VOCAB
        w = [math.exp(3.0 - tilt) if t == best else 1.0 + (tilt if t == (best + 2) % VOCAB else 0.0)
             for t in range(VOCAB)]
        z = sum(w)
        lp = {t: math.log(w[t] / z) for t in range(VOCAB)}
        actual = i % VOCAB
        ids.append(actual)
        lps.append(lp[actual])
        tops.append(sorted(lp.items(), key=lambda p: -p[1])[:3])
    return TextDist.from_positions(id, 3, ids, lps, tops)


def scores(tilt: float = 0.0, *, flip_every: int = 0, gens: Sequence[tuple[int, ...]] = ((1, 2, 3, 4), (7, 8)),
           correct: Sequence[bool] = (True,) * 10, dataset: str = "quality-v2") -> QualityScores:
    dists = (dist("t1", 50, tilt, flip_every), dist("long", 1200, tilt, flip_every))
    texts = tuple(TextScore(d.id, d.n, math.fsum(d.logprobs)) for d in dists)
    generations = tuple(Generation(f"p{k}", g, "", "length", tuple((t, t + 100) for t in g)) for k, g in enumerate(gens))
    tasks = tuple(TaskAnswer(f"task{k}", "arithmetic", "", c) for k, c in enumerate(correct))
    return QualityScores(dataset, "ab" * 32, texts, generations, 4, 1.0, 2.0, dists, tasks, 0.5)
