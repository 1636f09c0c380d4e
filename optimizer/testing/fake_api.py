"""The fake vLLM server's request handling (:mod:`optimizer.testing.fake_server`): raw HTTP/1.1
with keep-alive, the routes, the completions (whole or streamed as chunked SSE, paced on an
absolute schedule) and the injected faults. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import socket
import time
from dataclasses import asdict, fields
from typing import Any, Optional

from optimizer.testing.fake_state import VERSION, FakeConfig, FakeStats, metrics_text, prompt_tokens, words

__all__ = ["FakeApp", "Request", "error_body"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
            500: "Internal Server Error"}


class Request:
    """One HTTP request as read off the connection (the body whole; ``reader`` for what follows)."""

    __slots__ = ("method", "path", "headers", "body", "reader")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 reader: asyncio.StreamReader) -> None:
        self.method, self.path, self.headers, self.body, self.reader = method, path, headers, body, reader


def error_body(status: int, message: str, kind: str) -> bytes:
    """vLLM's error JSON."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


class FakeApp:
    """The request handling, independent of how the loop is run."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = FakeStats()
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

    async def _read_request(self, reader: asyncio.StreamReader) -> Optional[Request]:
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
        return Request(method, target.split("?", 1)[0], headers, body, reader)

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
    async def _dispatch(self, req: Request, writer: asyncio.StreamWriter) -> bool:
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
            return await self._send(writer, 200, metrics_text(self.config, self.stats).encode(),
                                    "text/plain; version=0.0.4")
        if m == "POST" and p == "/reset_prefix_cache":  # vLLM's, with VLLM_SERVER_DEV_MODE=1
            return await self._send(writer, 200, b"")
        if m == "GET" and p == "/fake/stats":
            return await self._send(writer, 200, json.dumps(self.stats.snapshot()).encode())
        if m == "POST" and p == "/fake/reset":
            running = self.stats.running
            self.stats = FakeStats(running=running)
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
                return await self._send(writer, 400, error_body(400, str(exc), "BadRequestError"))
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

    async def _generate(self, req: Request, writer: asyncio.StreamWriter, chat: bool) -> bool:
        t_recv = time.perf_counter()
        c = self.config
        st = self.stats
        st.requests += 1
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            return await self._send(writer, 400, error_body(400, f"invalid JSON body: {exc}", "BadRequestError"))
        if body.get("model") != c.model:
            return await self._send(writer, 404, error_body(
                404, f"The model `{body.get('model')}` does not exist. Valid aliases: {c.model}.", "NotFoundError"))
        prompt = body.get("messages") if chat else body.get("prompt")
        if prompt is None:
            field_name = "messages" if chat else "prompt"
            return await self._send(writer, 400, error_body(400, f"'{field_name}' is required", "BadRequestError"))
        n_out = body.get("max_completion_tokens") if chat else None
        n_out = int(n_out or body.get("max_tokens") or 16)
        fault = self._choose_fault(req.body)
        if fault:
            st.faults[fault] = st.faults.get(fault, 0) + 1
        if fault == "http500":
            return await self._send(writer, 500, error_body(500, "injected fault: internal error",
                                                             "InternalServerError"))
        if fault == "http429":
            return await self._send(writer, 429, error_body(429, "injected fault: too many requests",
                                                             "RateLimitError"))
        n_prompt = prompt_tokens(prompt)
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
        text = "".join(words(n_out, self._ids))
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
        texts = words(n_out, self._ids)
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
            writer.write(chunk(token_event(texts[k], k == n_out - 1)))
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
