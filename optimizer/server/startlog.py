"""What vLLM's start-up log says about the server it built. Pure.

The KV capacity vLLM settled on (to set beside the memory estimate) and where the start time
went: model loading, torch.compile, CUDA-graph capture, engine initialisation. Lines differ
between releases (0.26 prints the KV size and the maximum concurrency on two lines, 0.32's CPU
backend on one); each pattern is searched on its own.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_start_log"]

_NUM = r"([\d,]+(?:\.\d+)?)"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "log_kv_tokens": re.compile(r"KV cache size: " + _NUM + r" tokens"),
    "log_max_concurrency": re.compile(r"Maximum concurrency for [\d,]+ tokens per request: " + _NUM + r"x"),
    "log_kv_gib": re.compile(r"Available KV cache memory: " + _NUM + r" GiB"),
    "log_weights_gib": re.compile(r"Model loading took " + _NUM + r" GiB"),
    "log_model_load_s": re.compile(r"Model loading took [\d.]+ GiB and " + _NUM + r" seconds"),
    "log_compile_s": re.compile(r"torch\.compile took " + _NUM + r" s in total"),
    "log_graph_capture_s": re.compile(r"Graph capturing finished in " + _NUM + r" secs"),
    "log_engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" s"),
}


def parse_start_log(text: str) -> dict[str, Any]:
    """The last value of each pattern in ``text`` (a restarted engine logs again)."""
    out: dict[str, Any] = {}
    for key, pattern in _PATTERNS.items():
        found = pattern.findall(text)
        if found:
            value = float(found[-1].replace(",", ""))
            out[key] = int(value) if key == "log_kv_tokens" else value
    if "log_compile_s" in out:
        hits = text.count("Directly load the compiled graph") + text.count("loaded AOT compiled function")
        out["log_compile_cache_hit"] = hits > 0
    return out
