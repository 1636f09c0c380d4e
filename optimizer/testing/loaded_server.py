"""A fake OpenAI-compatible streaming server whose latency grows with load in a known way.

For the capacity search's tests and accuracy benchmark: the highest concurrency at which a P99
limit holds can be computed (:meth:`LoadModel.true_capacity`) and compared with what the search
finds. Every open stream slows every stream down, as a batch does on a real server::

    slow(a)  = 1 + a / k                             a = streams open now (this one included)
    ITL      = base_ms x slow(a)                     every token after the first
    TTFT     = (prefill_ms + base_ms) x slow(a)      the first token
    E2E      = (prefill_ms + n_out x base_ms) x slow(a)   n_out = max_tokens (all of them, as ignore_eos)

In a closed loop of C users, a = C (minus the instant between one request's end and the next's
start), so the P99 of each metric at C is the formula at a = C, plus the client's own overhead;
the capacity for a limit L is the largest C with X x (1 + C/k) <= L (X: the metric's formula at
slow = 1).
Tokens follow an absolute schedule (each due one step after the previous one was due), so a late
wake-up of the event loop delays one token, not all the following ones.

Endpoints: ``POST /v1/completions`` and ``/v1/chat/completions`` (streamed SSE shaped like vLLM's,
usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``; not streamed: one JSON
body), ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (``vllm:num_requests_running``,
``vllm:kv_cache_usage_perc`` = open streams / ``kv_slots``, token and request counters,
``vllm:num_preemptions_total`` = 0), ``POST /reset_prefix_cache``.

Run it::

    python -m optimizer.testing.loaded_server --port 0 --base-ms 4 --k 4 --prefill-ms 10   # prints READY <port>

    with LoadedServer(LoadModel(base_ms=4, k=4)) as srv:   # in a thread of this process
        srv.url
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

__all__ = ["LoadModel", "LoadedServer", "spawn_loaded_server"]


@dataclass(frozen=True)
class LoadModel:
    """The latency law (see the module docstring)."""

    base_ms: float = 4.0
    k: float = 4.0
    prefill_ms: float = 10.0
    model: str = "fake"
    kv_slots: int = 256

    def slow(self, active: float) -> float:
        return 1.0 + active / self.k

    def step_ms(self, active: float) -> float:
        return self.base_ms * self.slow(active)

    def _unloaded_ms(self, metric: str, n_out: int) -> float:
        return {"itl": self.base_ms, "ttft": self.prefill_ms + self.base_ms,
                "e2e": self.prefill_ms + n_out * self.base_ms}[metric]

    def latency_ms(self, metric: str, active: float, n_out: int) -> float:
        """The server-side latency of ``metric`` (e2e, ttft, itl) with ``active`` open streams."""
        return self._unloaded_ms(metric, n_out) * self.slow(active)

    def true_capacity(self, metric: str, limit_ms: float, n_out: int) -> int:
        """The highest closed-loop concurrency whose ``metric`` stays <= ``limit_ms`` (0: none)."""
        c = math.floor(self.k * (limit_ms / self._unloaded_ms(metric, n_out) - 1.0) + 1e-9)
        return max(0, c)


class _App:
    def __init__(self, law: LoadModel) -> None:
        self.law = law
        self.active = 0
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "request_success": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                n = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(n) if n else b""
                await self.route(method, target.split("?", 1)[0], body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
                     .encode() + body)
        await writer.drain()

    async def route(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return await self.generate(json.loads(body or b"{}"), path.endswith("chat/completions"), writer)
        if method == "GET" and path == "/health":
            return await self.send(writer, 200, b"")
        if method == "POST" and path == "/reset_prefix_cache":
            return await self.send(writer, 200, b"")
        if method == "GET" and path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.law.model, "object": "model", "owned_by": "vllm"}]}
            return await self.send(writer, 200, json.dumps(data).encode())
        if method == "GET" and path == "/metrics":
            return await self.send(writer, 200, self.metrics().encode(), "text/plain; version=0.0.4")
        return await self.send(writer, 404, b'{"detail":"Not Found"}')

    def metrics(self) -> str:
        lab = f'{{model_name="{self.law.model}"}}'
        out = []
        for name, v in self.counters.items():
            out += [f"# TYPE vllm:{name} counter", f"vllm:{name}_total{lab} {float(v)}"]
        out += ["# TYPE vllm:num_preemptions counter", f"vllm:num_preemptions_total{lab} 0.0"]
        gauges: tuple[tuple[str, float], ...] = (("num_requests_running", self.active), ("num_requests_waiting", 0),
                                                 ("kv_cache_usage_perc", min(1.0, self.active / self.law.kv_slots)))
        for name, g in gauges:
            out += [f"# TYPE vllm:{name} gauge", f"vllm:{name}{lab} {float(g)}"]
        return "\n".join(out) + "\n"

    async def generate(self, req: dict[str, Any], chat: bool, writer: asyncio.StreamWriter) -> None:
        t0 = time.perf_counter()
        if req.get("model") != self.law.model:
            return await self.send(writer, 404, json.dumps({"error": {"message": f"model {req.get('model')!r} "
                                                                                 "does not exist"}}).encode())
        n_out = int((req.get("max_completion_tokens") if chat else None) or req.get("max_tokens") or 16)
        prompt = req.get("messages") if chat else req.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else \
            len(json.dumps(prompt).split())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.active += 1
        try:
            due = t0 + self.law.prefill_ms * self.law.slow(self.active) / 1000.0
            if not req.get("stream"):
                for _ in range(n_out):
                    due += self.law.step_ms(self.active) / 1000.0
                    await _sleep_until(due)
                self._done(n_prompt, n_out)
                text = " tok" * n_out
                choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                                          else {"index": 0, "text": text})
                choice["finish_reason"] = "length"
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                return await self.send(writer, 200, json.dumps({"id": "x", "object": obj, "model": self.law.model,
                                                                 "choices": [choice], "usage": usage}).encode())
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")

            def event(data: str) -> bytes:
                b = f"data: {data}\n\n".encode()
                return b"%x\r\n%s\r\n" % (len(b), b)

            if chat:
                writer.write(event(json.dumps({"id": "x", "object": obj, "model": self.law.model, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})))
            for i in range(n_out):
                due += self.law.step_ms(self.active) / 1000.0
                await _sleep_until(due)
                fin = "length" if i == n_out - 1 else None
                choice = {"index": 0, "delta": {"content": " tok"}} if chat else {"index": 0, "text": " tok"}
                choice["finish_reason"] = fin
                writer.write(event(json.dumps({"id": "x", "object": obj, "model": self.law.model,
                                               "choices": [choice]})))
                await writer.drain()
            self._done(n_prompt, n_out)
            if (req.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                writer.write(event(json.dumps({"id": "x", "object": obj, "model": self.law.model, "choices": [],
                                               "usage": usage})))
            writer.write(event("[DONE]") + b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.active -= 1

    def _done(self, n_prompt: int, n_out: int) -> None:
        self.counters["prompt_tokens"] += n_prompt
        self.counters["generation_tokens"] += n_out
        self.counters["request_success"] += 1


async def _sleep_until(t: float) -> None:
    wait = t - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)


async def _serve(law: LoadModel, host: str, port: int, ready: Any) -> None:
    app = _App(law)
    server = await asyncio.start_server(app.handle, host, port, backlog=1024)
    ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


class LoadedServer:
    """The server in a daemon thread of this process (``with LoadedServer(law) as srv: srv.url``).
    It shares this process's interpreter: for timing-sensitive work prefer :func:`spawn_loaded_server`."""

    def __init__(self, law: LoadModel = LoadModel(), host: str = "127.0.0.1") -> None:
        self.law, self.host, self.port = law, host, 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()

        def ready(port: int) -> None:
            self.port = port
            self._ready.set()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(_serve(self.law, self.host, 0, ready))

    def __enter__(self) -> "LoadedServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the loaded fake server did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            for task in asyncio.all_tasks(loop):
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(5)


@contextlib.contextmanager
def spawn_loaded_server(law: LoadModel = LoadModel(), cpu: Optional[int] = None) -> Iterator[str]:
    """The server as a subprocess (optionally pinned to core ``cpu``); yields its URL, kills it after."""
    argv = [sys.executable, "-m", "optimizer.testing.loaded_server", "--port", "0", "--base-ms", str(law.base_ms),
            "--k", str(law.k), "--prefill-ms", str(law.prefill_ms), "--model", law.model]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: _child_setup(cpu))
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the loaded fake server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        p.kill()
        p.wait(10)


def _child_setup(cpu: Optional[int]) -> None:
    """In the child before exec: die with the parent (Linux), pin to ``cpu``."""
    import ctypes
    import os
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m optimizer.testing.loaded_server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--base-ms", type=float, default=4.0)
    ap.add_argument("--k", type=float, default=4.0)
    ap.add_argument("--prefill-ms", type=float, default=10.0)
    ap.add_argument("--model", default="fake")
    a = ap.parse_args(argv)
    law = LoadModel(a.base_ms, a.k, a.prefill_ms, a.model)
    try:
        import uvloop  # the same loop as a real server's; optional

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    run(_serve(law, a.host, a.port, lambda port: print(f"READY {port}", flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
