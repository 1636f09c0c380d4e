"""Why a vLLM server failed, read from its log. Pure.

The reason decides what the study does with the trial: ``deterministic`` reasons (the config
itself cannot work) are recorded as an infeasible result the sampler learns from; the others
(the environment was in the way) fail the trial so that its config is retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from optimizer.core.errors import FailureReason as R

__all__ = ["Diagnosis", "classify", "tail"]


@dataclass(frozen=True)
class Diagnosis:
    reason: R
    deterministic: bool
    evidence: str  # the log line that decided it


# first match wins; order from most to least specific
_RULES: list[tuple[R, bool, re.Pattern[str]]] = [
    (R.GPU_BUSY, False, re.compile(r"Free memory on device .* is less than desired GPU memory utilization"
                                   r"|less than desired CPU memory utilization", re.I)),
    (R.PORT_IN_USE, False, re.compile(r"Address already in use|\[Errno 98\]", re.I)),
    (R.KV_CACHE_TOO_SMALL, True, re.compile(
        r"No available memory for the cache blocks|To serve at least one request with the model's max seq len"
        r"|is larger than the available KV cache memory|KV cache is needed, which is larger than", re.I)),
    (R.OUT_OF_MEMORY, True, re.compile(
        r"CUDA out of memory|OutOfMemoryError|out of memory occurred|Cannot allocate memory"
        r"|on kv cache allocation is less than requested memory", re.I)),
    (R.MODEL_MISSING, True, re.compile(
        r"Repository Not Found|does not appear to have a file named|Can't load the configuration"
        r"|No such file or directory: .*config\.json|is not a local folder and is not a valid model identifier"
        r"|We couldn't connect to|LocalEntryNotFoundError|Invalid repository ID or local directory", re.I)),
    (R.INVALID_CONFIG, True, re.compile(
        r"ValidationError|validation error|unrecognized arguments|error: argument|invalid choice"
        r"|must be greater than or equal to|is not supported|Unknown quantization|ValueError: ", re.I)),
]


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def classify(log_text: str, returncode: Optional[int] = None) -> Diagnosis:
    """Diagnose a failed start (or death) from the server log.

    The log is searched from the end, since the root cause is usually the last error printed
    above vLLM's generic "Engine core initialization failed" wrapper."""
    lines = log_text.splitlines()
    for reason, deterministic, pattern in _RULES:
        for line in reversed(lines):
            if pattern.search(line):
                return Diagnosis(reason, deterministic, line.strip()[-400:])
    if returncode is not None and returncode < 0:
        return Diagnosis(R.KILLED, False, f"the server was killed by signal {-returncode}")
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return Diagnosis(R.OTHER, False, last[-400:])
