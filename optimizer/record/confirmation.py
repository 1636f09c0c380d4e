"""The parts of a record that the confirmation stage added: the throughput's interval, measured by
every trial, and the mark of a confirmation run (:mod:`optimizer.confirmation.stage`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.record._attrs import Attrs, attr_value, integer, num

__all__ = ["Confirmation", "ThroughputCI"]


@dataclass(frozen=True)
class ThroughputCI:
    """The confidence interval of the measured output tokens/s: batch means over the measured
    window (see :func:`optimizer.trial.noise.throughput_interval`). NaN bounds: too few batches."""

    low: float
    high: float
    batches: int
    confidence: float = 0.95

    def to_attrs(self) -> dict[str, Any]:
        return {"output_tok_s_low": attr_value(self.low, 3), "output_tok_s_high": attr_value(self.high, 3),
                "output_tok_s_batches": self.batches, "output_tok_s_confidence": self.confidence}

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[ThroughputCI]:
        if "output_tok_s_batches" not in a:
            return None
        conf = num(a, "output_tok_s_confidence")
        return cls(num(a, "output_tok_s_low"), num(a, "output_tok_s_high"), integer(a, "output_tok_s_batches"),
                   conf if math.isfinite(conf) else 0.95)


@dataclass(frozen=True)
class Confirmation:
    """A confirmation run: the config of search trial ``of`` started again on a fresh server and
    measured on held-out prompts (workload seed ``seed``), repeat ``repeat`` (= the interleaved
    round), at position ``slot`` within that round. Never a study trial: not in the budget, never
    the study's best (:mod:`optimizer.confirmation.stage`)."""

    of: int
    repeat: int
    slot: int
    seed: int
    baseline: bool = False  # it re-measures vLLM's defaults
    flags_changed: int = 0  # engine flags that differ from vLLM's defaults on this hardware

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"confirms": self.of, "confirm_repeat": self.repeat, "confirm_slot": self.slot,
                               "confirm_seed": self.seed, "confirm_flags_changed": self.flags_changed}
        if self.baseline:
            out["confirm_baseline"] = True
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Confirmation]:
        if "confirms" not in a:
            return None
        return cls(integer(a, "confirms"), integer(a, "confirm_repeat"), integer(a, "confirm_slot"),
                   integer(a, "confirm_seed"), a.get("confirm_baseline") is True, integer(a, "confirm_flags_changed"))
