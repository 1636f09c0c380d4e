"""Exceptions of the optimizer, one tree::

    OptimizerError                 base of everything raised on purpose
    ├── ConfigError                bad input: refused before any server starts (exit code 2)
    │   └── ModelError             a model the package prepares (SmolLM2) cannot be prepared
    ├── StudyError                 the study itself cannot go on (storage, fingerprint, budget)
    └── TrialError                 one trial could not be measured
        ├── ServerStartError       the server did not come up
        │   ├── ServerCrashed      it exited during start; the log says why
        │   └── ServerStartTimeout it never became healthy in time
        ├── ServerDied             it exited while the load test ran
        └── EnvironmentBusy        GPU memory or the port stayed held by something else

    KeyboardInterrupt
    ├── Terminated                 SIGTERM, raised in the main thread so that every ``finally`` runs
    └── TrialInterrupted           Ctrl-C or SIGTERM during a trial, with the trial's partial record

Each ``TrialError`` carries ``reason`` (a :class:`FailureReason`), the partial
:class:`~optimizer.record.TrialRecord` of what the trial got to (``record``, set by the trial
runner) and ``deterministic``: True when the config itself is to blame (out of memory, invalid flags),
so the trial is recorded for the sampler to learn from; False when the environment is (a busy
GPU, a timeout), so the trial is failed and retried.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "ConfigError",
    "EnvironmentBusy",
    "FailureReason",
    "ModelError",
    "OptimizerError",
    "ServerCrashed",
    "ServerDied",
    "ServerStartError",
    "ServerStartTimeout",
    "StudyError",
    "Terminated",
    "TrialError",
    "TrialInterrupted",
]


class FailureReason(StrEnum):
    """Why a trial has no measurement. The value is what the study database stores."""

    RULED_OUT = "ruled_out"  # the memory estimate refused the config; no server was started
    OUT_OF_MEMORY = "out_of_memory"
    KV_CACHE_TOO_SMALL = "kv_cache_too_small"
    INVALID_CONFIG = "invalid_config"  # vLLM refused the flags
    MODEL_MISSING = "model_missing"
    GPU_BUSY = "gpu_busy"  # another process held the GPU memory
    PORT_IN_USE = "port_in_use"
    TOO_FEW_GPUS = "too_few_gpus"  # this worker's GPU group is smaller than the trial's tensor parallelism
    START_TIMEOUT = "start_timeout"
    KILLED = "killed"  # the server was killed by a signal
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM stopped the optimizer during the trial
    FOREIGN_SERVER = "foreign_server"  # another server answered on the trial's port (not ours: not measured)
    SLO_NOT_CALIBRATED = "slo_not_calibrated"  # slo.p99_ms=auto and the baseline had not calibrated it yet
    CALIBRATION = "calibration"  # the baseline served nothing to calibrate slo.p99_ms=auto on
    OTHER = "other"

    @classmethod
    def parse(cls, value: str) -> FailureReason:
        """The reason named ``value``; OTHER for a name this version does not know."""
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


class OptimizerError(Exception):
    """Base of every error the optimizer raises on purpose."""


class ConfigError(OptimizerError, ValueError):
    """The configuration is invalid. The message names the key, the value and what is allowed."""


class ModelError(ConfigError):
    """A model the package prepares itself (download, hash check, conversion) cannot be prepared.
    The message says which step failed and how to prepare it by hand."""


class StudyError(OptimizerError, RuntimeError):
    """The study cannot go on: storage unreadable, config changed under it, too many faults."""


class TrialError(OptimizerError, RuntimeError):
    """A trial could not be measured."""

    def __init__(self, message: str, *, reason: FailureReason | str = FailureReason.OTHER,
                 deterministic: bool = False, log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason if isinstance(reason, FailureReason) else FailureReason.parse(reason)
        self.deterministic = deterministic
        self.log_tail = log_tail
        # what the trial got to (an optimizer.record.TrialRecord, or None), set by the trial runner; typed Any
        # because this leaf module sits below the record it carries (naming it made an import circle)
        self.record: Any = None


class ServerStartError(TrialError):
    """The vLLM server did not become ready."""


class ServerCrashed(ServerStartError):
    """The server process exited before it became ready."""


class ServerStartTimeout(ServerStartError):
    """The server did not answer /health within the start timeout."""


class ServerDied(TrialError):
    """The server exited or stopped answering while it was being measured."""


class EnvironmentBusy(TrialError):
    """GPU memory or the port stayed in use by something else past the wait limit."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every ``finally`` (server stop) runs."""


class TrialInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived during a trial: ``record`` is what the trial got to,
    ``original`` the interrupt itself (the study loop records the trial, then re-raises it)."""

    def __init__(self, record: Any, original: KeyboardInterrupt) -> None:  # record: a TrialRecord (see TrialError)
        super().__init__()
        self.record = record
        self.original = original
