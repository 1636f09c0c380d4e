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

Command line, from the folder holding ``optimizer/`` (prints ``READY <port>`` on stdout once
listening; ``--port 0`` picks a free one)::

    python -m optimizer.testing.fake_server --port 8000 [--host 127.0.0.1] [--model fake]
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

Fixtures (defined in tests/conftest.py): ``fake_server`` (a :class:`FakeServer` in a thread,
fresh per test, stopped afterwards) and ``fake_server_factory`` (``make(**config_fields)``, any
number per test, all stopped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from optimizer.testing.fake_api import FakeApp
from optimizer.testing.fake_state import FAULT_KINDS, FakeConfig, FakeStats

__all__ = ["FAULT_KINDS", "FakeConfig", "FakeServer", "SpawnedServer", "spawn_fake_server"]

_REPO = Path(__file__).resolve().parents[2]  # the folder holding the optimizer package


async def _serve(app: FakeApp, host: str, port: int, started: "Optional[threading.Event]" = None,
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
        self.app = FakeApp(self.config)
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
        self.app.stats = FakeStats(running=self.app.stats.running)

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
    """Run this module as a subprocess (optionally pinned to CPU ``cpu``); kill it on exit. ``python``
    may be another virtualenv's (vLLM's): the fake needs only the standard library and this package's
    folder on its path."""
    argv = [python, "-m", "optimizer.testing.fake_server", "--host", host, "--port", str(port)]
    for k, v in config.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=pre,
                            env=env)
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
    app = FakeApp(cfg)
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
