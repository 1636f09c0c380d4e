"""What one trial recorded, as one frozen value, and its encoding to Optuna user attrs.

A :class:`TrialRecord` is made of small frozen parts, each optional (``None``: that stage was
not reached) and each owning its encoding to and from the flat ``key -> JSON value`` user attrs
of an Optuna trial:

=====================  ==============================================================  ==========
part                   what                                                            keys
=====================  ==============================================================  ==========
:class:`Setup`         hardware, model, workload, engine parameters, worker, GPUs      (plain)
:class:`Lineage`       baseline or not, retry attempt, which trial it retries, why     (plain)
:class:`MemoryPrediction` the memory estimate                                          ``mem_*``,
                                                                                       ``pred_*``
:class:`LaunchInfo`    the exact server argv and command, ``vllm serve`` YAML, log     ``server_*``
:class:`StartLog`      vLLM's start-up log: KV capacity, where the start time went     ``log_*``
:class:`Timings`       seconds per phase (wait, start, warm-up, load, stop, total)     ``t_*``
:class:`Measurement`   load summary, server telemetry, latency samples, KV timeline    ``srv_*``...
:class:`Failure`       why no measurement (a :class:`FailureReason`), in words         ``failure*``
:class:`Capacity`      the capacity search (load.mode=capacity): answer, every probe    ``cap_*``,
                                                                                       ``capacity_json``
:class:`Quality`       the quality probe's figures against the study's reference       ``q_*``
:class:`ThroughputCI`  the throughput's confidence interval (batch means)              ``output_tok_s_*``
:class:`Confirmation`  a re-measurement of a search trial's config on a fresh server   ``confirm*``
=====================  ==============================================================  ==========

The keys are those the study has always written (the committed H100 study decodes and
re-encodes to the same attrs), so old studies load. NaN is stored as ``None`` (JSON has no NaN)
and read back as NaN: :func:`_out` and :func:`_float` are the only places that know. A later
part (capacity, quality, confirmation) is one more optional field with its own ``to_attrs`` and
``from_attrs``, next to these, touching none of them.

The score is Optuna's own (the trial value and its constraints, see :mod:`optimizer.measures.objective`);
``feasible`` and ``constraint_<key>`` (each constraint's value, > 0: violated) are stored beside it so
that a reader of the attrs alone knows it too: optuna-dashboard 0.21 shows user attrs but reads only
Optuna 4's constraint format, and studies from before the ``constraint_*`` attrs lack them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from optuna.trial import FrozenTrial, TrialState

from optimizer.core.errors import FailureReason
from optimizer.measures.objective import Outcome
from optimizer.record._attrs import Attrs, json_value, text
from optimizer.record.capacity import Capacity
from optimizer.record.confirmation import Confirmation, ThroughputCI
from optimizer.record.measurement import Measurement, summary_from_attrs, summary_to_attrs
from optimizer.record.parts import (
    LaunchInfo,
    Lineage,
    MemoryPrediction,
    Setup,
    Timings,
    start_log_from_attrs,
    start_log_to_attrs,
)
from optimizer.record.quality import Quality
from optimizer.server.startlog import StartLog

__all__ = ["BLOB_KEYS", "Capacity", "Confirmation", "Failure", "FailureReason", "LaunchInfo", "Lineage",
           "Measurement", "MemoryPrediction", "Quality", "Setup", "StartLog", "ThroughputCI", "Timings", "TrialRecord",
           "summary_from_attrs", "summary_to_attrs"]

# large JSON strings: not for tables
BLOB_KEYS = ("latency_samples", "kv_timeline", "server_argv", "capacity_json", "q_scores")


@dataclass(frozen=True)
class Failure:
    """Why a trial has no measurement (or lost it)."""

    reason: FailureReason
    detail: str = ""  # the evidence: a log line, the broken rule, the exception's message
    during_load: bool = False  # the server died while the load test ran

    @property
    def ruled_out(self) -> bool:
        return self.reason == FailureReason.RULED_OUT

    @property
    def label(self) -> str:
        """The stored ``failure`` value: ``<reason>``, or ``server_died:<reason>``."""
        return f"server_died:{self.reason.value}" if self.during_load else self.reason.value

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"failure": self.label}
        if self.detail:
            out["failure_detail"] = self.detail[:1000]
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Failure]:
        raw = a.get("failure")
        if not raw:
            return None
        raw = str(raw)
        during = raw.startswith("server_died:")
        code = raw.split(":", 1)[1] if during else raw
        reason = FailureReason.parse(code)
        detail = text(a, "failure_detail")
        if reason.value != code:  # a reason this version does not know: keep its name in the words
            detail = f"{code}: {detail}" if detail else code
        return cls(reason, detail, during)


# --- the record -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialRecord:
    """Everything one trial recorded. Parts are ``None`` where that stage was not reached.

    ``outcome`` is the score (value, constraints, feasibility) when the trial finished; a
    record read back from a trial that did not complete has none."""

    setup: Setup = Setup()
    lineage: Lineage = Lineage()
    memory: Optional[MemoryPrediction] = None
    launch: Optional[LaunchInfo] = None
    start_log: Optional[StartLog] = None
    timings: Optional[Timings] = None
    measurement: Optional[Measurement] = None
    failure: Optional[Failure] = None
    capacity: Optional[Capacity] = None  # load.mode=capacity: the search (measurement: its probe at the capacity)
    quality: Optional[Quality] = None
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it
    outcome: Optional[Outcome] = None
    # slo.p99_ms=auto: the SLO the baseline's load test calibrated (optimizer.trial.calibrate.Calibration)
    calibration: Optional[dict[str, Any]] = None
    throughput_ci: Optional[ThroughputCI] = None
    confirmation: Optional[Confirmation] = None
    # the baseline: vLLM's defaults as the installed vLLM resolved them for its command
    # (optimizer.server.defaults.resolve_defaults) and as its server logged them at start-up
    vllm_defaults: Optional[dict[str, Any]] = None
    vllm_defaults_logged: Optional[dict[str, Any]] = None

    @property
    def measured(self) -> bool:
        """A load test ran to the end and served something."""
        return self.measurement is not None and math.isfinite(self.measurement.summary.output_tok_s)

    @property
    def ruled_out(self) -> bool:
        return self.failure is not None and self.failure.ruled_out

    @property
    def counted(self) -> bool:
        """Counts toward ``study.n_trials``: a proposal the memory estimate refused does not."""
        return not self.ruled_out

    @property
    def vllm_version(self) -> str:
        """The vLLM version this trial ran on: the installed one read before the study started, else
        (older studies) what its server said at ``/version``; "" where neither is known."""
        if self.setup.engine.vllm:
            return self.setup.engine.vllm
        v = self.launch.vllm_version if self.launch is not None else ""
        return "" if v == "unknown" else v

    def p99(self, metric: str) -> float:
        """The P99 (ms) of ``metric`` (ttft, itl or e2e); NaN when not measured."""
        return self.measurement.summary.dist(metric).p99 if self.measurement is not None else math.nan

    def to_attrs(self) -> dict[str, Any]:
        """The Optuna user attrs of this record (every value JSON-safe; NaN stored as None)."""
        out = self.setup.to_attrs() | self.lineage.to_attrs()
        for part in (self.memory, self.launch, self.timings, self.measurement, self.failure, self.capacity,
                     self.quality, self.throughput_ci, self.confirmation):
            if part is not None:
                out |= part.to_attrs()
        if self.start_log is not None:
            out |= start_log_to_attrs(self.start_log)
        if self.interrupted:
            out["interrupted"] = True
        if self.ruled_out:
            out["counted"] = False
        if self.outcome is not None:  # beside Optuna's own: optuna-dashboard cannot read Optuna 5 constraints
            out["feasible"] = self.outcome.feasible
            out |= {f"constraint_{k}": float(v) for k, v in self.outcome.constraints.items()}
        if self.calibration is not None:
            out["slo_calibration"] = self.calibration
        if self.vllm_defaults is not None:
            out["vllm_defaults"] = json.dumps(self.vllm_defaults, sort_keys=True)
        if self.vllm_defaults_logged:
            out["vllm_defaults_logged"] = json.dumps(self.vllm_defaults_logged, sort_keys=True)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs, outcome: Optional[Outcome] = None) -> TrialRecord:
        """Read a record back; parts whose keys are absent are ``None`` (old studies included)."""
        return cls(setup=Setup.from_attrs(a), lineage=Lineage.from_attrs(a), memory=MemoryPrediction.from_attrs(a),
                   launch=LaunchInfo.from_attrs(a), start_log=start_log_from_attrs(a),
                   timings=Timings.from_attrs(a), measurement=Measurement.from_attrs(a),
                   failure=Failure.from_attrs(a), capacity=Capacity.from_attrs(a), quality=Quality.from_attrs(a),
                   interrupted=a.get("interrupted") is True, outcome=outcome,
                   calibration=a["slo_calibration"] if isinstance(a.get("slo_calibration"), dict) else None,
                   throughput_ci=ThroughputCI.from_attrs(a), confirmation=Confirmation.from_attrs(a),
                   vllm_defaults=json_value(a, "vllm_defaults", {}) or None,
                   vllm_defaults_logged=json_value(a, "vllm_defaults_logged", {}) or None)

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        """The record of a stored trial, with its outcome when it is COMPLETE and scored."""
        outcome = None
        if t.state == TrialState.COMPLETE and t.constraints:
            c = {k: float(v) for k, v in t.constraints.items()}
            outcome = Outcome(float(t.value or 0.0), c, all(v <= 0 for v in c.values()))
        return cls.from_attrs(t.user_attrs, outcome)
