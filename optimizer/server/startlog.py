"""What vLLM's start-up log says about the server it built. Pure.

The KV capacity vLLM settled on (to set beside the memory estimate), where the start time went
(model loading, torch.compile, CUDA-graph capture, engine initialisation) and whether the
compiled model came from the compile cache (and under which cache key). Lines differ between
releases (0.26 prints the KV size and the maximum concurrency on two lines, 0.32's CPU backend on
one; 0.32's CPU backend logs no compile time, only the span of its compile warm-up); each pattern
is searched on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

__all__ = ["START_PHASES", "StartLog", "parse_start_log"]

_NUM = r"([\d,]+(?:\.\d+)?)"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "kv_tokens": re.compile(r"KV cache size: " + _NUM + r" tokens"),
    "max_concurrency": re.compile(r"Maximum concurrency for [\d,]+ tokens per request: " + _NUM + r"x"),
    "kv_gib": re.compile(r"Available KV cache memory: " + _NUM + r" GiB"),
    "weights_gib": re.compile(r"Model loading took " + _NUM + r" GiB"),
    "model_load_s": re.compile(r"Model loading took [\d.]+ GiB(?: memory)? and " + _NUM + r" seconds"),
    "compile_s": re.compile(r"torch\.compile took " + _NUM + r" s in total"),
    "graph_capture_s": re.compile(r"Graph capturing finished in " + _NUM + r" secs"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" s"),
}
# the CPU build (0.32) logs only the weights' part of the model load
_WEIGHTS_LOAD_S = re.compile(r"Loading weights took " + _NUM + r" seconds")
# the CPU build (0.32) compiles inside this warm-up and logs no compile time: its span is the compile
_CPU_WARMUP = ("Warming up model for the compilation", "Warming up done.")
_STAMP = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR) (\d\d-\d\d \d\d:\d\d:\d\d) ")
# the start found its compiled shape in the cache: vLLM 0.32's AOT artifact loaded, the 0.26-style
# per-graph cache read, or (vLLM 0.32's CPU build) an artifact of this key that vLLM fails to load back
# ("'function' object has no attribute 'finalize_loading'") and compiles again with inductor's cache of
# the same key: the hit then saves inductor's part of the compile, not Dynamo's trace
_CACHE_LOADS = ("Directly load AOT compilation from path", "Directly load the compiled graph",
                "loaded AOT compiled function", "Compiling model again due to a load failure")
# a compile from nothing: a graph compiled, an artifact written where none was
_CACHE_MISSES = ("Compiling a graph for", "saved AOT compiled function")
_CACHE_KEY = re.compile(r"torch_compile_cache/(?:torch_aot_compile/)?([0-9a-f]{10,})")

#: The start's phases, in order, as (label, what they hold); :meth:`StartLog.phases` splits a start
#: into them.
START_PHASES = (
    ("process start + imports", "launch to ready minus what the log accounts for: the API server's and the "
                                "engine core's Python imports, process start-up, and the API server's own set-up"),
    ("model load", "weights read into memory (vLLM's 'Model loading took' / 'Loading weights took')"),
    ("torch.compile", "vLLM's 'torch.compile took'; on the CPU build the span of its compile warm-up"),
    ("CUDA graphs", "vLLM's 'Graph capturing finished in'"),
    ("engine init rest", "memory profiling, KV-cache allocation and warm-up runs: vLLM's 'init engine' time "
                         "minus the compile and the graph capture"),
)


@dataclass(frozen=True)
class StartLog:
    """vLLM's own account of its start; NaN ("" for the key, None for the count and the flag) where
    the log did not say."""

    kv_tokens: Optional[int] = None
    max_concurrency: float = math.nan
    kv_gib: float = math.nan
    weights_gib: float = math.nan
    model_load_s: float = math.nan
    compile_s: float = math.nan
    graph_capture_s: float = math.nan
    engine_init_s: float = math.nan
    compile_cache_hit: Optional[bool] = None  # known only where torch.compile ran or was loaded
    compile_key: str = ""  # the compile cache's directory (vLLM's hash of what shapes the compiled graph)

    @property
    def empty(self) -> bool:
        """The log said none of these things."""
        return all(v is None or v == "" or (isinstance(v, float) and math.isnan(v)) for v in vars(self).values())

    def phases(self, start_s: float) -> Optional[dict[str, float]]:
        """``start_s`` (launch to ready, as the trial measured it) split into :data:`START_PHASES`,
        in seconds; None where the log does not give the engine's init time (nothing to split on).
        Compile and capture lie inside vLLM's init time; what the log does not account for is the
        first phase. Phases the log did not report are 0. A log that accounts for more than
        ``start_s`` (the two clocks disagree) has its phases scaled to fit."""
        if not (math.isfinite(start_s) and math.isfinite(self.engine_init_s)):
            return None

        def s(v: float) -> float:
            return max(0.0, v) if math.isfinite(v) else 0.0

        compile_s, capture = s(self.compile_s), s(self.graph_capture_s)
        init_rest = max(0.0, s(self.engine_init_s) - compile_s - capture)
        load = s(self.model_load_s)
        logged = [load, compile_s, capture, init_rest]
        total = sum(logged)
        scale = start_s / total if total > start_s > 0 else 1.0
        logged = [v * scale for v in logged]
        labels = [label for label, _ in START_PHASES]
        return dict(zip(labels, [max(0.0, start_s - sum(logged)), *logged]))


def _stamp(line: str) -> Optional[datetime]:
    m = _STAMP.search(line)
    if m is None:
        return None
    try:  # vLLM's stamps carry no year; one that no date has cannot wrap a span
        return datetime.strptime("2000-" + m.group(1), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _span_s(text: str, begin: str, end: str) -> float:
    """Seconds from the last ``begin`` line to the first ``end`` line after it (1 s resolution)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if begin in line]
    if not starts:
        return math.nan
    t0 = _stamp(lines[starts[-1]])
    for line in lines[starts[-1] + 1:]:
        if end in line:
            t1 = _stamp(line)
            return (t1 - t0).total_seconds() if t0 and t1 and t1 >= t0 else math.nan
    return math.nan


def _cache_hit(text: str, compiled: bool) -> Optional[bool]:
    if any(m in text for m in _CACHE_LOADS):
        return True
    if compiled or any(m in text for m in _CACHE_MISSES):
        return False
    return None


def parse_start_log(text: str) -> StartLog:
    """The last value of each pattern in ``text`` (a restarted engine logs again)."""
    found: dict[str, float] = {}
    for key, pattern in _PATTERNS.items():
        hits = pattern.findall(text)
        if hits:
            found[key] = float(hits[-1].replace(",", ""))
    if "model_load_s" not in found and (weights := _WEIGHTS_LOAD_S.findall(text)):
        found["model_load_s"] = float(weights[-1].replace(",", ""))
    if "compile_s" not in found and math.isfinite(span := _span_s(text, *_CPU_WARMUP)):
        found["compile_s"] = span
    keys = _CACHE_KEY.findall(text)
    kv = found.pop("kv_tokens", None)
    return StartLog(kv_tokens=int(kv) if kv is not None else None, compile_key=keys[-1] if keys else "",
                    compile_cache_hit=_cache_hit(text, "compile_s" in found), **found)
