"""One streaming request against an OpenAI-compatible server. Never raises.

Each concurrent worker owns one ``httpx.AsyncClient`` with a pool of one connection: a single
client whose pool is as large as the concurrency spends its time in pool bookkeeping and adds
seconds to the P99 it is meant to measure (shared/reference/client_capacity.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from optimizer.loadgen.records import RequestResult, RequestSpec

__all__ = ["Endpoint", "new_client", "send"]


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    kind: str = "completions"  # completions | chat
    api_key: Optional[str] = None
    request_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0
    ignore_eos: bool = True

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"

    def body(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": spec.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, "temperature": 0.0}
        if self.ignore_eos:
            body["ignore_eos"] = True
            body["min_tokens"] = spec.max_tokens
        if self.kind == "chat":
            body["messages"] = spec.prompt
        else:
            body["prompt"] = spec.prompt
        return body


def new_client(ep: Endpoint) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    return httpx.AsyncClient(base_url=ep.base_url, headers=headers,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                             timeout=httpx.Timeout(connect=10.0, read=ep.stall_timeout_s, write=10.0, pool=None))


def _fail(res: RequestResult, kind: str, error: str) -> RequestResult:
    res.ok, res.error_kind, res.error = False, kind, error[:500]
    return res


def _text_of(event: dict[str, Any], chat: bool) -> Optional[str]:
    choices = event.get("choices")
    if not choices:
        return None
    c = choices[0]
    if chat:
        return (c.get("delta") or {}).get("content")
    return c.get("text")


async def _stream(client: httpx.AsyncClient, ep: Endpoint, spec: RequestSpec, res: RequestResult) -> None:
    chat = ep.kind == "chat"
    last: Optional[float] = None
    usage: Optional[dict[str, Any]] = None
    done = False
    res.t_sent = time.perf_counter()
    async with client.stream("POST", ep.path, json=ep.body(spec)) as resp:
        res.status = resp.status_code
        if resp.status_code != 200:
            body = (await resp.aread()).decode(errors="replace")
            _fail(res, "http_status", f"HTTP {resp.status_code}: {body[:300]}")
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            now = time.perf_counter()
            try:
                event = json.loads(data)
                text = _text_of(event, chat)
            except (ValueError, AttributeError, TypeError, IndexError) as exc:
                _fail(res, "malformed", f"bad stream event {data[:120]!r}: {exc}")
                return
            if not isinstance(event, dict):
                _fail(res, "malformed", f"bad stream event {data[:120]!r}")
                return
            if "error" in event:
                _fail(res, "http_status", f"error event: {str(event['error'])[:300]}")
                return
            if event.get("usage"):
                usage = event["usage"]
            if text:
                res.chunks += 1
                if last is None:
                    res.ttft = now - res.t_start
                else:
                    res.itl.append(now - last)
                last = now
    end = time.perf_counter()
    if not done:
        _fail(res, "stream_broken", "the stream ended without [DONE]")
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
               warmup: bool = False) -> RequestResult:
    """Send ``spec`` and stream the answer. ``t_start`` (open loop: when it was due) anchors TTFT
    and latency; it defaults to now."""
    res = RequestResult(index=spec.index, t_start=time.perf_counter() if t_start is None else t_start,
                        warmup=warmup, prompt_tokens=spec.prompt_tokens or 0)
    try:
        async with asyncio.timeout(ep.request_timeout_s):
            await _stream(client, ep, spec, res)
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
