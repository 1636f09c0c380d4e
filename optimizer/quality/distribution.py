"""Pure teacher-forced distribution metrics: how far a trial's next-token distribution moved from
the reference's, position by position (no I/O).

A probe asks vLLM for ``prompt_logprobs=k`` on each reference passage: for every position after
the first, the log-probabilities of the ``k`` most likely next tokens and of the passage's actual
next token. :class:`TextDist` keeps them compactly (packed arrays); :func:`position_klds` compares
two of them.

The KL divergence is ``KL(P_ref || P_trial)`` (llama.cpp's direction: the reference is the base),
computed on a coarsened vocabulary: one bucket per token whose log-probability both sides returned
(the reference's top-k and actual token, intersected with the trial's top-k and actual token) plus
one "rest" bucket holding the remaining mass of each side (``1 - sum``). Merging tokens can only
lower a KL divergence (the log-sum inequality), so every figure here is a **lower bound** of the
full-vocabulary KLD; it is tight where the top-k hold most of the mass, which a reference passage's
positions mostly do.
"""

from __future__ import annotations

import array
import base64
import math
import zlib
from dataclasses import dataclass
from typing import Sequence

__all__ = ["DistanceSummary", "TextDist", "kld_lower_bound", "percentile", "position_klds", "summarize"]

_REST_FLOOR = 1e-12  # a "rest" mass computed as <= 0 by rounding is treated as this


@dataclass(frozen=True)
class TextDist:
    """One passage, teacher-forced: per scored position (every token but the first) the actual
    token and its log-probability, and the top-``k`` token ids and log-probabilities (best first).

    Stored packed (:meth:`pack`): ~8 bytes per (position, token)."""

    id: str
    k: int
    token_ids: tuple[int, ...]  # the actual token at each scored position
    logprobs: tuple[float, ...]  # its log-probability given the tokens before it
    top_ids: tuple[int, ...]  # flattened, k per position (fewer are padded with -1)
    top_logprobs: tuple[float, ...]  # flattened, k per position (padding: -inf)

    @property
    def n(self) -> int:
        return len(self.token_ids)

    def top(self, i: int) -> dict[int, float]:
        """Position ``i``'s known log-probabilities: its top-k and its actual token."""
        out = {t: lp for t, lp in zip(self.top_ids[i * self.k:(i + 1) * self.k],
                                      self.top_logprobs[i * self.k:(i + 1) * self.k]) if t >= 0}
        out[self.token_ids[i]] = self.logprobs[i]
        return out

    def top1(self, i: int) -> int:
        return self.top_ids[i * self.k] if self.k else self.token_ids[i]

    def pack(self) -> list[object]:
        """``[id, k, base64(zlib(int32 ids | float32 logprobs | int32 top ids | float32 top logprobs))]``."""
        parts = (array.array("i", self.token_ids), array.array("f", self.logprobs), array.array("i", self.top_ids),
                 array.array("f", self.top_logprobs))
        return [self.id, self.k, self.n, base64.b64encode(zlib.compress(b"".join(p.tobytes() for p in parts), 6))
                .decode("ascii")]

    @classmethod
    def unpack(cls, raw: Sequence[object]) -> TextDist:
        """Read :meth:`pack` back.

        Raises:
            ValueError: not a packed TextDist.
        """
        id_, k, n, blob = raw
        k, n = int(str(k)), int(str(n))
        data = zlib.decompress(base64.b64decode(str(blob)))
        sizes = (n, n, n * k, n * k)
        if len(data) != 4 * sum(sizes):
            raise ValueError(f"packed text {id_!r}: {len(data)} bytes for {n} positions of top-{k}")
        arrays, off = [], 0
        for code, size in zip("ifif", sizes):
            a = array.array(code)
            a.frombytes(data[off:off + 4 * size])
            arrays.append(a)
            off += 4 * size
        return cls(str(id_), k, tuple(arrays[0]), tuple(arrays[1]), tuple(arrays[2]), tuple(arrays[3]))

    @classmethod
    def from_positions(cls, id: str, k: int, token_ids: Sequence[int], logprobs: Sequence[float],
                       tops: Sequence[Sequence[tuple[int, float]]]) -> TextDist:
        """From per-position lists; ``tops[i]`` is position i's (token id, log-probability) pairs, any
        order (the best ``k`` are kept). Log-probabilities are kept as float32 (vLLM computes them so)."""
        ids: list[int] = []
        lps: list[float] = []
        for pairs in tops:
            best = sorted(pairs, key=lambda p: -p[1])[:k]
            best += [(-1, -math.inf)] * (k - len(best))
            ids.extend(t for t, _ in best)
            lps.extend(lp for _, lp in best)
        # float32, as packed: a passage reads back from storage exactly as it was measured
        return cls(id, k, tuple(int(t) for t in token_ids), tuple(array.array("f", logprobs)), tuple(ids),
                   tuple(array.array("f", lps)))


