"""What one request is (``RequestSpec``) and what happened to it (``RequestResult``).

A failed request is a record, never an exception: ``ok`` is False and ``error_kind`` says which
of :data:`ERROR_KINDS` it was. Times are seconds from ``time.perf_counter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = ["ERROR_KINDS", "RequestResult", "RequestSpec"]

ERROR_KINDS = (
    "http_status",  # the server answered 4xx/5xx (429 excepted), or sent an error event
    "rate_limited",  # the server answered 429 Too Many Requests
    "connect",  # connection refused or reset before the response started
    "timeout",  # the whole request exceeded load.request_timeout_s
    "stalled",  # no byte for load.stall_timeout_s in an open stream
    "stream_broken",  # the connection broke mid-stream
    "no_done",  # the stream ended cleanly but without its final `data: [DONE]`
    "malformed",  # a stream event that is not the JSON the API promises
    "incomplete",  # the stream ended without the tokens asked for
    "aborted",  # never sent: the run stopped early because the server was unreachable
    "other",
)


@dataclass(frozen=True)
class RequestSpec:
    index: int
    prompt: Union[list[int], str, list[dict[str, str]]]  # token ids, text, or chat messages
    max_tokens: int
    prompt_tokens: Optional[int] = None  # known when the prompt is token ids


@dataclass
class RequestResult:
    index: int
    ok: bool = False
    error_kind: str = ""
    error: str = ""
    status: int = 0
    t_start: float = 0.0  # when it was due (open loop) or sent (closed loop)
    t_sent: float = 0.0
    ttft: float = float("nan")  # s, from t_start to the first token
    latency: float = float("nan")  # s, from t_start to the end of the stream
    itl: list[float] = field(default_factory=list)  # s, between successive token chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    chunks: int = 0
    warmup: bool = False

    @property
    def queued_s(self) -> float:
        """How long after its due time the request was sent (open loop; 0 in a closed loop)."""
        return self.t_sent - self.t_start if self.t_sent else float("nan")

    @property
    def ttft_from_send(self) -> float:
        """TTFT from when the request was sent, as ``vllm bench serve`` counts it (``ttft`` counts
        from when it was due, so that a client-side queue is charged to the latency)."""
        return self.ttft - self.queued_s

    @property
    def t_end(self) -> float:
        return self.t_start + self.latency if self.latency == self.latency else self.t_start
