"""What vLLM's start-up log says about the server it built. Pure.

The KV capacity vLLM settled on (to set beside the memory estimate) and where the start time
went: model loading, torch.compile, CUDA-graph capture, engine initialisation. Lines differ
between releases (0.26 prints the KV size and the maximum concurrency on two lines, 0.32's CPU
backend on one); each pattern is searched on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

__all__ = ["StartLog", "parse_start_log"]

_NUM = r"([\d,]+(?:\.\d+)?)"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "kv_tokens": re.compile(r"KV cache size: " + _NUM + r" tokens"),
    "max_concurrency": re.compile(r"Maximum concurrency for [\d,]+ tokens per request: " + _NUM + r"x"),
    "kv_gib": re.compile(r"Available KV cache memory: " + _NUM + r" GiB"),
    "weights_gib": re.compile(r"Model loading took " + _NUM + r" GiB"),
    "model_load_s": re.compile(r"Model loading took [\d.]+ GiB and " + _NUM + r" seconds"),
    "compile_s": re.compile(r"torch\.compile took " + _NUM + r" s in total"),
    "graph_capture_s": re.compile(r"Graph capturing finished in " + _NUM + r" secs"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" s"),
}


@dataclass(frozen=True)
class StartLog:
    """vLLM's own account of its start; NaN (None for the count and the flag) where the log did
    not say."""

    kv_tokens: Optional[int] = None
    max_concurrency: float = math.nan
    kv_gib: float = math.nan
    weights_gib: float = math.nan
    model_load_s: float = math.nan
    compile_s: float = math.nan
    graph_capture_s: float = math.nan
    engine_init_s: float = math.nan
    compile_cache_hit: Optional[bool] = None  # known only where torch.compile ran

    @property
    def empty(self) -> bool:
        """The log said none of these things."""
        return all(v is None or (isinstance(v, float) and math.isnan(v)) for v in vars(self).values())


def parse_start_log(text: str) -> StartLog:
    """The last value of each pattern in ``text`` (a restarted engine logs again)."""
    found: dict[str, float] = {}
    for key, pattern in _PATTERNS.items():
        hits = pattern.findall(text)
        if hits:
            found[key] = float(hits[-1].replace(",", ""))
    cache_hit = None
    if "compile_s" in found:
        loaded = text.count("Directly load the compiled graph") + text.count("loaded AOT compiled function")
        cache_hit = loaded > 0
    kv = found.pop("kv_tokens", None)
    return StartLog(kv_tokens=int(kv) if kv is not None else None, compile_cache_hit=cache_hit, **found)
