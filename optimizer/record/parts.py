"""The parts of a trial record known before and around the load test: what was tried where
(:class:`Setup`), its place among retries (:class:`Lineage`), the memory estimate, how the server
was launched, what vLLM's start-up log said, and the time per phase. Each owns its user attrs."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from optimizer.record._attrs import Attrs, attr_value, has_any, integer, json_value, num, text
from optimizer.server.engine import Engine
from optimizer.server.startlog import StartLog
from optimizer.space.memory import MemoryEstimate

__all__ = ["LaunchInfo", "Lineage", "MemoryPrediction", "Setup", "Timings", "start_log_from_attrs",
           "start_log_to_attrs"]


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
    # the vLLM and torch build installed for the server's interpreter, read before the study started
    # (optimizer.server.engine); unknown in studies from before it was recorded
    engine: Engine = Engine()

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("hardware", self.hardware), ("model", self.model),
                                                 ("workload", self.workload), ("worker", self.worker),
                                                 ("gpus", self.gpus)) if v}
        if self.engine_params is not None:
            out["engine_params"] = json.dumps(self.engine_params, sort_keys=True)
        if self.engine.known:
            out["engine"] = json.dumps(self.engine.to_dict(), sort_keys=True)
        return out

    @classmethod
    def from_attrs(cls, a: Attrs) -> Setup:
        params = json_value(a, "engine_params", {}) if "engine_params" in a else None
        return cls(text(a, "hardware"), text(a, "model"), text(a, "workload"), params, text(a, "worker"),
                   text(a, "gpus"), Engine.from_dict(json_value(a, "engine", {})))


@dataclass(frozen=True)
class Lineage:
    """Written when a trial is enqueued: the baseline, a ``study.enqueue`` seed, or a retry of an
    earlier trial."""

    baseline: bool = False
    attempt: int = 0  # retries before this one
    retry_of: Optional[int] = None
    retry_reason: str = ""
    seed: bool = False  # one of study.enqueue: vLLM's defaults with the changes the user gave

    def to_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "baseline"} if self.baseline else {"kind": "seed"} if self.seed else {}
        if self.retry_of is not None:
            out.update({"attempt": self.attempt, "retry_of": self.retry_of, "retry_reason": self.retry_reason[:300]})
        return out

    def retry(self, of: int, reason: str) -> Lineage:
        """The lineage of a retry of the trial ``of`` that had this lineage."""
        return Lineage(self.baseline, self.attempt + 1, of, reason, self.seed)

    @classmethod
    def from_attrs(cls, a: Attrs) -> Lineage:
        r = a.get("retry_of")
        return cls(a.get("kind") == "baseline", integer(a, "attempt"),
                   r if isinstance(r, int) and not isinstance(r, bool) else None, text(a, "retry_reason"),
                   a.get("kind") == "seed")


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
        return {"mem_budget_gib": attr_value(self.budget_gib, 3), "mem_weights_gib": attr_value(self.weights_gib, 3),
                "mem_activation_gib": attr_value(self.activation_gib, 3), "mem_kv_gib": attr_value(self.kv_gib, 3),
                "pred_kv_tokens": self.kv_tokens, "pred_max_concurrency": attr_value(self.max_concurrency, 2)}

    @classmethod
    def from_attrs(cls, a: Attrs) -> Optional[MemoryPrediction]:
        if "mem_budget_gib" not in a:
            return None
        return cls(num(a, "mem_budget_gib"), num(a, "mem_weights_gib"), num(a, "mem_activation_gib"),
                   num(a, "mem_kv_gib"), integer(a, "pred_kv_tokens"), num(a, "pred_max_concurrency"))


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
        return cls(tuple(str(x) for x in json_value(a, "server_argv", [])), text(a, "server_command"),
                   json_value(a, "serve_config", {}), text(a, "server_log"), text(a, "vllm_version"))


_START_LOG_FIELDS = tuple(f.name for f in dataclasses.fields(StartLog))


def start_log_to_attrs(s: StartLog) -> dict[str, Any]:
    """``log_<field>`` for each thing the log said; nothing for what it did not."""
    out = {}
    for name in _START_LOG_FIELDS:
        v = attr_value(getattr(s, name))
        if v is not None and v != "":
            out[f"log_{name}"] = v
    return out


def start_log_from_attrs(a: Attrs) -> Optional[StartLog]:
    if not has_any(a, (f"log_{n}" for n in _START_LOG_FIELDS)):
        return None
    hit = a.get("log_compile_cache_hit")
    return StartLog(kv_tokens=integer(a, "log_kv_tokens") if "log_kv_tokens" in a else None,
                    compile_cache_hit=hit if isinstance(hit, bool) else None, compile_key=text(a, "log_compile_key"),
                    **{n: num(a, f"log_{n}") for n in _START_LOG_FIELDS
                       if n not in ("kv_tokens", "compile_cache_hit", "compile_key")})


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
        if not has_any(a, (k for _, k in cls.KEYS)):
            return None
        return cls(**{name: num(a, key) for name, key in cls.KEYS})
