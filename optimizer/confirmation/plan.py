"""What the confirmation stage runs, derived from the study database alone. Pure over FrozenTrials.

The candidates are the study's baseline (vLLM's defaults) and its ``top_k`` best feasible
search trials with distinct server configs (two trials whose engine parameters are equal are one
config: the better one stands for it). The plan runs every candidate once per round, round
``r`` on the held-out prompts of workload seed ``seed0 + r`` (every config of a round sees the
same prompts, so a round is a paired comparison), in an order drawn at random for each round
(seeded by that round's seed, so the plan is a function of the study: a resumed stage draws the
same order, and each run's record keeps its position, ``Confirmation.slot``). A fixed order
(baseline first) would confound a drift within the round (a server that warms the host's page
cache, a GPU clock that settles) with the config; randomized, it is noise that the block
design's residual carries. A slot is done when a COMPLETE confirmation trial of the same
config and round exists, so an interrupted stage resumes at its first missing slot, and a study
continued after a confirmation re-uses the rounds it already measured.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from optimizer.confirmation.uplift import ConfigRuns
from optimizer.record import Confirmation, TrialRecord

__all__ = ["Candidate", "Slot", "assign", "candidates", "config_key", "config_runs", "confirmation_trials", "confirmed",
           "failed_attempts", "flags_changed",
           "is_confirmation", "plan", "remaining", "round_order", "run_gpus", "search_trials"]


def is_confirmation(t: FrozenTrial) -> bool:
    return Confirmation.from_attrs(t.user_attrs) is not None


def search_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The study's own trials: every trial that is not a confirmation run."""
    return [t for t in trials if not is_confirmation(t)]


def confirmation_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if is_confirmation(t)]


def config_key(engine_params: Optional[dict[str, Any]]) -> str:
    """One server config, as text: the engine parameters that are set, sorted."""
    return json.dumps(engine_params or {}, sort_keys=True, default=str)


def flags_changed(engine_params: dict[str, Any], defaults: dict[str, Any]) -> int:
    """Engine parameters set to something other than vLLM's default (``defaults``: the baseline's
    recorded params, :func:`optimizer.space.search_space.baseline_params`)."""
    return sum(1 for k, v in engine_params.items() if v is not None and defaults.get(k) != v)


@dataclass(frozen=True)
class Candidate:
    """A config to confirm: the search trial that stands for it."""

    of: int
    baseline: bool
    engine_params: dict[str, Any]
    params: dict[str, Any]  # the trial's Optuna params (stored on each confirmation run)
    distributions: dict[str, BaseDistribution]
    value: float  # what the search measured

    @property
    def key(self) -> str:
        return config_key(self.engine_params)

    @property
    def label(self) -> str:
        return "baseline" if self.baseline else f"trial {self.of}"


@dataclass(frozen=True)
class Slot:
    candidate: Candidate
    repeat: int  # the round
    slot: int  # position within the round (its run order, drawn per round)
    seed: int  # workload seed of this round's held-out prompts
    rank: int = -1  # the candidate's index in the plan's list (-1: ``slot``); assign() rotates on it

    @property
    def index(self) -> int:
        """Position in the whole plan (rounds are consecutive)."""
        return self.repeat * 1000 + self.slot


def _candidate(t: FrozenTrial, rec: TrialRecord) -> Candidate:
    return Candidate(t.number, rec.lineage.baseline, dict(rec.setup.engine_params or {}), dict(t.params),
                     dict(t.distributions), float(t.value) if t.value is not None else math.nan)


def candidates(trials: Sequence[FrozenTrial], top_k: int) -> list[Candidate]:
    """The baseline (the latest COMPLETE one; none if it never completed) first, then the
    ``top_k`` best feasible distinct configs of the search, best first."""
    done = [t for t in search_trials(trials) if t.state == TrialState.COMPLETE]
    records = {t.number: TrialRecord.from_trial(t) for t in done}
    out: list[Candidate] = []
    baselines = [t for t in done if records[t.number].lineage.baseline and records[t.number].setup.engine_params
                 is not None]
    if baselines:
        out.append(_candidate(baselines[-1], records[baselines[-1].number]))
    seen = {c.key for c in out}
    feasible = [t for t in done if (o := records[t.number].outcome) is not None and o.feasible
                and records[t.number].setup.engine_params is not None]
    for t in sorted(feasible, key=lambda t: (-(t.value or 0.0), t.number)):
        if len(out) - bool(baselines) >= top_k:
            break
        c = _candidate(t, records[t.number])
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def round_order(n: int, seed: int) -> list[int]:
    """The run order of a round of ``n`` candidates (indices), drawn with the round's seed."""
    order = list(range(n))
    random.Random(f"confirm-order:{seed}").shuffle(order)
    return order


