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

Each ``TrialError`` carries ``reason`` (a short category from :mod:`optimizer.server.failures`)
and ``deterministic``: True when the config itself is to blame (out of memory, invalid flags),
so the trial is recorded for the sampler to learn from; False when the environment is (a busy
GPU, a timeout), so the trial is failed and retried.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EnvironmentBusy",
    "ModelError",
    "OptimizerError",
    "ServerCrashed",
    "ServerDied",
    "ServerStartError",
    "ServerStartTimeout",
    "StudyError",
    "TrialError",
]


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

    def __init__(self, message: str, *, reason: str = "other", deterministic: bool = False,
                 log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.deterministic = deterministic
        self.log_tail = log_tail


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
