"""A latency law with known truth, for the capacity statistics' tests and simulation. Pure (numpy).

:class:`LatencyLaw` draws per-request latencies at a load as roughly as a real server gives them:
a median that rises with the load (linearly, then with a cliff: past ``cliff_at`` it is
``cliff_factor`` times higher), log-normal spread, a heavy (Pareto) tail on a share of requests,
and a run-to-run shift of the whole probe (``drift``: a fresh run of the same load on the same
server is not the same distribution), which makes the measured P99s non-monotone in the load. With
``quad_ms`` the median also rises with the square of the load, so a closed loop's throughput
(load / mean latency) peaks and then falls before the P99 limit, as a small model's did on an H100.
Its true P99 at a load is computed from the law (a large sample, cached), so the true capacity
is known: the highest load whose true P99 is within the limit.

:class:`FakeProbe` is an async probe function for :func:`optimizer.capacity.search.find_capacity`:
it draws a probe's requests from the law and judges it as the real probe does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from optimizer.capacity.curve import upper_tail
from optimizer.capacity.result import ProbeResult
from optimizer.capacity.search import Step
from optimizer.core.stats import quantile_ci

__all__ = ["FakeProbe", "LatencyLaw"]


@dataclass
class LatencyLaw:
    base_ms: float = 400.0  # median latency at load 0
    per_load_ms: float = 20.0  # median rise per user (or req/s)
    quad_ms: float = 0.0  # median rise per user squared: throughput peaks at sqrt(base_ms / quad_ms) users
    sigma: float = 0.25  # log-normal spread of a request
    tail_share: float = 0.03  # requests hit by the heavy tail
    tail_alpha: float = 2.5  # its Pareto index (smaller: heavier)
    cliff_at: float = math.inf  # past this load the median jumps
    cliff_factor: float = 3.0
    drift: float = 0.03  # sd of a probe run's log shift (run-to-run)
    _true: dict[float, float] = field(default_factory=dict, repr=False)

    def median_ms(self, load: float) -> float:
        m = self.base_ms + self.per_load_ms * load + self.quad_ms * load * load
        return m * (self.cliff_factor if load > self.cliff_at else 1.0)

    def draw(self, load: float, n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
        x = self.median_ms(load) * np.exp(self.sigma * rng.standard_normal(n) + shift)
        hit = rng.random(n) < self.tail_share
        x[hit] *= (1 + rng.pareto(self.tail_alpha, hit.sum()))
        return x

    def true_p99(self, load: float) -> float:
        """The P99 of the law at ``load`` averaged over the drift (a large seeded sample, cached)."""
        if load not in self._true:
            rng = np.random.default_rng(12345)
            n = 400_000
            shifts = self.drift * rng.standard_normal(n)
            self._true[load] = float(np.quantile(self.draw(load, n, rng, shifts), 0.99))  # type: ignore[arg-type]
        return self._true[load]

    def true_capacity(self, limit_ms: float, control: str = "concurrency", cap: float = 4096) -> float:
        """The highest load whose true P99 is within ``limit_ms`` (0: none; integer loads for
        concurrency, 0.01 resolution for rate)."""
        step = 1.0 if control == "concurrency" else 0.01
        lo, hi = 0.0, float(cap)
        if self.true_p99(step) > limit_ms:
            return 0.0
        lo = step
        while hi - lo > step:  # the law is monotone: bisect on the grid
            mid = round((lo + hi) / 2 / step) * step
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if self.true_p99(mid) <= limit_ms else (lo, mid)
        return lo


@dataclass
class FakeProbe:
    """Draws each probe from ``law`` and judges it on its P99 (point estimate) against ``limit_ms``.

    Its throughput is a fixed saturating curve of the load (``100 L / (1 + L/50)`` tok/s), or, with
    ``tokens_per_request`` > 0, a closed loop's: ``L x tokens / mean latency`` from the probe's own
    draws, so it carries the probe's noise and falls where the law's latency rises faster than the load."""

    law: LatencyLaw
    limit_ms: float
    n_requests: int = 400
    seed: int = 0
    tokens_per_request: float = 0.0  # > 0: throughput from the drawn latencies (closed loop)
    rng: Optional[np.random.Generator] = None
    _last: dict[float, np.ndarray] = field(default_factory=dict)

    async def __call__(self, step: Step) -> ProbeResult:
        return self.measure(step)

    def measure(self, step: Step) -> ProbeResult:
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)
        n = self.n_requests if step.extend is None else self.n_requests
        x = self.law.draw(step.load, n, self.rng, self.law.drift * float(self.rng.standard_normal()))
        if step.extend is not None and step.load in self._last:
            x = np.concatenate([self._last[step.load], x])
        self._last[step.load] = x
        p99 = float(np.quantile(x, 0.99))
        lo, hi = quantile_ci(x.tolist(), 0.99)
        passed = p99 <= self.limit_ms
        if self.tokens_per_request > 0:
            req_s = step.load / (float(np.mean(x)) / 1000.0)
            tok_s = req_s * self.tokens_per_request
        else:
            req_s, tok_s = step.load, 100.0 * step.load / (1 + step.load / 50)
        return replace(ProbeResult(load=step.load, passed=passed, failed_on="" if passed else "slo",
                                   output_tok_s=tok_s, req_s=req_s,
                                   p99_ms=p99, p99_low_ms=lo, p99_high_ms=hi, judged_p99_ms=p99,
                                   max_ms=float(x.max()), n_requests=len(x), n_ok=len(x), error_rate=0.0,
                                   constraints={"slo": p99 / self.limit_ms - 1, "errors": -0.01},
                                   lengthened=step.extend is not None),
                       tail_ms=upper_tail(x.tolist()), tail_n=len(x))
