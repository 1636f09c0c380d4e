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
=====================  ==============================================================  ==========

The keys are those the study has always written (the committed H100 study decodes and
re-encodes to the same attrs), so old studies load. NaN is stored as ``None`` (JSON has no NaN)
and read back as NaN: :func:`_out` and :func:`_float` are the only places that know. A later
part (capacity, quality, confirmation) is one more optional field with its own ``to_attrs`` and
``from_attrs``, next to these, touching none of them.

The score is Optuna's own (the trial value and its constraints, see :mod:`optimizer.objective`);
``feasible`` is stored beside it so that a reader of the attrs alone knows it too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from optuna.trial import FrozenTrial, TrialState

from optimizer.errors import FailureReason
from optimizer.metrics import Dist, LoadSummary
from optimizer.objective import Outcome
from optimizer.server.startlog import StartLog
from optimizer.server.telemetry import ServerStats
from optimizer.space.memory import MemoryEstimate

__all__ = ["BLOB_KEYS", "Failure", "FailureReason", "LaunchInfo", "Lineage", "Measurement", "MemoryPrediction",
           "Setup", "StartLog", "Timings", "TrialRecord", "summary_from_attrs", "summary_to_attrs"]

Attrs = Mapping[str, Any]
BLOB_KEYS = ("latency_samples", "kv_timeline", "server_argv")  # large JSON strings: not for tables
_DIST_METRICS = ("ttft", "itl", "e2e")


# --- NaN <-> None and typed reads: the one place ---------------------------------------------------

