"""A small fault-injecting OpenAI-compatible streaming server, shaped like vLLM 0.32.

For tests and benchmarks of anything that talks to a vLLM server: the load generator, fault
tolerance, distributed runs. Pure asyncio (raw HTTP/1.1 with keep-alive and chunked SSE; uvloop
when installed), no other dependency, so it runs in the optimizer's virtualenv and in vLLM's.

Endpoints (the shapes were copied from a real ``vllm.entrypoints.openai.api_server`` 0.32.0):

- ``POST /v1/completions`` and ``POST /v1/chat/completions``: streamed (``"stream": true``) as
  ``data: {...}`` SSE events, one per token, the usage chunk last when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``; chat streams open with the
  ``{"role": "assistant", "content": ""}`` delta, as vLLM's do. Not streamed: one JSON body.
  Every request produces exactly ``max_tokens`` (chat: ``max_completion_tokens`` or
  ``max_tokens``) tokens, as with ``ignore_eos``. An unknown ``model`` gets vLLM's 404.
- ``GET /health`` (200, empty), ``GET /v1/models``, ``GET /version``, ``POST /reset_prefix_cache``
  (200, as vLLM's with ``VLLM_SERVER_DEV_MODE=1``; the fake has no cache).
- ``GET /metrics``: Prometheus text with ``vllm:generation_tokens_total``,
  ``vllm:prompt_tokens_total``, ``vllm:request_success_total``, ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` and ``vllm:cache_config_info``.
  Prompt tokens: a token-id prompt counts its ids, a text prompt its whitespace-separated words
  (chat: the words of all message contents). Usage reports the same numbers, so client and
  server token counts must agree exactly.
- Control (not vLLM): ``GET /fake/stats`` (JSON: requests, faults injected by kind, tokens,
  server-side TTFT/E2E quantiles in ms and the pacing lag), ``POST /fake/config`` (JSON object of
  :class:`FakeConfig` fields to change), ``POST /fake/reset`` (zero the stats).

Timing: the first token is written ``delay_ms`` after the request was read, then one token every
``1 / tokens_per_s`` seconds on an absolute schedule (no drift); ``tokens_per_s = 0`` writes them
as fast as the loop allows, yielding to other streams after each token.

Faults, chosen per request: a request is faulted with probability ``fault_rate``, decided by a
hash of (seed, request body), so the same request set meets the same faults in every run and
in any order; the kind is drawn from ``fault`` (a comma-separated list) by the same hash:

=============  ==========================================================================
``http500``    500 with vLLM's error JSON, before any stream
``http429``    429 with vLLM's error JSON
``drop``       half the tokens, then the connection is reset (no end chunk)
``stall``      half the tokens, then nothing more (the connection stays open ``stall_s``)
``malformed``  half the tokens, then an event that is not JSON, then the rest as normal
``no_done``    all tokens and the usage chunk, then the body ends without ``data: [DONE]``
``slow_first`` the first token comes ``slow_first_ms`` late; otherwise a normal answer
=============  ==========================================================================

Command line (prints ``READY <port>`` on stdout once listening; ``--port 0`` picks a free one)::

    python optimizer/testing/fake_server.py --port 8000 [--host 127.0.0.1] [--model fake]
        [--delay-ms 0] [--tokens-per-s 0] [--fault drop,stall] [--fault-rate 0.1] [--seed 0]
        [--slow-first-ms 2000] [--stall-s 3600] [--no-uvloop]

In-process (pytest)::

    from optimizer.testing.fake_server import FakeServer, FakeConfig

    with FakeServer(FakeConfig(tokens_per_s=200, fault="drop", fault_rate=0.2)) as srv:
        srv.url             # http://127.0.0.1:<free port>
        srv.config.fault_rate = 0.0   # change it live (or POST /fake/config)
        srv.stats()         # the /fake/stats dict
        srv.stop()          # aborts every open connection: "the server died"

    with spawn_fake_server(tokens_per_s=200, cpu=0) as proc:   # a subprocess, pinned to core 0
        proc.url; proc.kill()

Fixtures (imported by tests/conftest.py): ``fake_server`` (a :class:`FakeServer` in a thread,
fresh per test, stopped afterwards) and ``fake_server_factory`` (``make(**config_fields)``, any
number per test, all stopped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["FAULT_KINDS", "FakeConfig", "FakeServer", "SpawnedServer", "spawn_fake_server"]

FAULT_KINDS = ("http500", "http429", "drop", "stall", "malformed", "no_done", "slow_first")
VERSION = "0.32.0"
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
            500: "Internal Server Error"}


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
class _Stats:
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


class _Request:
    __slots__ = ("method", "path", "headers", "body", "reader")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 reader: asyncio.StreamReader) -> None:
        self.method, self.path, self.headers, self.body, self.reader = method, path, headers, body, reader


def _words(n: int, offset: int) -> list[str]:
    vocab = ("lo", " ba", " ki", "zo", " tel", " mu", "ra", " du", " wa", " ko", "no", " ji")
    return [vocab[(offset + i) % len(vocab)] for i in range(n)]


def _prompt_tokens(prompt: Any) -> int:
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
        return sum(_prompt_tokens(p) for p in prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    return 0


def _error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


class _App:
    """The request handling, independent of how the loop is run."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = _Stats()
        self.created = int(time.time())
        self.writers: set[asyncio.StreamWriter] = set()
        self._ids = 0

    # ---- HTTP plumbing -------------------------------------------------------------------------
    async def handle_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                req = await self._read_request(reader)
                if req is None:
                    return
                keep = await self._dispatch(req, writer)
                if not keep or req.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Optional[_Request]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(n) if n else b""
        return _Request(method, target.split("?", 1)[0], headers, body, reader)

    @staticmethod
    def _head(status: int, ctype: str, length: Optional[int]) -> bytes:
        h = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nserver: fake-vllm\r\ncontent-type: {ctype}\r\n"
        h += f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
        return (h + "\r\n").encode()

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    ctype: str = "application/json") -> bool:
        writer.write(self._head(status, ctype, len(body)) + body)
        await writer.drain()
        return True

    # ---- routes -------------------------------------------------------------------------------
    async def _dispatch(self, req: _Request, writer: asyncio.StreamWriter) -> bool:
        p, m = req.path, req.method
        if m == "POST" and p in ("/v1/completions", "/v1/chat/completions"):
            return await self._generate(req, writer, chat=p.endswith("chat/completions"))
        if m == "GET" and p == "/health":
            return await self._send(writer, 200, b"")
        if m == "GET" and p == "/v1/models":
            c = self.config
            data = {"object": "list", "data": [{"id": c.model, "object": "model", "created": self.created,
                                                "owned_by": "vllm", "root": c.model, "parent": None,
                                                "max_model_len": c.max_model_len, "permission": []}]}
            return await self._send(writer, 200, json.dumps(data).encode())
        if m == "GET" and p == "/version":
            return await self._send(writer, 200, json.dumps({"version": VERSION}).encode())
        if m == "GET" and p == "/metrics":
            return await self._send(writer, 200, self.metrics_text().encode(), "text/plain; version=0.0.4")
        if m == "POST" and p == "/reset_prefix_cache":  # vLLM's, with VLLM_SERVER_DEV_MODE=1
            return await self._send(writer, 200, b"")
        if m == "GET" and p == "/fake/stats":
            return await self._send(writer, 200, json.dumps(self.stats.snapshot()).encode())
        if m == "POST" and p == "/fake/reset":
            running = self.stats.running
            self.stats = _Stats(running=running)
            return await self._send(writer, 200, b"{}")
        if m == "POST" and p == "/fake/config":
            try:
                changes = json.loads(req.body or b"{}")
                names = {f.name for f in fields(FakeConfig)}
                unknown = set(changes) - names
                if unknown:
                    raise ValueError(f"unknown fields {sorted(unknown)}")
                for k, v in changes.items():
                    setattr(self.config, k, v)
                self.config.kinds()
            except (ValueError, TypeError) as exc:
                return await self._send(writer, 400, _error_body(400, str(exc), "BadRequestError"))
            return await self._send(writer, 200, json.dumps(asdict(self.config)).encode())
        return await self._send(writer, 404, b'{"detail":"Not Found"}')

    def _choose_fault(self, body: bytes) -> str:
        c = self.config
        kinds = c.kinds()
        if not kinds or c.fault_rate <= 0:
            return ""
        digest = hashlib.blake2b(body, digest_size=8, key=str(c.seed).encode()[:64]).digest()
        rng = random.Random(int.from_bytes(digest, "big"))
        if rng.random() >= c.fault_rate:
            return ""
        return kinds[int(rng.random() * len(kinds)) % len(kinds)]

    async def _generate(self, req: _Request, writer: asyncio.StreamWriter, chat: bool) -> bool:
        t_recv = time.perf_counter()
        c = self.config
        st = self.stats
        st.requests += 1
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            return await self._send(writer, 400, _error_body(400, f"invalid JSON body: {exc}", "BadRequestError"))
        if body.get("model") != c.model:
            return await self._send(writer, 404, _error_body(
                404, f"The model `{body.get('model')}` does not exist. Valid aliases: {c.model}.", "NotFoundError"))
        prompt = body.get("messages") if chat else body.get("prompt")
        if prompt is None:
            field_name = "messages" if chat else "prompt"
            return await self._send(writer, 400, _error_body(400, f"'{field_name}' is required", "BadRequestError"))
        n_out = body.get("max_completion_tokens") if chat else None
        n_out = int(n_out or body.get("max_tokens") or 16)
        fault = self._choose_fault(req.body)
        if fault:
            st.faults[fault] = st.faults.get(fault, 0) + 1
        if fault == "http500":
            return await self._send(writer, 500, _error_body(500, "injected fault: internal error",
                                                             "InternalServerError"))
        if fault == "http429":
            return await self._send(writer, 429, _error_body(429, "injected fault: too many requests",
                                                             "RateLimitError"))
        n_prompt = _prompt_tokens(prompt)
        st.prompt_tokens += n_prompt
        self._ids += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._ids:016x}"
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        blocks = -(-(n_prompt + n_out) // c.block_size)
        st.running += 1
        st.kv_blocks += blocks
        try:
            if not stream:
                return await self._whole(writer, rid, chat, n_prompt, n_out, t_recv, fault)
            return await self._stream(req.reader, writer, rid, chat, n_prompt, n_out, include_usage, t_recv, fault)
        finally:
            st.running -= 1
            st.kv_blocks -= blocks

    async def _pace(self, t_due: float) -> None:
        wait = t_due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)

    def _schedule(self, t_recv: float, fault: str) -> tuple[float, float]:
        c = self.config
        first = t_recv + c.delay_ms / 1000.0 + (c.slow_first_ms / 1000.0 if fault == "slow_first" else 0.0)
        step = 1.0 / c.tokens_per_s if c.tokens_per_s > 0 else 0.0
        return first, step

    async def _whole(self, writer: asyncio.StreamWriter, rid: str, chat: bool, n_prompt: int, n_out: int,
                     t_recv: float, fault: str) -> bool:
        first, step = self._schedule(t_recv, fault)
        await self._pace(first + step * (n_out - 1))
        text = "".join(_words(n_out, self._ids))
        self.stats.generation_tokens += n_out
        usage = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out, "completion_tokens": n_out}
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = {"id": rid, "object": "chat.completion", "created": self.created, "model": self.config.model,
                   "choices": [choice], "usage": usage}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = {"id": rid, "object": "text_completion", "created": self.created, "model": self.config.model,
                   "choices": [choice], "usage": usage}
        self._finish(t_recv, first, first, first + step * (n_out - 1))
        return await self._send(writer, 200, json.dumps(obj).encode())

    def _finish(self, t_recv: float, t_first: float, t_first_due: float, t_last_due: float) -> None:
        now = time.perf_counter()
        st = self.stats
        st.completed += 1
        st.ttft_ms.append((t_first - t_recv) * 1000.0)
        st.e2e_ms.append((now - t_recv) * 1000.0)
        st.lag_ms.append(max(0.0, now - t_last_due) * 1000.0)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rid: str, chat: bool, n_prompt: int, n_out: int,
                      include_usage: bool, t_recv: float, fault: str) -> bool:
        c = self.config
        model = json.dumps(c.model)
        if chat:
            pre = f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{self.created},"model":{model},'
            role = pre + ('"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                          '"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n')
        else:
            pre = f'data: {{"id":"{rid}","object":"text_completion","created":{self.created},"model":{model},'
            role = ""

        def token_event(text: str, last: bool) -> str:
            t = json.dumps(text)
            if chat:
                fin = '"finish_reason":"length","stop_reason":null' if last else '"finish_reason":null'
                return pre + f'"choices":[{{"index":0,"delta":{{"content":{t}}},"logprobs":null,{fin},' \
                             f'"token_ids":null}}]}}\n\n'
            fin = '"length"' if last else "null"
            return pre + f'"choices":[{{"index":0,"text":{t},"logprobs":null,"finish_reason":{fin},' \
                         f'"stop_reason":null,"prompt_token_ids":null,"token_ids":null}}]}}\n\n'

        def chunk(s: str) -> bytes:
            b = s.encode()
            return b"%x\r\n%s\r\n" % (len(b), b)

        first, step = self._schedule(t_recv, fault)
        cut = n_out // 2 if fault in ("drop", "stall", "malformed") else -1
        words = _words(n_out, self._ids)
        writer.write(self._head(200, "text/event-stream; charset=utf-8", None))
        t_first = first
        sent = 0
        for k in range(n_out):
            due = first + k * step
            if step or k == 0:
                await self._pace(due)
            if k == cut:
                if fault == "drop":
                    await writer.drain()
                    writer.transport.abort()
                    return False
                if fault == "stall":  # nothing more until the client gives up (EOF) or stall_s passes
                    await writer.drain()
                    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                        await asyncio.wait_for(reader.read(1), c.stall_s)
                    writer.transport.abort()
                    return False
                if fault == "malformed":
                    writer.write(chunk('data: {"id":"' + rid + '","choices":[{"index":0,"text":' + "\n\n"))
            if k == 0:
                t_first = time.perf_counter()
                if role:
                    writer.write(chunk(role))
            writer.write(chunk(token_event(words[k], k == n_out - 1)))
            sent += 1
            self.stats.generation_tokens += 1
            if writer.transport.is_closing():
                return False
            await writer.drain()
            if not step:
                await asyncio.sleep(0)  # let the other streams interleave, as engine steps do
        if include_usage:
            usage = f'"choices":[],"usage":{{"prompt_tokens":{n_prompt},"total_tokens":{n_prompt + sent},' \
                    f'"completion_tokens":{sent}}},"system_fingerprint":"vllm-{VERSION}-fake"}}\n\n'
            writer.write(chunk(pre + usage))
        if fault != "no_done":
            writer.write(chunk("data: [DONE]\n\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self._finish(t_recv, t_first, first, first + (n_out - 1) * step)
        return True

    # ---- metrics -----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        c, st = self.config, self.stats
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


async def _serve(app: _App, host: str, port: int, started: "Optional[threading.Event]" = None,
                 holder: Optional[dict[str, Any]] = None) -> None:
    server = await asyncio.start_server(app.handle_conn, host, port, backlog=1024, limit=1 << 20)
    actual = server.sockets[0].getsockname()[1]
    if holder is not None:
        holder["port"] = actual
        holder["server"] = server
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = asyncio.Event()
    if started is not None:
        started.set()
    else:
        print(f"READY {actual}", flush=True)
    async with server:
        if holder is not None:
            await holder["stop"].wait()
            server.close()
            for w in list(app.writers):
                with contextlib.suppress(Exception):
                    w.transport.abort()
            await asyncio.sleep(0)
        else:
            await server.serve_forever()


class FakeServer:
    """The server in a background thread of this process, on a free port unless given one."""

    def __init__(self, config: Optional[FakeConfig] = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or FakeConfig()
        self.config.kinds()
        self.host = host
        self._port = port
        self.app = _App(self.config)
        self._holder: dict[str, Any] = {}
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    @property
    def port(self) -> int:
        return int(self._holder["port"])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "FakeServer":
        started = threading.Event()

        def run() -> None:
            try:
                asyncio.run(_serve(self.app, self.host, self._port, started, self._holder))
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                started.set()

        self._thread = threading.Thread(target=run, name="fake-vllm", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s) or self._error is not None:
            raise RuntimeError(f"the fake server did not start: {self._error!r}")
        return self

    def stats(self) -> dict[str, Any]:
        return self.app.stats.snapshot()

    def reset(self) -> None:
        self.app.stats = _Stats(running=self.app.stats.running)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the listener and abort every open connection (a crash, as the client sees it)."""
        if self._thread is None or not self._thread.is_alive():
            return
        loop, ev = self._holder.get("loop"), self._holder.get("stop")
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SpawnedServer:
    """A fake server in its own process (see :func:`spawn_fake_server`)."""

    def __init__(self, proc: "subprocess.Popen[str]", host: str, port: int) -> None:
        self.proc, self.host, self.port = proc, host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def spawn_fake_server(*, host: str = "127.0.0.1", port: int = 0, cpu: Optional[int] = None,
                      python: str = sys.executable, start_timeout_s: float = 20.0,
                      **config: Any) -> Iterator[SpawnedServer]:
    """Run this module as a subprocess (optionally pinned to CPU ``cpu``); kill it on exit."""
    argv = [python, str(Path(__file__).resolve()), "--host", host, "--port", str(port)]
    for k, v in config.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pre)
    spawned: Optional[SpawnedServer] = None
    try:
        deadline = time.monotonic() + start_timeout_s
        line = ""
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and proc.poll() is None:
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                if line.startswith("READY"):
                    break
        sel.close()
        if not line.startswith("READY"):
            raise RuntimeError(f"the fake server did not start within {start_timeout_s} s (exit {proc.poll()})")
        spawned = SpawnedServer(proc, host, int(line.split()[1]))
        yield spawned
    finally:
        if spawned is not None:
            spawned.kill()
        else:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: a free port (printed as READY <port>)")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="request read -> first token")
    ap.add_argument("--tokens-per-s", type=float, default=0.0, help="per stream; 0: as fast as possible")
    ap.add_argument("--fault", default="", help=f"comma-separated kinds: {', '.join(FAULT_KINDS)}")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted (0..1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow-first-ms", type=float, default=2000.0)
    ap.add_argument("--stall-s", type=float, default=3600.0)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--no-uvloop", action="store_true")
    a = ap.parse_args(argv)
    cfg = FakeConfig(model=a.model, delay_ms=a.delay_ms, tokens_per_s=a.tokens_per_s, fault=a.fault,
                     fault_rate=a.fault_rate, seed=a.seed, slow_first_ms=a.slow_first_ms, stall_s=a.stall_s,
                     max_model_len=a.max_model_len)
    try:
        cfg.kinds()
    except ValueError as exc:
        ap.error(str(exc))
    app = _App(cfg)
    runner: Any = asyncio.run
    if not a.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    try:
        runner(_serve(app, a.host, a.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
