"""The capacity search: bracket by doubling, then bisect. Pure (the probes are passed in).

:class:`CapacitySearch` is a state machine with no I/O: :meth:`~CapacitySearch.next_step` says
which load to measure next (or None: done), :meth:`~CapacitySearch.record` takes the judged
probe. :func:`find_capacity` drives it with any async probe function, the real one
(:class:`optimizer.capacity.load_probe.LoadProbe`) or a fake in tests.

The rules:

1. Probe ``start``, then double (``start``, 2x, 4x, ...; the last step is the cap itself) until a
   probe fails (SLO or error limit) or the cap passes (``limited_by=cap``). ``start`` failing
   makes the config infeasible: no value, the constraints of that probe (graded: P99 / limit - 1,
   error rate - allowed).
2. Bisect between the highest pass ``lo`` and the lowest failure ``hi`` until
   ``hi - lo <= resolution(lo)``: with concurrency max(1, floor(r x lo)) users, with rate r x lo
   requests/s (r = ``load.capacity.resolution``, 5 % by default). The true capacity then lies in
   [lo, hi): the answer ``lo`` is at most one resolution step below it.
3. A probe whose P99 confidence interval contains the limit is measured once more (``lengthen``
   times its requests in all) and judged on both runs together.
4. An aborted probe (the server could not be reached) is neither a pass nor the bounding failure:
   the search stops there (``limited_by=aborted``), keeping the passes it has.
5. ``max_probes`` (probe runs, lengthening included) and ``max_s`` (no new probe once the search
   has run that long, or would by the end of a probe as long as the last one) end it with
   ``limited_by=budget``.
5b. Precision (``load.capacity.precision`` > 0): once the bisection's bracket has closed, the
   search goes on while the fitted capacity's interval (:mod:`optimizer.capacity.curve`) is wider
   than that share of the capacity and budget is left, each time probing the unprobed load inside
   the interval nearest the median of the resampled crossings: the load whose verdict is least
   certain (probability ~1/2 of passing), where one more probe moves the interval's ends most.
   It ends with the bracket's own ``limited_by`` and says why in ``stop_reason``.
6. Early stop: ``stop_below()`` (the caller's hook) gives a bar **in the unit the study ranks**
   (``value``: output tok/s or req/s at the capacity), the incumbent's *lower* confidence bound,
   not its point value (which the winner's curse inflates). After each judged probe (once a pass
   and a failure exist) the search computes its own *upper* bound on that value: the capacity's
   fitted interval over the probes so far (:mod:`optimizer.capacity.curve`) is ``[low, high]``, and
   the value at the capacity is at most the value of the highest pass at or below ``low`` scaled by
   ``high`` over its load (the latency does not fall as the load rises, so neither does the time a
   request takes; throughput itself may fall past a peak, see :meth:`CapacitySearch.upper_value`). Only when
   that upper bound is below the bar does it stop (``limited_by=early_stop``): the config is then
   shown, at the interval's confidence, to score less than the incumbent's lower bound. The
   result keeps the bar (``early_stop_bound``) and the bound (``upper_value``); ``value`` and the
   throughput there are the highest pass so far: the record says they are bounds
   (``value <= true <= upper_value``). An open-ended fit (``high`` NaN) never stops.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from optimizer.capacity.curve import estimate_capacity, fitted
from optimizer.capacity.result import CapacityResult, LimitedBy, ProbeResult
from optimizer.settings.config import CapacityConfig, SloConfig

__all__ = ["CapacitySearch", "SearchPlan", "Step", "find_capacity"]

ProbeFn = Callable[["Step"], Awaitable[ProbeResult]]


@dataclass(frozen=True)
class SearchPlan:
    """The search's bounds, resolved from ``load.capacity`` and the cap the caller derived."""

    control: str  # concurrency | rate
    start: float
    cap: float
    resolution: float = 0.05
    max_probes: int = 16
    max_s: float = 0.0  # 0: no limit
    lengthen: float = 2.0  # 1: never lengthen
    precision: float = 0.0  # > 0: probe on until the fitted interval is this share of the capacity wide

    @classmethod
    def of(cls, c: CapacityConfig, cap: float) -> "SearchPlan":
        """``cap``: load.capacity.max when set, else the caller's derived default."""
        cap = c.max or cap
        if c.control == "concurrency":
            cap = math.floor(cap)
        return cls(c.control, c.start, max(cap, c.start), c.resolution, c.max_probes, c.max_s, c.lengthen,
                   c.precision)

    def step_size(self, lo: float) -> float:
        """How close pass and failure must be for the search to stop."""
        if self.control == "concurrency":
            return max(1, math.floor(self.resolution * lo))
        return self.resolution * lo

    def between(self, lo: float, hi: float) -> float:
        return float((int(lo) + int(hi)) // 2) if self.control == "concurrency" else (lo + hi) / 2.0


@dataclass(frozen=True)
class Step:
    """One probe to run: ``load``; ``extend`` is set when this run lengthens that probe."""

    load: float
    run: int  # 0-based count of probe runs so far (seeds the run's prompts)
    first: bool = False  # the search's first run: it carries the server's warm-up
    extend: Optional[ProbeResult] = None


class CapacitySearch:
    def __init__(self, plan: SearchPlan, slo: SloConfig,
                 stop_below: Optional[Callable[[], float]] = None, value: str = "output_tok_s") -> None:
        self.plan, self.slo, self.stop_below, self.value = plan, slo, stop_below, value
        self.probes: list[ProbeResult] = []
        self.runs = 0
        self.lo: Optional[ProbeResult] = None  # highest pass
        self.hi: Optional[ProbeResult] = None  # lowest failure (slo or errors)
        self.pending: Optional[ProbeResult] = None  # straddles: to be lengthened
        self.done: Optional[LimitedBy] = None
        self.reason = ""
        self._last_run_s = 0.0
        self._needed = math.nan  # stop_below()'s value when it stopped the search
        self._upper = math.nan  # the search's upper bound on its value then
        self._oob = False  # the budget is spent (next_step's view, for the precision phase)

    # ---- the state machine ------------------------------------------------------------------
    def next_step(self, elapsed_s: float = 0.0) -> Optional[Step]:
        if self.done is not None:
            return None
        p = self.plan
        out_of_budget = self.runs >= p.max_probes or (
            p.max_s > 0 and self.runs > 0 and elapsed_s + self._last_run_s > p.max_s)
        if self.pending is not None:
            if not out_of_budget:
                return self._step(self.pending.load, extend=self.pending)
            self._judge(self.pending)  # no budget to lengthen it: judged as measured
            self.pending = None
            if self.done is not None:
                return None
        self._oob = out_of_budget
        load = self._next_load()
        if load is None:
            return None
        if out_of_budget:
            what = (f"load.capacity.max_probes={p.max_probes}" if self.runs >= p.max_probes
                    else f"load.capacity.max_s={p.max_s:g}")
            self._finish(LimitedBy.BUDGET, f"{what} reached before the bracket closed")
            return None
        return self._step(load)

    def record(self, probe: ProbeResult, run_s: float = 0.0) -> None:
        """Take the measured probe of the step last returned (``run_s``: its wall time)."""
        self._last_run_s = run_s
        if probe.aborted:
            self.pending = None
            self.probes.append(probe)
            self._finish(LimitedBy.ABORTED, f"the probe at {self._fmt(probe.load)} was cut short: {probe.aborted}")
            return
        if not probe.lengthened and self.plan.lengthen > 1 and probe.straddles(self.slo.limit_ms):
            self.pending = probe
            return
        self.pending = None
        self._judge(probe)

    def result(self, duration_s: float = math.nan) -> CapacityResult:
        if self.pending is not None:  # stopped from outside between the two runs of a probe
            self._judge(self.pending)
            self.pending = None
        if self.done is None:
            self._finish(LimitedBy.BUDGET, "the search was stopped before the bracket closed")
        assert self.done is not None
        best = self.lo
        if best is not None:
            value, tok, req, p99, cons = best.load, best.output_tok_s, best.req_s, best.p99_ms, best.constraints
        else:
            first = next((q for q in self.probes if not q.aborted), None)
            value = tok = req = p99 = math.nan
            cons = first.constraints if first is not None else {"slo": 1.0, "errors": 1.0}
        return fitted(CapacityResult(
            control=self.plan.control, value=value, output_tok_s=tok, req_s=req, p99_ms=p99,
            limited_by=self.done, feasible=best is not None, constraints=dict(cons),
            probes=tuple(sorted(self.probes, key=lambda q: q.load)), cap=self.plan.cap,
            resolution=self.plan.resolution, stop_reason=self.reason, duration_s=duration_s,
            slo_metric=self.slo.metric, slo_p99_ms=self.slo.limit_ms, early_stop_bound=self._needed,
            upper_value=self._upper))

    # ---- internals --------------------------------------------------------------------------
    def _step(self, load: float, extend: Optional[ProbeResult] = None) -> Step:
        s = Step(load=load, run=self.runs, first=self.runs == 0, extend=extend)
        self.runs += 1
        return s

    def _judge(self, probe: ProbeResult) -> None:
        self.probes.append(probe)
        if probe.passed:
            if self.lo is None or probe.load > self.lo.load:
                self.lo = probe
        elif self.hi is None or probe.load < self.hi.load:
            self.hi = probe
        if self.hi is not None and self.stop_below is not None and self.lo is not None and self.done is None:
            x = self.stop_below()
            if x == x:
                ub = self.upper_value()
                if ub < x:
                    self._needed, self._upper = x, ub
                    self._finish(LimitedBy.EARLY_STOP, f"its {self.value} is at most {ub:.4g} (the capacity's "
                                                        f"upper bound), below the incumbent's lower bound {x:.4g}")

    def upper_value(self) -> float:
        """The upper confidence bound on this config's value from the probes so far (rule 6): the value
        of the highest pass at or below the fitted capacity's lower end, scaled by the interval's upper
        end over its load; +inf while that end is open or no pass lies below the lower end.

        Sound where throughput falls past a peak (a small model on a GPU: 14,874 tok/s at 128 users,
        10,816 at 160, 11,271 at 256), which a maximum over the probes is not: it needs only that the
        latency does not fall as the load rises, the premise of the bisection itself. A closed loop
        carries ``value = load x tokens / mean latency`` (an open one ``value ~ rate``), so at a capacity
        ``c`` in ``[low, high]`` the value is at most ``value(p) x c / load(p) <= value(p) x high / load(p)``
        for a probe ``p`` at or below ``c``."""

        e = estimate_capacity([p for p in self.probes], self.slo.limit_ms, self.plan.control)
        if not e.high == e.high:
            return math.inf
        below = [p for p in self.probes if p.passed and not p.aborted and 0 < p.load <= e.low
                 and getattr(p, self.value) == getattr(p, self.value)]
        if not below:
            return math.inf
        p = max(below, key=lambda p: p.load)
        return getattr(p, self.value) * e.high / p.load

    def _next_load(self) -> Optional[float]:
        p, lo, hi = self.plan, self.lo, self.hi
        if lo is None and hi is None:
            return float(p.start)
        if hi is None:
            assert lo is not None
            if lo.load >= p.cap:
                self._finish(LimitedBy.CAP, f"the cap {self._fmt(p.cap)} passed (load.capacity.max): the "
                                            f"capacity may be higher")
                return None
            return float(min(p.cap, 2 * lo.load))
        limit = self._limit(hi)
        if lo is None:
            self._finish(limit, f"infeasible: the lowest load {self._fmt(hi.load)} broke the "
                                f"{'error-rate' if limit is LimitedBy.ERRORS else 'P99'} limit")
            return None
        if hi.load - lo.load <= p.step_size(lo.load):
            why = (f"{self._fmt(lo.load)} passed, {self._fmt(hi.load)} broke the "
                   f"{'error-rate' if limit is LimitedBy.ERRORS else 'P99'} limit")
            refine = self._refine() if p.precision > 0 and limit is LimitedBy.SLO else None
            if isinstance(refine, float):
                return refine
            self._finish(limit, why + (f"; {refine}" if refine else ""))
            return None
        return p.between(lo.load, hi.load)

    def _refine(self) -> "float | str":
        """After the bisection (``plan.precision`` > 0): the next load to probe, where the verdict
        is least certain (the median of the resampled crossings), or why the search ends: the
        interval is narrow enough, the budget is spent, or no unprobed load is left in it."""

        p = self.plan
        e = estimate_capacity(self.probes, self.slo.limit_ms, p.control)
        width = (e.high - e.low) / e.estimate if e.estimate > 0 and e.high == e.high else math.inf
        if width <= p.precision:
            return f"the fitted interval {e.low:g}-{e.high:g} is within load.capacity.precision={p.precision:g}"
        if self._oob:
            return f"load.capacity.precision={p.precision:g} not reached within the budget (max_probes / max_s)"
        probed = {q.load for q in self.probes}
        top = e.high if e.high == e.high else max(probed)
        if p.control == "concurrency":
            grid = [float(x) for x in range(int(math.ceil(e.low)), int(math.floor(top)) + 1) if x not in probed]
        else:
            step = p.step_size(max(e.low, p.start)) / 2
            grid = [e.low + i * step for i in range(1, int((top - e.low) / step) + 1)]
            grid = [x for x in grid if all(abs(x - q) > step / 2 for q in probed)]
        if not grid or not e.pivot == e.pivot:
            return "no unprobed load left inside the fitted interval"
        return min(grid, key=lambda x: (abs(x - e.pivot), x))

    @staticmethod
    def _limit(hi: ProbeResult) -> LimitedBy:
        return LimitedBy.ERRORS if hi.failed_on == "errors" else LimitedBy.SLO

    def _finish(self, why: LimitedBy, reason: str) -> None:
        if self.done is None:
            self.done, self.reason = why, reason

    def _fmt(self, load: float) -> str:
        return f"{load:g} users" if self.plan.control == "concurrency" else f"{load:g} req/s"


async def find_capacity(probe: ProbeFn, search: CapacitySearch,
                        on_probe: Optional[Callable[[ProbeResult], None]] = None,
                        clock: Callable[[], float] = time.monotonic) -> CapacityResult:
    """Run ``search`` to the end with ``probe``; ``on_probe`` gets each judged probe in the order
    they were judged (e.g. to ``trial.report`` it). The probe function's exceptions propagate
    (bugs, interrupts): a run that could not reach the server is an ``aborted`` result instead."""
    reported = 0

    def flush() -> None:
        nonlocal reported
        if on_probe is not None:
            for p in search.probes[reported:]:
                on_probe(p)
        reported = len(search.probes)

    t0 = clock()
    while True:
        step = search.next_step(clock() - t0)
        flush()
        if step is None:
            break
        t = clock()
        result = await probe(step)
        search.record(result, clock() - t)
        flush()
    out = search.result(clock() - t0)
    flush()
    return out