def kld_lower_bound(ref: dict[int, float], trial: dict[int, float]) -> float:
    """``KL(P_ref || P_trial)`` over the tokens both know, plus one bucket for all the rest (a lower
    bound of the full KLD; 0 when the two are equal). Arguments map token id -> log-probability."""
    shared = [t for t in ref if t in trial]
    kl, p_sum, q_sum = 0.0, 0.0, 0.0
    for t in shared:
        p, q = math.exp(ref[t]), math.exp(trial[t])
        p_sum += p
        q_sum += q
        if p > 0:
            kl += p * (ref[t] - trial[t])
    p_rest, q_rest = max(1.0 - p_sum, _REST_FLOOR), max(1.0 - q_sum, _REST_FLOOR)
    if p_rest > _REST_FLOOR:
        kl += p_rest * math.log(p_rest / q_rest)
    return max(kl, 0.0)


def position_klds(trial: TextDist, ref: TextDist) -> tuple[list[float], int, float, float]:
    """Per position KLD lower bounds of ``trial`` from ``ref``, the number of positions whose top-1
    tokens agree, and both sides' summed log-likelihood of the actual tokens, over the positions
    both have: a server whose context is shorter than the passage scores its first
    ``max_model_len - 1`` tokens (:mod:`~optimizer.quality.server_probe`), and a causal model's
    distribution at a position depends only on the tokens before it, so those positions compare.

    Raises:
        ValueError: the two passages were tokenized differently (another model or tokenizer).
    """
    n = min(trial.n, ref.n)
    if trial.token_ids[:n] != ref.token_ids[:n] or n == 0 < max(trial.n, ref.n):
        raise ValueError(f"text {trial.id!r} has {trial.n} tokens here and {ref.n} in the reference, and other "
                         f"tokens: another tokenizer (another model?)")
    klds = [kld_lower_bound(ref.top(i), trial.top(i)) for i in range(n)]
    same = sum(trial.top1(i) == ref.top1(i) for i in range(n))
    return klds, same, math.fsum(trial.logprobs[:n]), math.fsum(ref.logprobs[:n])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class DistanceSummary:
    """A trial's distance from the reference over every scored position of every passage."""

    n_positions: int
    mean_kld: float  # mean per-position KLD lower bound (nats)
    p99_kld: float  # its 99th percentile
    max_kld: float
    same_top1: float  # share of positions whose most likely next token is the reference's
    ppl_ratio: float  # trial perplexity / reference perplexity over the actual tokens (information)
    far_mean_kld: float  # mean KLD at positions >= FAR_POSITION (long passages: the KV cache read far back)
    far_positions: int

    def as_dict(self) -> dict[str, float]:
        return {"n_positions": self.n_positions, "mean_kld": self.mean_kld, "p99_kld": self.p99_kld,
                "max_kld": self.max_kld, "same_top1": self.same_top1, "ppl_ratio": self.ppl_ratio,
                "far_mean_kld": self.far_mean_kld, "far_positions": self.far_positions}


FAR_POSITION = 1024


def summarize(trial: Sequence[TextDist], ref: Sequence[TextDist]) -> DistanceSummary:
    """Compare passage by passage (matched by id).

    Raises:
        ValueError: the passages differ from the reference's (ids or tokens).
    """
    refs = {r.id: r for r in ref}
    if set(refs) != {t.id for t in trial}:
        raise ValueError("the scored passages differ from the reference's")
    klds: list[float] = []
    far: list[float] = []
    same, lp_t, lp_r = 0, 0.0, 0.0
    for t in trial:
        k, s, a, b = position_klds(t, refs[t.id])
        klds.extend(k)
        far.extend(k[FAR_POSITION - 1:])  # position i predicts token i+1
        same, lp_t, lp_r = same + s, lp_t + a, lp_r + b
    n = len(klds)
    if n == 0:
        return DistanceSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    return DistanceSummary(n, math.fsum(klds) / n, percentile(klds, 99), max(klds), same / n,
                           math.exp((lp_r - lp_t) / n), math.fsum(far) / len(far) if far else math.nan, len(far))
