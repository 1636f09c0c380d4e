"""One streaming request against an OpenAI-compatible server. Never raises.

Each concurrent worker owns one ``httpx.AsyncClient`` with a pool of one connection: a single
client whose pool is as large as the concurrency spends its time in pool bookkeeping and adds
seconds to the P99 it is meant to measure (shared/reference/client_capacity.md).

What is measured, from ``t_start`` (when the request was sent, or due in an open loop):
TTFT to the first token event, one ITL per further token event, E2E to the end of the stream
(``data: [DONE]``). A token event is any SSE event with a choice, even one whose text is empty
(vLLM streams a token whose bytes do not yet form a character as an empty string), except the
chat stream's opening role announcement; this is the rule ``vllm bench serve`` applies, so the
two agree on TTFT and ITL. Events of one network read share one timestamp: they arrived
together. Token counts come from the usage of the last event (``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from optimizer.core.auth import bearer
from optimizer.loadgen.records import RequestResult, RequestSpec

__all__ = ["Endpoint", "Sampling", "new_client", "send"]


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters every request carries (``workload.temperature`` and co.).

    Sent explicitly, never left to the server: vLLM otherwise applies the model's
    ``generation_config.json`` defaults (often temperature 0.6-1.0 with top-p), which change the
    work per token and make two clients that leave them out measure different servers."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    seed: Optional[int] = None

    @classmethod
    def of(cls, workload: Any) -> "Sampling":
        return cls(float(workload.temperature), float(workload.top_p), int(workload.top_k), workload.sampling_seed)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature}
        if self.top_p != 1.0:
            out["top_p"] = self.top_p
        if self.top_k != -1:
            out["top_k"] = self.top_k
        if self.seed is not None:
            out["seed"] = self.seed
        return out


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    kind: str = "completions"  # completions | chat
    api_key: Optional[str] = None
    request_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0
    ignore_eos: bool = True
    sampling: Sampling = Sampling()

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": spec.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, **self.sampling.fields()}
        if self.ignore_eos:  # exact output lengths; not min_tokens too: it adds a logits processor
            body["ignore_eos"] = True
        if self.kind == "chat":
            body["messages"] = spec.prompt
        else:
            body["prompt"] = spec.prompt
        return body

    def encode(self, spec: RequestSpec) -> bytes:
        """The request body as sent; encode ahead of a run to keep JSON encoding out of the timing."""
        return json.dumps(self.body(spec), separators=(",", ":")).encode()


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def new_client(ep: Endpoint) -> httpx.AsyncClient:
    """A client with a pool of one connection, for one worker. All share one SSL context: building
    one per client (httpx's default) costs ~30 ms of CPU, which at C = 64 blocks the event loop
    for two seconds while other requests are being timed."""
    headers = bearer(ep.api_key)
    return httpx.AsyncClient(base_url=ep.base_url, headers=headers, verify=_ssl_context(),
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                             timeout=httpx.Timeout(connect=10.0, read=ep.stall_timeout_s, write=10.0, pool=None))


def _fail(res: RequestResult, kind: str, error: str) -> RequestResult:
    res.ok, res.error_kind, res.error = False, kind, error[:500]
    return res


def _is_token_event(event: dict[str, Any], chat: bool) -> bool:
    """Whether a stream event carries generated tokens, by vLLM's rule: every event with a choice
    does (even with empty text: a token may decode to no text yet), except the chat stream's
    opening ``{"role": "assistant", "content": ""}`` announcement and the final usage event
    (``choices: []``)."""
    choices = event.get("choices")
    if not choices:
        return False
    if chat:
        delta = choices[0].get("delta") or {}
        if delta.get("role") and not delta.get("content"):
            return False
    return True


class _Malformed(Exception):
    pass


def _event(data: bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise _Malformed(f"bad stream event {data[:120]!r}: {exc}") from None
    if not isinstance(event, dict):
        raise _Malformed(f"bad stream event {data[:120]!r}: not a JSON object")
    return event


_JSON = {"content-type": "application/json"}


async def _stream(client: httpx.AsyncClient, ep: Endpoint, spec: RequestSpec, res: RequestResult,
                  body: Optional[bytes]) -> None:
    chat = ep.kind == "chat"
    last: Optional[float] = None
    usage: Optional[dict[str, Any]] = None
    done = False
    end = 0.0
    buf = b""
    res.t_sent = time.perf_counter()
    async with client.stream("POST", ep.path, content=ep.encode(spec) if body is None else body,
                             headers=_JSON) as resp:
        res.status = resp.status_code
        if resp.status_code != 200:
            answer = (await resp.aread()).decode(errors="replace")
            _fail(res, "rate_limited" if resp.status_code == 429 else "http_status",
                  f"HTTP {resp.status_code}: {answer[:300]}")
            return
        # SSE by hand on raw bytes: cheaper than aiter_lines' text decoding, and one timestamp per
        # network read (the events of one read arrived together)
        async for piece in resp.aiter_bytes():
            now = time.perf_counter()
            if done:
                continue  # read the body to its end, so that the connection is kept for the next request
            buf += piece
            if b"\n" not in piece:
                continue
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, other fields
                data = line[5:].strip()
                if data == b"[DONE]":
                    done, end = True, now
                    break
                try:
                    event = _event(data)
                    if "error" in event:
                        _fail(res, "http_status", f"error event: {str(event['error'])[:300]}")
                        return
                    if event.get("usage"):
                        usage = event["usage"]
                    token = _is_token_event(event, chat)
                except _Malformed as exc:
                    _fail(res, "malformed", str(exc))
                    return
                except (AttributeError, TypeError, IndexError) as exc:
                    _fail(res, "malformed", f"bad stream event {data[:120]!r}: {exc!r}")
                    return
                if token:
                    res.chunks += 1
                    if last is None:
                        res.ttft = now - res.t_start
                    else:
                        res.itl.append(now - last)
                    last = now
    if not done:
        _fail(res, "no_done", "the stream ended without `data: [DONE]`")
        return
    res.latency = end - res.t_start
    if usage:
        res.output_tokens = int(usage.get("completion_tokens") or 0)
        res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    else:
        res.output_tokens = res.chunks
        res.prompt_tokens = spec.prompt_tokens or 0
    if ep.ignore_eos and res.output_tokens < spec.max_tokens:
        _fail(res, "incomplete", f"{res.output_tokens} of {spec.max_tokens} tokens")
        return
    res.ok = True


async def send(client: httpx.AsyncClient, ep: Endpoint, spec: RequestSpec, *, t_start: Optional[float] = None,
               warmup: bool = False, body: Optional[bytes] = None) -> RequestResult:
    """Send ``spec`` and stream the answer. ``t_start`` (open loop: when it was due) anchors TTFT
    and latency; it defaults to now. ``body``: ``ep.encode(spec)``, if encoded ahead."""
    res = RequestResult(index=spec.index, t_start=time.perf_counter() if t_start is None else t_start,
                        warmup=warmup, prompt_tokens=spec.prompt_tokens or 0)
    try:
        async with asyncio.timeout(ep.request_timeout_s):
            await _stream(client, ep, spec, res, body)
    except TimeoutError:
        _fail(res, "timeout", f"no complete answer within {ep.request_timeout_s:.0f} s")
    except httpx.ReadTimeout:
        _fail(res, "stalled", f"no data for {ep.stall_timeout_s:.0f} s")
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        _fail(res, "connect", f"{type(exc).__name__}: {exc}")
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        _fail(res, "stream_broken", f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        _fail(res, "other", f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a request function never raises: anything else is a record too
        _fail(res, "other", f"{type(exc).__name__}: {exc}")
    return res