def _out(v: Any, digits: Optional[int] = None) -> Any:
    """A Python value as a user attr: non-finite floats become None (JSON has no NaN)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return round(v, digits) if digits is not None else v
    return v


def _float(a: Attrs, key: str) -> float:
    """A numeric attr; NaN when absent, None, a bool or not a number."""
    v = a.get(key)
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _int(a: Attrs, key: str, default: int = 0) -> int:
    v = a.get(key)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


def _str(a: Attrs, key: str) -> str:
    v = a.get(key)
    return "" if v is None else str(v)


def _json(a: Attrs, key: str, default: Any) -> Any:
    """A JSON-string attr; ``default`` when absent, unreadable or of another type."""
    raw = a.get(key)
    try:
        v = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return default
    return v if isinstance(v, type(default)) else default


def _has_any(a: Attrs, keys: Any) -> bool:
    return any(k in a for k in keys)


# --- parts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """What was tried, where: known before anything runs. Empty (``""``, ``None``) where not known
    yet: a trial only enqueued, or one whose worker died after recording its own name."""

    hardware: str = ""
    model: str = ""
    workload: str = ""
    engine_params: Optional[dict[str, Any]] = None  # EngineParams.as_dict(): the parameters that are set
    worker: str = ""  # <host>/w<index> ("" in studies from before parallel workers)
    gpus: str = ""  # the CUDA_VISIBLE_DEVICES its server got ("" where none were pinned)

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("hardware", self.hardware), ("model", self.model),
                                                 ("workload", self.workload), ("worker", self.worker),
                                                 ("gpus", self.gpus)) if v}
        if self.engine_params is not None:
            out["engine_params"] = json.dumps(self.engine_params, sort_keys=True)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Setup:
        params = _json(a, "engine_params", {}) if "engine_params" in a else None
        return cls(_str(a, "hardware"), _str(a, "model"), _str(a, "workload"), params, _str(a, "worker"),
                   _str(a, "gpus"))


@dataclass(frozen=True)
class Lineage:
    """Written when a trial is enqueued: the baseline, or a retry of an earlier trial."""

    baseline: bool = False
    attempt: int = 0  # retries before this one
    retry_of: Optional[int] = None
    retry_reason: str = ""

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "baseline"} if self.baseline else {}
        if self.retry_of is not None:
            out.update({"attempt": self.attempt, "retry_of": self.retry_of, "retry_reason": self.retry_reason[:300]})
        return out

    def retry(self, of: int, reason: str) -> Lineage:
        """The lineage of a retry of the trial ``of`` that had this lineage."""
        return Lineage(self.baseline, self.attempt + 1, of, reason)

    @classmethod
    def from_attrs(cls, a: Attrs) -> Lineage:
        r = a.get("retry_of")
        return cls(a.get("kind") == "baseline", _int(a, "attempt"),
                   r if isinstance(r, int) and not isinstance(r, bool) else None, _str(a, "retry_reason"))


@dataclass(frozen=True)
class MemoryPrediction:
    """The memory estimate, per device (see :mod:`optimizer.space.memory`)."""

    budget_gib: float
    weights_gib: float
    activation_gib: float
    kv_gib: float
    kv_tokens: int
    max_concurrency: float

    @classmethod
    def of(cls, est: MemoryEstimate) -> MemoryPrediction:
        return cls(est.budget_gib, est.weights_gib, est.activation_gib, est.kv_gib, est.kv_tokens,
                   est.max_concurrency)

    def to_attrs(self) -> dict[str, Any]:
        return {"mem_budget_gib": _out(self.budget_gib, 3), "mem_weights_gib": _out(self.weights_gib, 3),
                "mem_activation_gib": _out(self.activation_gib, 3), "mem_kv_gib": _out(self.kv_gib, 3),
                "pred_kv_tokens": self.kv_tokens, "pred_max_concurrency": _out(self.max_concurrency, 2)}

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[MemoryPrediction]:
        if "mem_budget_gib" not in a:
            return None
        return cls(_float(a, "mem_budget_gib"), _float(a, "mem_weights_gib"), _float(a, "mem_activation_gib"),
                   _float(a, "mem_kv_gib"), _int(a, "pred_kv_tokens"), _float(a, "pred_max_concurrency"))


@dataclass(frozen=True)
class LaunchInfo:
    """How the server was started: enough to start it again by hand."""

    argv: tuple[str, ...]  # after the interpreter
    command: str  # the full shell command
    serve_config: dict[str, Any]  # the `vllm serve --config` YAML content (underscored flag names)
    server_log: str
    vllm_version: str = ""  # what the server said at /version ("" when it never answered)

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"server_argv": json.dumps(list(self.argv)), "server_command": self.command,
                               "serve_config": json.dumps(self.serve_config, sort_keys=True),
                               "server_log": self.server_log}
        if self.vllm_version:
            out["vllm_version"] = self.vllm_version
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[LaunchInfo]:
        if "server_command" not in a:
            return None
        return cls(tuple(str(x) for x in _json(a, "server_argv", [])), _str(a, "server_command"),
                   _json(a, "serve_config", {}), _str(a, "server_log"), _str(a, "vllm_version"))


_START_LOG_FIELDS = tuple(f.name for f in dataclasses.fields(StartLog))


def _start_log_to_attrs(s: StartLog) -> dict[str, Any]:
    """``log_<field>`` for each thing the log said; nothing for what it did not."""
    out = {}
    for name in _START_LOG_FIELDS:
        v = _out(getattr(s, name))
        if v is not None:
            out[f"log_{name}"] = v
    return out


def _start_log_from_attrs(a: Attrs) -> Optional[StartLog]:
    if not _has_any(a, (f"log_{n}" for n in _START_LOG_FIELDS)):
        return None
    hit = a.get("log_compile_cache_hit")
    return StartLog(kv_tokens=_int(a, "log_kv_tokens") if "log_kv_tokens" in a else None,
                    compile_cache_hit=hit if isinstance(hit, bool) else None,
                    **{n: _float(a, f"log_{n}") for n in _START_LOG_FIELDS
                       if n not in ("kv_tokens", "compile_cache_hit")})


@dataclass(frozen=True)
class Timings:
    """Seconds per phase; NaN for a phase the trial did not reach."""

    wait_s: float = math.nan  # for the GPUs to be free
    start_s: float = math.nan  # server start, until healthy (or until it failed)
    warmup_s: float = math.nan
    load_s: float = math.nan
    stop_s: float = math.nan
    total_s: float = math.nan  # server start to stopped

    KEYS = (("wait_s", "t_wait_s"), ("start_s", "t_start_s"), ("warmup_s", "t_warmup_s"), ("load_s", "t_load_s"),
            ("stop_s", "t_stop_s"), ("total_s", "t_total_s"))

    def to_attrs(self) -> dict[str, Any]:
        return {key: round(v, 2) for name, key in self.KEYS if math.isfinite(v := getattr(self, name))}

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Timings]:
        if not _has_any(a, (k for _, k in cls.KEYS)):
            return None
        return cls(**{name: _float(a, key) for name, key in cls.KEYS})


def summary_to_attrs(s: LoadSummary) -> dict[str, Any]:
    """A load summary as flat attrs: totals, ``<metric>_<stat>`` of each distribution,
    ``errors_<kind>`` counts."""
    out: dict[str, Any] = {
        "n_requests": s.n_requests, "n_ok": s.n_ok, "error_rate": s.error_rate, "duration_s": s.duration_s,
        "output_tok_s": s.output_tok_s, "total_tok_s": s.total_tok_s, "req_s": s.req_s,
        "output_tokens": s.output_tokens, "prompt_tokens": s.prompt_tokens, "tpot_mean_ms": s.tpot_mean_ms}
    for metric in _DIST_METRICS:
        for k, v in dataclasses.asdict(s.dist(metric)).items():
            out[f"{metric}_{k}"] = v
    for kind, count in s.errors.items():
        out[f"errors_{kind}"] = count
    return {k: _out(v, 4) for k, v in out.items()}


def summary_from_attrs(a: Attrs) -> LoadSummary:
    dists = {m: Dist(_int(a, f"{m}_n"), *(_float(a, f"{m}_{f.name}") for f in dataclasses.fields(Dist)[1:]))
             for m in _DIST_METRICS}
    return LoadSummary(
        n_requests=_int(a, "n_requests"), n_ok=_int(a, "n_ok"), error_rate=_float(a, "error_rate"),
        errors={k[len("errors_"):]: _int(a, k) for k in a if k.startswith("errors_")},
        duration_s=_float(a, "duration_s"), output_tok_s=_float(a, "output_tok_s"),
        total_tok_s=_float(a, "total_tok_s"), req_s=_float(a, "req_s"), output_tokens=_int(a, "output_tokens"),
        prompt_tokens=_int(a, "prompt_tokens"), tpot_mean_ms=_float(a, "tpot_mean_ms"), **dists)


_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(ServerStats))


@dataclass(frozen=True)
class Measurement:
    """What the load test measured: the client's summary, the server's telemetry, the samples
    the report draws (latency CDFs in ms, the gauges over time)."""

    summary: LoadSummary
    telemetry: ServerStats
    client_cpu_s: float = math.nan
    client_cpu_share: float = math.nan  # of the load test's wall time
    warmup_errors: int = 0
    first_error: str = ""
    latency_samples: dict[str, list[float]] = field(default_factory=dict)  # metric -> ms (a sample of them)
    kv_timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (s, gauge -> value)

    def to_attrs(self) -> dict[str, Any]:
        out = summary_to_attrs(self.summary)
        out.update({f"srv_{n}": _out(getattr(self.telemetry, n), 4) for n in _STATS_FIELDS})
        out.update({"client_cpu_s": _out(self.client_cpu_s, 2), "client_cpu_share": _out(self.client_cpu_share, 3),
                    "warmup_errors": self.warmup_errors, "kv_timeline": json.dumps(self.kv_timeline)})
        if self.first_error:
            out["first_error"] = self.first_error[:300]
        if self.latency_samples:
            out["latency_samples"] = json.dumps(self.latency_samples)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[Measurement]:
        if "n_requests" not in a:
            return None
        samples = {m: [float(x) for x in v if isinstance(x, (int, float))]
                   for m, v in _json(a, "latency_samples", {}).items() if isinstance(v, list)}
        timeline = [(float(r[0]), {str(k): float(v) for k, v in r[1].items() if isinstance(v, (int, float))})
                    for r in _json(a, "kv_timeline", [])
                    if isinstance(r, list) and len(r) == 2 and isinstance(r[0], (int, float)) and isinstance(r[1], dict)]
        return cls(summary_from_attrs(a), ServerStats(**{n: _float(a, f"srv_{n}") for n in _STATS_FIELDS}),
                   _float(a, "client_cpu_s"), _float(a, "client_cpu_share"), _int(a, "warmup_errors"),
                   _str(a, "first_error"), samples, timeline)


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
        detail = _str(a, "failure_detail")
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
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it
    outcome: Optional[Outcome] = None

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

    def p99(self, metric: str) -> float:
        """The P99 (ms) of ``metric`` (ttft, itl or e2e); NaN when not measured."""
        return self.measurement.summary.dist(metric).p99 if self.measurement is not None else math.nan

    def to_attrs(self) -> dict[str, Any]:
        """The Optuna user attrs of this record (every value JSON-safe; NaN stored as None)."""
        out = self.setup.to_attrs() | self.lineage.to_attrs()
        for part in (self.memory, self.launch, self.timings, self.measurement, self.failure):
            if part is not None:
                out |= part.to_attrs()
        if self.start_log is not None:
            out |= _start_log_to_attrs(self.start_log)
        if self.interrupted:
            out["interrupted"] = True
        if self.ruled_out:
            out["counted"] = False
        if self.outcome is not None:
            out["feasible"] = self.outcome.feasible
        return out

    @classmethod
    def from_attrs(cls, a: Attrs, outcome: Optional[Outcome] = None) -> TrialRecord:
        """Read a record back; parts whose keys are absent are ``None`` (old studies included)."""
        return cls(setup=Setup.from_attrs(a), lineage=Lineage.from_attrs(a), memory=MemoryPrediction.from_attrs(a),
                   launch=LaunchInfo.from_attrs(a), start_log=_start_log_from_attrs(a),
                   timings=Timings.from_attrs(a), measurement=Measurement.from_attrs(a),
                   failure=Failure.from_attrs(a), interrupted=a.get("interrupted") is True, outcome=outcome)

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        """The record of a stored trial, with its outcome when it is COMPLETE and scored."""
        outcome = None
        if t.state == TrialState.COMPLETE and t.constraints:
            c = {k: float(v) for k, v in t.constraints.items()}
            outcome = Outcome(float(t.value or 0.0), c, all(v <= 0 for v in c.values()))
        return cls.from_attrs(t.user_attrs, outcome)
