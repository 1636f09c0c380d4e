"""Server-side telemetry from vLLM's Prometheus ``/metrics``.

A snapshot is taken before and after the load test (counters are diffed) and gauges are sampled
during it (peaks of KV-cache usage, running and waiting requests). Parsing uses
``prometheus_client``'s text parser; the numbers are summed over label sets (engines).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Optional

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ServerStats", "Snapshot", "TelemetrySampler", "parse_metrics", "scrape_metrics", "server_stats"]

_COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions", "vllm:request_success",
             "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:spec_decode_num_drafts",
             "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")
_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")


@dataclass
class Snapshot:
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    cache_info: dict[str, str] = field(default_factory=dict)


def parse_metrics(text: str) -> Snapshot:
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.endswith("_total") and name[: -len("_total")] in _COUNTERS:
                key = name[: -len("_total")]
                snap.counters[key] = snap.counters.get(key, 0.0) + sample.value
            elif name in _GAUGES:
                snap.gauges[name] = snap.gauges.get(name, 0.0) + sample.value
            elif name == "vllm:cache_config_info":
                snap.cache_info = dict(sample.labels)
    return snap


def scrape_metrics(base_url: str, headers: Optional[dict[str, str]] = None,
                   timeout_s: float = 5.0) -> Optional[Snapshot]:
    """One snapshot of ``/metrics`` now (None when it cannot be read); the sampler's, synchronously."""
    try:
        r = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s, headers=headers)
        r.raise_for_status()
        return parse_metrics(r.text)
    except (httpx.HTTPError, ValueError):
        return None


def _num(info: dict[str, str], key: str) -> float:
    try:
        return float(info.get(key, "nan"))
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class ServerStats:
    """What the server says about one load test: counter deltas, gauge peaks, its KV capacity.

    NaN where the server did not report it (no prefix-cache queries, no speculative drafts, no
    ``cache_config_info``)."""

    prompt_tokens: float
    generation_tokens: float
    requests_ok: float
    preemptions: float
    prefix_cache_hit_rate: float
    spec_acceptance: float
    spec_drafts: float
    kv_usage_peak: float  # a fraction, as vLLM reports it
    running_peak: float
    waiting_peak: float
    kv_cache_tokens: float
    num_gpu_blocks: float
    block_size: float


def server_stats(before: Snapshot, after: Snapshot, peaks: dict[str, float]) -> ServerStats:
    """The per-trial telemetry: counter deltas, gauge peaks, KV capacity."""
    d = {k: after.counters.get(k, 0.0) - before.counters.get(k, 0.0) for k in _COUNTERS}
    queries = d["vllm:prefix_cache_queries"]
    drafts = d["vllm:spec_decode_num_draft_tokens"]
    info = after.cache_info or before.cache_info
    return ServerStats(
        prompt_tokens=d["vllm:prompt_tokens"],
        generation_tokens=d["vllm:generation_tokens"],
        requests_ok=d["vllm:request_success"],
        preemptions=d["vllm:num_preemptions"],
        prefix_cache_hit_rate=d["vllm:prefix_cache_hits"] / queries if queries > 0 else math.nan,
        spec_acceptance=d["vllm:spec_decode_num_accepted_tokens"] / drafts if drafts > 0 else math.nan,
        spec_drafts=d["vllm:spec_decode_num_drafts"],
        kv_usage_peak=peaks.get("vllm:kv_cache_usage_perc", math.nan),
        running_peak=peaks.get("vllm:num_requests_running", math.nan),
        waiting_peak=peaks.get("vllm:num_requests_waiting", math.nan),
        kv_cache_tokens=_num(info, "kv_cache_size_tokens"),
        num_gpu_blocks=_num(info, "num_gpu_blocks"),
        block_size=_num(info, "block_size"),
    )


class TelemetrySampler:
    """Scrapes ``/metrics`` before, during (every ``interval_s``) and after a load test."""

    def __init__(self, base_url: str, interval_s: float = 1.0, headers: Optional[dict[str, str]] = None) -> None:
        self.url = base_url.rstrip("/") + "/metrics"
        self.interval_s = interval_s
        self.headers = headers or {}
        self.before = Snapshot()
        self.after = Snapshot()
        self.peaks: dict[str, float] = {}
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self._task: Optional[asyncio.Task[None]] = None
        self._client: Optional[httpx.AsyncClient] = None

    async def _scrape(self) -> Optional[Snapshot]:
        assert self._client is not None
        try:
            r = await self._client.get(self.url)
            r.raise_for_status()
            return parse_metrics(r.text)
        except (httpx.HTTPError, ValueError):
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            snap = await self._scrape()
            if snap is not None:
                for k, v in snap.gauges.items():
                    self.peaks[k] = max(self.peaks.get(k, -math.inf), v)
                self.timeline.append((round(loop.time() - t0, 2), dict(snap.gauges)))
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> "TelemetrySampler":
        self._client = httpx.AsyncClient(timeout=5.0, headers=self.headers)
        self.before = await self._scrape() or Snapshot()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.after = await self._scrape() or Snapshot()
        for k, v in self.after.gauges.items():
            self.peaks[k] = max(self.peaks.get(k, -math.inf), v)
        assert self._client is not None
        await self._client.aclose()

    def stats(self) -> ServerStats:
        return server_stats(self.before, self.after, self.peaks)
