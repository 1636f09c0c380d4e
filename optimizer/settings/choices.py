"""The closed sets of choices of the config, as string enums.

Each member's name is its value, the string the YAML files and the command line use
(``load.mode=rate``): OmegaConf converts a string to an enum member by name, so Hydra refuses
any other value at compose time, naming the key and the valid choices, and no code has to check
strings again. Members compare equal to their strings (``StrEnum``) and serialize as them
(stored config snapshots and study fingerprints are unchanged).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Arrival", "CapacityControl", "CapacityValue", "Device", "Endpoint", "Launcher", "LoadMode", "P99Sizing", "QualityMode", "Sampler", "SloMetric", "SpecMethod"]


class Endpoint(StrEnum):
    """The OpenAI API the requests go to."""

    completions = "completions"
    chat = "chat"


class Launcher(StrEnum):
    """How each trial's server process is started (optimizer/server/launcher.py)."""

    plain = "plain"  # a new interpreter per start: `python -m <server.module> ...`
    forkserver = "forkserver"  # forked from a zygote that imported vLLM once per study
    auto = "auto"  # forkserver on the CPU build and on one GPU, plain with tensor parallelism (launcher.resolve)


class LoadMode(StrEnum):
    concurrency = "concurrency"  # closed loop: a fixed number of requests in flight
    rate = "rate"  # open loop: requests arrive at load.request_rate
    capacity = "capacity"  # the highest load that meets the SLO (load.capacity)


class CapacityControl(StrEnum):
    """What a capacity search varies."""

    concurrency = "concurrency"  # closed loop: users
    rate = "rate"  # open loop: Poisson requests/s


class CapacityValue(StrEnum):
    """The trial's value at the capacity found."""

    output_tok_s = "output_tok_s"
    req_s = "req_s"


class Arrival(StrEnum):
    """How open-loop arrivals are spaced."""

    poisson = "poisson"
    constant = "constant"


class P99Sizing(StrEnum):
    """What to do when too few requests can bound the P99 from above."""

    warn = "warn"
    auto = "auto"  # raise num_requests to the minimum
    off = "off"


class SloMetric(StrEnum):
    """The latency whose P99 the SLO limits; every latency a load summary holds, in the report's order
    (``optimizer.measures.metrics.LATENCY_METRICS``: a new one is added here and as a ``LoadSummary`` field)."""

    ttft = "ttft"
    itl = "itl"
    e2e = "e2e"


class Device(StrEnum):
    cuda = "cuda"
    cpu = "cpu"


class Sampler(StrEnum):
    tpe = "tpe"
    random = "random"


class SpecMethod(StrEnum):
    """Speculative decoding: none, n-gram lookup, or a draft model."""

    off = "off"
    ngram = "ngram"
    draft = "draft"


class QualityMode(StrEnum):
    """What the quality probe does in a study."""

    off = "off"
    measure = "measure"  # record only
    gate = "gate"  # a constraint: a config that changes the answers is infeasible