def plan(cands: Sequence[Candidate], repeats: int, seed0: int) -> list[Slot]:
    """Every candidate once per round, rounds one after the other, each round in its own random
    order (:func:`round_order`)."""
    return [Slot(cands[i], r, pos, seed0 + r, i) for r in range(repeats)
            for pos, i in enumerate(round_order(len(cands), seed0 + r))]


def assign(slots: Sequence[Slot], workers: int) -> list[list[Slot]]:
    """The slots of each of ``workers`` parallel workers, each share in plan order.

    Slot (round ``r``, candidate ``i``) goes to worker ``(i + r) mod workers``: within a round the
    configs run on different workers (as far as there are workers), and from one round to the
    next each config moves to the next worker, so a difference between GPUs is spread over the
    configs instead of passing for a difference between configs. Deterministic, so a resumed
    stage sends the slots it still misses where the first call would have. One worker: the plan
    order itself.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    shares: list[list[Slot]] = [[] for _ in range(workers)]
    for s in slots:
        shares[((s.rank if s.rank >= 0 else s.slot) + s.repeat) % workers].append(s)
    return shares


def _runs_by_key(trials: Sequence[FrozenTrial], state: TrialState) -> dict[tuple[str, int], list[FrozenTrial]]:
    out: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in confirmation_trials(trials):
        if t.state != state:
            continue
        rec = TrialRecord.from_trial(t)
        assert rec.confirmation is not None
        out.setdefault((config_key(rec.setup.engine_params), rec.confirmation.repeat), []).append(t)
    return out


def remaining(slots: Sequence[Slot], trials: Sequence[FrozenTrial]) -> list[Slot]:
    """The slots without a COMPLETE confirmation run of the same config and round, in plan order."""
    done = _runs_by_key(trials, TrialState.COMPLETE)
    return [s for s in slots if (s.candidate.key, s.repeat) not in done]


def failed_attempts(slot: Slot, trials: Sequence[FrozenTrial]) -> int:
    """Confirmation runs of this slot that failed (environment, interruption)."""
    return len(_runs_by_key(trials, TrialState.FAIL).get((slot.candidate.key, slot.repeat), []))


def config_runs(cands: Sequence[Candidate], trials: Sequence[FrozenTrial], repeats: int) -> list[ConfigRuns]:
    """Each candidate's confirmed values and verdicts by round (the last COMPLETE run of a round)."""
    done = _runs_by_key(trials, TrialState.COMPLETE)
    out = []
    for c in cands:
        values: list[float] = []
        feasible: list[Optional[bool]] = []
        flags = 0
        for r in range(repeats):
            runs = done.get((c.key, r))
            rec = TrialRecord.from_trial(runs[-1]) if runs else None
            if rec is None or rec.outcome is None:
                values.append(math.nan)
                feasible.append(None)
                continue
            values.append(rec.outcome.value)
            feasible.append(rec.outcome.feasible)
            flags = rec.confirmation.flags_changed if rec.confirmation is not None else 0
        out.append(ConfigRuns(c.label, c.of, c.baseline, 0 if c.baseline else flags, tuple(values), tuple(feasible)))
    return out


def run_gpus(cands: Sequence[Candidate], trials: Sequence[FrozenTrial], repeats: int) -> list[tuple[str, ...]]:
    """Each candidate's GPUs by round: the ``CUDA_VISIBLE_DEVICES`` of the run :func:`config_runs`
    takes its value from ("" where none were pinned or the round has no COMPLETE run)."""
    done = _runs_by_key(trials, TrialState.COMPLETE)
    return [tuple(TrialRecord.from_trial(runs[-1]).setup.gpus if (runs := done.get((c.key, r))) else ""
                  for r in range(repeats)) for c in cands]


def confirmed(trials: Sequence[FrozenTrial]) -> tuple[list[Candidate], int]:
    """The configs that have confirmation runs (baseline first, then by the search's value) and
    the number of rounds recorded: what a report of the study shows."""
    by_number = {t.number: t for t in trials}
    found: dict[str, Candidate] = {}
    rounds = 0
    for t in confirmation_trials(trials):
        rec = TrialRecord.from_trial(t)
        assert rec.confirmation is not None
        rounds = max(rounds, rec.confirmation.repeat + 1)
        c = rec.confirmation
        src = by_number.get(c.of)
        value = float(src.value) if src is not None and src.value is not None else math.nan
        found.setdefault(config_key(rec.setup.engine_params),
                         Candidate(c.of, c.baseline, dict(rec.setup.engine_params or {}), dict(t.params),
                                   dict(t.distributions), value))
    cands = sorted(found.values(), key=lambda c: (not c.baseline, -c.value if math.isfinite(c.value) else 0.0, c.of))
    return cands, rounds
