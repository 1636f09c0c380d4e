"""The fake vLLM server's state (:mod:`optimizer.testing.fake_server`): what it is told to do
(:class:`FakeConfig`, its faults), what it counted (:class:`FakeStats`), how it counts a prompt's
tokens, the words it answers with, and the Prometheus text its ``/metrics`` shows. Standard
library only, like the rest of the fake: it runs in vLLM's virtualenv too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KINDS", "VERSION", "FakeConfig", "FakeStats", "metrics_text", "prompt_tokens", "words"]

FAULT_KINDS = ("http500", "http429", "drop", "stall", "malformed", "no_done", "slow_first")
VERSION = "0.32.0"


@dataclass
class FakeConfig:
    """What the server does. Mutable while it runs (in-process) or through ``POST /fake/config``."""

    model: str = "fake"
    delay_ms: float = 0.0  # request read -> first token
    tokens_per_s: float = 0.0  # per stream; 0: as fast as possible
    fault: str = ""  # comma-separated FAULT_KINDS
    fault_rate: float = 0.0
    seed: int = 0
    slow_first_ms: float = 2000.0
    stall_s: float = 3600.0
    max_model_len: int = 4096
    num_gpu_blocks: int = 8192
    block_size: int = 16

    def kinds(self) -> list[str]:
        out = [k.strip() for k in self.fault.split(",") if k.strip()]
        bad = [k for k in out if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"fault={self.fault!r}: unknown kind(s) {bad}; valid: {', '.join(FAULT_KINDS)}")
        return out


@dataclass
class FakeStats:
    """What the server counted since it started or was reset (``GET /fake/stats`` shows a snapshot)."""

    requests: int = 0
    completed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0
    kv_blocks: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)  # last token written minus its schedule

    def snapshot(self) -> dict[str, Any]:
        def q(values: list[float]) -> dict[str, float]:
            if not values:
                return {"n": 0}
            s = sorted(values)
            pick = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]  # noqa: E731
            return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1]}

        return {"requests": self.requests, "completed": self.completed, "faults": dict(self.faults),
                "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens,
                "running": self.running, "ttft_ms": q(self.ttft_ms), "e2e_ms": q(self.e2e_ms),
                "lag_ms": q(self.lag_ms)}


def words(n: int, offset: int) -> list[str]:
    """``n`` tokens of a made-up language, from ``offset`` on (one word per token)."""
    vocab = ("lo", " ba", " ki", "zo", " tel", " mu", "ra", " du", " wa", " ko", "no", " ji")
    return [vocab[(offset + i) % len(vocab)] for i in range(n)]


def prompt_tokens(prompt: Any) -> int:
    """Token ids count one each; text (chat: every message's content) counts its whitespace-separated words."""
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], int):
            return len(prompt)
        if prompt and isinstance(prompt[0], dict):  # chat messages
            total = 0
            for m in prompt:
                c = m.get("content")
                if isinstance(c, str):
                    total += len(c.split())
                elif isinstance(c, list):
                    total += sum(len(str(p.get("text", "")).split()) for p in c if isinstance(p, dict))
            return total
        return sum(prompt_tokens(p) for p in prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    return 0


def metrics_text(config: FakeConfig, stats: FakeStats) -> str:
    """``GET /metrics``: the vLLM Prometheus series the optimizer reads, from ``stats``."""
    c, st = config, stats
    lab = f'engine="0",model_name="{c.model}"'
    kv = st.kv_blocks / c.num_gpu_blocks if c.num_gpu_blocks else 0.0
    info = (f'block_size="{c.block_size}",cache_dtype="auto",enable_prefix_caching="True",engine="0",'
            f'gpu_memory_utilization="0.9",kv_cache_size_tokens="{c.num_gpu_blocks * c.block_size}",'
            f'num_cpu_blocks="None",num_gpu_blocks="{c.num_gpu_blocks}"')
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{lab}}} {float(st.running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{lab}}} 0.0",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{lab}}} {min(1.0, kv)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{lab}}} {float(st.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{lab}}} {float(st.generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{c.model}"}} '
        f"{float(st.completed)}",
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        f"vllm:cache_config_info{{{info}}} 1.0",
    ]
    return "\n".join(lines) + "\n"
